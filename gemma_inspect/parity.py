"""Parity: run two checkpoints (or two runtimes) on the same tokens and say where they part ways.

Both sides return the same points (runtimes/__init__.py): the scaled embedding, every decoder block's
output and the final norm, then the logits. Layer indices in the report: -1 the embedding output,
0..L-1 the decoder blocks, L the final norm. `first_divergent_layer` is the first of them whose
difference exceeds the tolerance (L when only the final norm or the logits disagree, None when
nothing does).

How each layer is judged (`tolerance.mode` in the JSON, printed with the reason it was chosen):
- "noise floor" (float32, the default): two correct float32 implementations differ by round-off, and that
  round-off grows with depth, sequence length and the activations' scale (a real 24-layer model at 520 tokens
  reaches 1e-4 of max|A| in late blocks), so no fixed constant separates it from a defect on every model.
  It is measured instead: the reference runtime runs A's weights once more in float64 (the oracle O), and
  each side's own float32 error against it, max|A - O| and max|B - O|, gives the noise floor of that layer:
  the smaller of the two (a defective side's error is not noise; the correct side's is). A layer passes when
  max|A - B| <= NOISE_FACTOR x noise floor + NOISE_FLOOR_RELATIVE x max|O|; the logits likewise.
- "fixed" (float32 with --atol): max|A - B| <= atol x max|A| for every hidden state and for the logits.
- "bfloat16" (computed in bfloat16) is judged by what bfloat16 can promise: top-1 agreement and KL
  divergence of the next-token distributions, with a loose per-layer bound (to say where a gross error
  starts) and a tight one on the embedding output, which any two correct implementations compute bit for
  bit (a lookup and one multiply by sqrt(d) rounded to bfloat16), so an embedding scale applied in float32
  shows there.
- "stored bfloat16" / "stored float16": computed in float32, but one side stores its weights in that lower
  precision and the other does not (e.g. a float32 model converted --dtype bfloat16): its weights differ by
  up to one rounding of that precision, so it is judged by that precision's tolerance (the embedding output
  within one rounding, the next-token distributions by top-1 and KL).
- "quantized" (a side stored quantized, e.g. a Q8_0 GGUF against its source) is judged the same way,
  whatever the compute dtype: its weights differ by design, so only the next-token distributions can say
  whether it holds.

Vocabularies of different sizes are compared over the rows both have when the larger one only adds rows at
the end - llama.cpp drops Gemma 3's 64 out-of-vocabulary embedding rows (262,208 -> 262,144), so the official
HF and GGUF files differ this way. The logits are judged over the shared rows; top-1 and top-5 still look at
every row (a side whose best token is one the other lacks disagrees); and neither side may put more than
MAX_EXCLUDED_MASS of its probability on rows the other lacks, at any position.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .checkpoint import Checkpoint
from .errors import InputError, UnsupportedError

# The measured noise floor (float32 without --atol): a layer may differ by NOISE_FACTOR times the smaller
# side's own float32 error against the float64 oracle, plus NOISE_FLOOR_RELATIVE of the layer's scale (16
# float32 steps: where both sides are exact, e.g. the embedding lookup, the noise floor is 0). Calibrated
# in the README ("How parity judges"): correct pairs stay below 3x, seeded defects start above 1,000x.
NOISE_FACTOR = 10.0
NOISE_FLOOR_RELATIVE = 2.0 ** -20
FALLBACK_ATOL = 1e-4  # the fixed rule when the float64 oracle does not fit in memory

# Significant bits of each storage precision (one rounding is at most 2^-bits relative).
PRECISION_BITS = {"float64": 53, "float32": 24, "float16": 11, "bfloat16": 8}

# Default tolerances by dtype. `atol` is relative to each tensor's scale (max |A|).
TOLERANCES: dict[str, dict[str, Any]] = {
    "float32": {"atol": 1e-4, "embedding_atol": 1e-4, "logits_atol": 1e-4,
                "min_top1_agreement": None, "max_kl_divergence": None},
    # bfloat16 has 8 significant bits: one rounding is up to 2^-9 relative, and random-weight models
    # with a few layers already differ by 1e-2..3e-2 of their scale between correct implementations.
    # Top-1 is judged outside ties: a position where A's best token leads B's pick (in A's own logits)
    # by at most `top1_tie_steps` bfloat16 steps at the logits' magnitude is a coin toss, not a defect.
    "bfloat16": {"atol": 0.1, "embedding_atol": 2.0 ** -9, "logits_atol": None,
                 "min_top1_agreement": 0.95, "max_kl_divergence": 0.01, "top1_tie_steps": 4},
    # float16 (11 significant bits), met as a storage precision (the embedding bound is set from the bits).
    "float16": {"atol": 0.1, "embedding_atol": 2.0 ** -11, "logits_atol": None,
                "min_top1_agreement": 0.95, "max_kl_divergence": 0.01, "top1_tie_steps": 4},
}

# A quantized checkpoint (GGUF Q8_0, Q4_K, ...) differs from its source in every weight by design: its
# hidden states drift by a few percent of their scale. Ties are gaps below 1% of the logits' scale.
QUANTIZED = {"atol": 0.25, "embedding_atol": 0.25, "logits_atol": None, "min_top1_agreement": 0.9,
             "max_kl_divergence": 0.02, "top1_tie_fraction": 0.01}

# Mixture of experts: a token whose top-k expert set differs between A and B is a flip; it is a near-tie when, in
# each side's own router probabilities, the experts it swapped lie within ROUTER_TIE of its k-th pick (by mode).
# A near-tie flip is reported but not a divergence by itself (the hidden states judge it); any other flip is.
ROUTER_TIE = {"noise floor": 1e-4, "fixed": 1e-4, "bfloat16": 1e-2, "float16": 1e-2, "quantized": 2e-2}
MAX_FLIP_EXAMPLES = 5

MAX_EXCLUDED_MASS = 0.01  # probability a side may put on vocabulary rows the other side does not have

DEFAULT_SEED = 20240221  # the default token sequence is the same on every run and every machine
MIN_DEFAULT_TOKENS = 32
# The default sequence follows the longest sliding window (window + 8 tokens) up to Gemma 2's 4,096-token window,
# the longest of the released models. A config's larger window is not followed: `sliding_window: 20000` would
# make eager attention hold 20,008^2 scores per head (9.6 GB on a tiny model). Such a window cannot be seen at
# work within the bound, so it does not lengthen the sequence at all; verify warns that it was not observed.
MAX_DEFAULT_TOKENS = 4096 + 8


# ----------------------------------------------------------------------------- inputs
def default_tokens(a: Checkpoint, b: Checkpoint | None = None) -> list[int]:
    """BOS, then ids drawn (deterministically) from the vocabulary past the 4 special ids, long enough
    that the last queries of every sliding-window layer see only part of the sequence."""
    import numpy as np

    specs = [s for s in (a.spec, b.spec if b is not None else None) if s is not None]
    windows = [s.sliding_window for s in specs if s.sliding_window and s.sliding_layers]
    # A window the bound does not allow cannot be seen at work anyway: the sequence stays short then.
    n = max([MIN_DEFAULT_TOKENS] + [w + 8 for w in windows if w + 8 <= MAX_DEFAULT_TOKENS])
    vocab = min(s.vocab_size for s in specs)
    rng = np.random.default_rng(DEFAULT_SEED)
    low = 4 if vocab > 8 else 0
    return [a.spec.bos_token_id] + [int(i) for i in rng.integers(low, vocab, size=n - 1)]


def parse_tokens(text: str) -> list[int]:
    """'2,651,1234' -> [2, 651, 1234] (the --tokens option)."""
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise InputError(None, f"--tokens must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise InputError(None, "--tokens is empty")
    return ids


def check_compatible(a: Checkpoint, b: Checkpoint) -> None:
    """A and B must have the same shape of computation to be compared position by position."""
    fields = ("num_layers", "hidden_size")  # vocabularies may differ: compared over their shared rows
    diffs = [f"{f} {getattr(a.spec, f)} vs {getattr(b.spec, f)}" for f in fields
             if getattr(a.spec, f) != getattr(b.spec, f)]
    if diffs:
        raise UnsupportedError(f"cannot compare {a.source} with {b.source} layer by layer: {', '.join(diffs)}")


def tokenizer_parity(a: Checkpoint, b: Checkpoint) -> dict[str, Any] | None:
    """Each side's native tokenizer on the fixed PARITY_TEXTS (gemma_inspect/tokenizer_check.py)."""
    from .tokenizer_check import tokenizer_parity as native_parity

    return native_parity(a, b)


# ----------------------------------------------------------------------------- metrics
def bf16_step(x: float, bits: int = 8) -> float:
    """The spacing of bfloat16 numbers around |x| (8 significant bits: 2^(e - 7) for |x| in [2^e, 2^(e+1)));
    with `bits`, of a float format with that many significant bits (float16: 11)."""
    return 2.0 ** (math.floor(math.log2(abs(x))) - (bits - 1)) if x else 2.0 ** -133


METRIC_CHUNK_ELEMENTS = 1 << 23  # logits compared a block of positions at a time: ~64 MB per float64 temporary


def logits_metrics(la: Any, lb: Any, tie: float | None = None) -> dict[str, float]:
    """Logits [B, T, Va] of A and [B, T, Vb] of B -> the JSON `logits` object. KL(A || B) per position,
    averaged. With `tie` (in logits), also the top-1 agreement over positions where A is not tied within `tie`.

    Differences and KL are over the V = min(Va, Vb) rows both sides have (each side's distribution
    renormalised over them); top-1 and top-5 over every row. When Va != Vb, `vocab_compared` and
    `excluded_mass_a` / `excluded_mass_b` (the most probability a side puts, at any position, on the rows the
    other lacks) are added.

    Computed a block of positions at a time, in float64 for the softmaxes and the sums, so that the memory it
    takes does not grow with the sequence: the default sequence for Gemma 2 (4,104 positions) over a
    256,000-token vocabulary is 4.2 GB of logits per side, and whole-tensor temporaries would need ten times
    that."""
    import torch

    va, vb = la.shape[-1], lb.shape[-1]
    v = min(va, vb)
    fa, fb = la.reshape(-1, va), lb.reshape(-1, vb)
    rows = fa.shape[0]
    step = max(1, METRIC_CHUNK_ELEMENTS // max(1, va, vb))
    k = min(5, v)
    maxima, excluded_a, excluded_b = [], [], []
    sum_abs = kl = top1 = overlap = outside = 0.0
    for start in range(0, rows, step):
        full_a, full_b = fa[start:start + step], fb[start:start + step]
        a, b = full_a[:, :v], full_b[:, :v]
        diff = (a - b).abs()
        maxima.append(diff.max())
        sum_abs += float(diff.double().sum())
        del diff
        pa = torch.log_softmax(a.double(), dim=-1)
        pb = torch.log_softmax(b.double(), dim=-1)
        kl += float((pa.exp() * (pa - pb)).sum())
        del pa, pb
        for full, shared, out in ((full_a, a, excluded_a), (full_b, b, excluded_b)):
            if full.shape[-1] > v:  # 1 - P(shared rows), from the log-sum-exps
                lost = -torch.expm1(torch.logsumexp(shared.double(), -1) - torch.logsumexp(full.double(), -1))
                out.append(lost.max())
        best_a, best_b = full_a.argmax(-1), full_b.argmax(-1)  # an id only one side has never agrees
        top1 += float((best_a == best_b).double().sum())
        ta, tb = full_a.topk(k, dim=-1).indices, full_b.topk(k, dim=-1).indices
        overlap += float((ta[:, :, None] == tb[:, None, :]).any(-1).double().sum() / k)
        if tie is not None:
            # How much A prefers its own top-1 over B's pick; agreement counts every gap within the tie.
            # A pick of B's that A does not have is a disagreement.
            has = best_b < va
            picked = full_a.gather(-1, torch.where(has, best_b, 0)[:, None]).squeeze(-1)
            gap = full_a.max(-1).values - picked
            outside += float(((gap <= tie) & has).double().sum())
    kl /= rows
    out = {"max_abs_diff": float(torch.stack(maxima).max()),  # NaN in any block stays NaN
           "mean_abs_diff": sum_abs / (rows * v),
           "kl_divergence": kl if math.isnan(kl) else max(0.0, kl),  # (rounding can make it -1e-17)
           "top1_agreement": top1 / rows, "top5_overlap": overlap / rows}
    if tie is not None:
        out["top1_agreement_outside_ties"] = outside / rows
    if va != vb:
        out["vocab_compared"] = v
        out["excluded_mass_a"] = float(torch.stack(excluded_a).max()) if excluded_a else 0.0
        out["excluded_mass_b"] = float(torch.stack(excluded_b).max()) if excluded_b else 0.0
    return out


def _scale(t: Any) -> float:
    m = float(t.abs().max())
    return m if m > 0 else 1.0


# Least cosine similarity of A's and B's sentence embeddings (an embedding model's output, in place of the logits)
EMBEDDING_MIN_COSINE = {"noise floor": 1 - 1e-6, "fixed": 1 - 1e-6, "float32": 1 - 1e-6, "bfloat16": 0.99,
                        "float16": 0.995, "quantized": 0.95}


def embedding_metrics(ea: Any, eb: Any, tol: dict[str, Any]) -> dict[str, Any]:
    """Sentence embeddings [B, D] of A and B -> the JSON `embedding` object: the least cosine similarity over the
    batch, max|A-B|, the dimension, the bound the cosine must reach and whether it does."""
    import torch

    if ea is None or eb is None or tuple(ea.shape) != tuple(eb.shape):
        shapes = [None if e is None else list(e.shape) for e in (ea, eb)]
        raise UnsupportedError(f"one side has no logits and the two sides' sentence embeddings cannot be compared "
                               f"(shapes {shapes[0]} and {shapes[1]})")
    a, b = ea.double(), eb.double()
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())
    bound = EMBEDDING_MIN_COSINE.get(tol["mode"].replace("stored ", ""), 0.99)
    tol["embedding_min_cosine"] = bound
    return {"dimension": int(a.shape[-1]), "cosine_similarity": cos, "max_abs_diff": float((a - b).abs().max()),
            "min_cosine": bound, "passed": math.isfinite(cos) and cos >= bound}


def layer_label(index: int, num_layers: int) -> str:
    """-1 -> "embedding", 0..L-1 -> "block i", L -> "final norm"."""
    return "embedding" if index == -1 else ("final norm" if index == num_layers else f"block {index}")


def layer_rows(ra: Any, rb: Any, tol: dict[str, Any], noise: list[float] | None = None,
               scales: list[float] | None = None) -> list[dict[str, Any]]:
    """One row per point (-1 embedding, 0..L-1 blocks, L final norm). With `noise` (the measured noise floor
    of each point, absolute) and `scales` (max|O| of each point), the bound is NOISE_FACTOR x noise +
    NOISE_FLOOR_RELATIVE x scale; otherwise the tolerance's atol (embedding_atol) x max|A|."""
    rows = []
    n = len(ra.hidden_states) - 2
    for pos, (ha, hb) in enumerate(zip(ra.hidden_states, rb.hidden_states)):
        index = pos - 1  # -1 embedding, 0..L-1 blocks, L final norm
        max_abs = float((ha - hb).abs().max())
        scale = _scale(ha)
        rel = max_abs / scale
        row: dict[str, Any] = {"index": index, "name": layer_label(index, n), "max_abs_diff": max_abs,
                               "relative_diff": rel}
        if noise is not None and scales is not None:
            bound = tol["noise_factor"] * noise[pos] + tol["floor_relative"] * scales[pos]
            row["noise_floor"] = noise[pos]
        else:
            bound = (tol["embedding_atol"] if index == -1 else tol["atol"]) * scale
        row["bound"] = bound
        ok = math.isfinite(max_abs) and max_abs <= bound
        row["status"] = "ok" if ok else "mismatch"
        rows.append(row)
    assert len(rows) == n + 2
    return rows


def _swap_gap(probs: Any, own: Any, other: Any) -> Any:
    """Per token [N]: how far below this side's k-th pick (the smallest probability in `own`) lie the experts the
    other side picked instead (the largest of them): 0 for an exact tie, large for a decisive choice."""
    import torch

    kth = probs.gather(-1, own).min(-1).values
    theirs = probs.gather(-1, other)
    missing = ~(other[:, :, None] == own[:, None, :]).any(-1)  # the other's picks this side did not make
    best = torch.where(missing, theirs, torch.full_like(theirs, -1.0)).max(-1).values
    return (kth - best).clamp(min=0)


def routing_rows(ra: Any, rb: Any, tie: float) -> dict[str, Any] | None:
    """The `moe` object: per layer, how often A's and B's top-k expert sets agree over the tokens, the flips, and
    which of them are near-ties (the swapped experts within `tie` of the k-th pick in both sides' probabilities);
    None when a side reports no routing (a dense model, or a runtime that does not expose it)."""
    if not ra.routing or not rb.routing or len(ra.routing) != len(rb.routing):
        return None
    layers = []
    for i, ((pa, ia), (pb, ib)) in enumerate(zip(ra.routing, rb.routing)):
        same = (ia.sort(-1).values == ib.sort(-1).values).all(-1)
        gap = _swap_gap(pa.double(), ia, ib).maximum(_swap_gap(pb.double(), ib, ia))
        flips = (~same).nonzero().flatten().tolist()
        near = [t for t in flips if float(gap[t]) <= tie]
        layers.append({"index": i, "tokens": int(same.numel()), "agreement": float(same.double().mean()),
                       "flips": len(flips), "near_tie_flips": len(near),
                       "examples": [{"token": t, "a": sorted(ia[t].tolist()), "b": sorted(ib[t].tolist()),
                                     "gap": float(gap[t]), "near_tie": t in near} for t in flips[:MAX_FLIP_EXAMPLES]]})
    total = sum(r["tokens"] for r in layers)
    return {"top_k": int(ra.routing[0][1].shape[-1]), "tie": tie,
            "agreement": sum(r["agreement"] * r["tokens"] for r in layers) / max(total, 1),
            "flips": sum(r["flips"] for r in layers), "near_tie_flips": sum(r["near_tie_flips"] for r in layers),
            "layers": layers}


def judge_routing(layers: list[dict[str, Any]], moe: dict[str, Any] | None) -> None:
    """Mark each decoder block whose routing flipped: a flip that is not a near-tie makes an agreeing block a
    divergence (status "routing"); near-tie flips are noted on the row and leave its status to the hidden state."""
    if moe is None:
        return
    rows = {r["index"]: r for r in layers}
    for m in moe["layers"]:
        row = rows.get(m["index"])
        if row is None or not m["flips"]:
            continue
        row["expert_flips"], row["near_tie_flips"] = m["flips"], m["near_tie_flips"]
        if row["status"] == "ok" and m["flips"] > m["near_tie_flips"]:
            row["status"] = "routing"


def storage_precision(ckpt: Checkpoint) -> str:
    """The lowest float precision any of `ckpt`'s weights is stored in (float32, float16 or bfloat16);
    quantized tensors are not counted (a quantized side is judged as quantized)."""
    found = [t.dtype for t in ckpt.tensors.values() if t.dtype in PRECISION_BITS]
    return min(found, key=lambda d: PRECISION_BITS[d]) if found else "float32"


def tolerance_for(dtype: str, atol: float | None, quantized: bool = False,
                  stored: dict[str, str] | None = None) -> dict[str, Any]:
    """The tolerance object of the JSON: the rule, its parameters, its `mode` and the `reason` it applies.

    `stored` is each side's storage precision ({"a": "float32", "b": "bfloat16"}); when one side is stored
    in a lower precision than the other and than the compute dtype, that precision's tolerance applies."""
    stored = stored or {"a": dtype, "b": dtype}
    low = min(stored.values(), key=lambda d: PRECISION_BITS.get(d, 24))
    reduced = (not quantized and dtype == "float32" and stored["a"] != stored["b"]
               and PRECISION_BITS.get(low, 24) < PRECISION_BITS[dtype])
    if quantized:
        tol = dict(QUANTIZED)
        mode = "quantized"
        reason = ("a side is stored quantized: its weights differ from the other side's by design, so the "
                  "next-token distributions decide")
    elif reduced:
        tol = dict(TOLERANCES[low])
        bits = PRECISION_BITS[low]
        # The embedding output is a lookup times sqrt(d): one rounding of the stored table (at most 2^-bits
        # of the value, half a step), plus float32's own rounding of the product on both sides.
        tol["embedding_atol"] = 2.0 ** -bits * (1 + 2.0 ** -10)
        mode = f"stored {low}"
        side = "A" if stored["a"] == low else "B"
        other = "B" if side == "A" else "A"
        reason = (f"{side} is stored in {low}, {other} in {stored[other.lower()]}: {side}'s weights differ by up "
                  f"to one {low} rounding (2^-{bits} relative), far above float32 round-off, so {low}'s "
                  f"tolerance applies")
    elif dtype == "float32" and atol is None:
        tol = {"noise_factor": NOISE_FACTOR, "floor_relative": NOISE_FLOOR_RELATIVE, "logits_atol": None,
               "min_top1_agreement": None, "max_kl_divergence": None}
        mode = "noise floor"
        reason = ("float32 on both sides: each layer is judged against the round-off two correct float32 "
                  "implementations have there, measured against a float64 run of the reference runtime")
    else:
        tol = dict(TOLERANCES[dtype])
        mode = "fixed" if dtype == "float32" else dtype
        reason = ("--atol given: a fixed tolerance relative to each tensor's scale" if dtype == "float32"
                  else f"computed in {dtype}: judged by what {dtype} can promise")
    strict = mode in ("fixed", "noise floor")
    if atol is not None:
        if not atol > 0:
            raise InputError(None, f"--atol must be positive, got {atol}")
        tol["atol"] = atol
        if strict:
            tol["embedding_atol"] = atol
            tol["logits_atol"] = atol
    tol["dtype"] = dtype
    tol["mode"] = mode
    tol["reason"] = reason
    tol["stored"] = dict(stored)
    if mode == "noise floor":
        tol["relative_to"] = "max |O| of each tensor (O: the float64 oracle)"
        tol["rule"] = ("max|A-B| <= noise_factor * min(max|A-O|, max|B-O|) + floor_relative * max|O| for every "
                       "hidden state and for the logits (O: the reference runtime on A's weights in float64)")
    elif mode == "fixed":
        tol["relative_to"] = "max |A| of each tensor"
        tol["rule"] = "max|A-B| <= atol * max|A| for every hidden state and for the logits"
    else:
        tol["relative_to"] = "max |A| of each tensor"
        tol["rule"] = ("top-1 agreement outside ties >= min_top1_agreement and KL(A||B) <= max_kl_divergence; "
                       "hidden states within atol * max|A|, the embedding output within embedding_atol * max|A|")
    return tol


def measure_noise(ckpt: Checkpoint, ids: list[int], device: str, ra: Any, rb: Any) -> dict[str, Any]:
    """Run the reference runtime on `ckpt` in float64 (the oracle O) and measure each side's own error against
    it at every point: max|A - O|, max|B - O| and max|O| per hidden state, and the same for the logits (over
    the rows both sides have), computed a block of positions at a time so that no [T, V] float64 array is
    held. Returns {"noise": [min of the two per point], "scales": [...], "a": [...], "b": [...],
    "logits": {...}, "seconds": ...}."""
    import time

    import torch

    from .runtimes.reference import ReferenceModel

    start = time.perf_counter()
    model = ReferenceModel(ckpt, device, "float64")
    try:
        with torch.no_grad():
            hidden = model.model.hidden_states(torch.as_tensor([ids], dtype=torch.long, device=device))
            err_a, err_b, scales = [], [], []
            for o, ha, hb in zip(hidden, ra.hidden_states, rb.hidden_states):
                o = o.cpu()
                err_a.append(float((ha.double() - o).abs().max()))
                err_b.append(float((hb.double() - o).abs().max()))
                scales.append(_scale(o))
            final = hidden[-1]
            del hidden
            if ra.logits is None or rb.logits is None:  # an embedding model: no logits to measure
                return {"noise": [min(x, y) for x, y in zip(err_a, err_b)], "scales": scales, "a": err_a,
                        "b": err_b, "logits": None, "seconds": time.perf_counter() - start}
            la, lb = ra.logits.reshape(-1, ra.logits.shape[-1]), rb.logits.reshape(-1, rb.logits.shape[-1])
            v = min(la.shape[-1], lb.shape[-1])
            h = final.reshape(-1, final.shape[-1])
            step = max(1, METRIC_CHUNK_ELEMENTS // max(1, la.shape[-1]))
            la_err = lb_err = scale = 0.0
            for i in range(0, h.shape[0], step):
                o = model.model.lm_head(h[i:i + step]).cpu()[:, :v]
                la_err = max(la_err, float((la[i:i + step, :v].double() - o).abs().max()))
                lb_err = max(lb_err, float((lb[i:i + step, :v].double() - o).abs().max()))
                scale = max(scale, float(o.abs().max()))
    finally:
        model.close()
    return {"noise": [min(x, y) for x, y in zip(err_a, err_b)], "scales": scales, "a": err_a, "b": err_b,
            "logits": {"noise": min(la_err, lb_err), "scale": scale or 1.0, "a": la_err, "b": lb_err},
            "seconds": time.perf_counter() - start}


def advice(result: dict[str, Any]) -> list[str]:
    """What to try after a FAIL, from the numbers of the run."""
    tol, first = result["tolerance"], result["first_divergent_layer"]
    out: list[str] = []
    row = next((r for r in result["layers"] if r["index"] == first), None) if first is not None else None
    if row is not None and row["status"] == "routing":
        out.append(f"{row['name']}: A and B sent {row['expert_flips'] - row['near_tie_flips']} token(s) to different "
                   f"experts by more than a near-tie (the hidden state itself is within its bound): the routers, or "
                   f"what they read, differ; see the Experts line")
    elif row is not None and tol["mode"] == "noise floor":
        noise = row.get("noise_floor") or 0.0
        times = f"{row['max_abs_diff'] / noise:,.0f}x" if noise else "above"
        out.append(f"{row['name']} differs by {row['max_abs_diff']:.3g} ({row['relative_diff']:.3g} of max|A|): "
                   f"{times} the measured float32 noise floor there ({noise:.3g}; limit "
                   f"{tol['noise_factor']:g}x + {tol['floor_relative']:.3g} of max|O|)")
        rel = row["relative_diff"]
        suggest = 10.0 ** math.ceil(math.log10(rel * 2)) if rel > 0 and math.isfinite(rel) else 1e-4
        out.append(f"a fixed tolerance accepts it with --atol {suggest:g} (relative to max|A|), if that "
                   f"difference is acceptable for your use")
    elif row is not None and tol["mode"] == "fixed":
        out.append(f"{row['name']} differs by {row['relative_diff']:.3g} of max|A| (--atol {tol['atol']:g}); "
                   f"without --atol parity measures the float32 noise floor and judges against it")
    elif first is not None and (tol["mode"] == "quantized" or tol["mode"].startswith("stored")):
        out.append(f"judged as {tol['mode']}: only the next-token distributions and gross per-layer "
                   f"errors count; see the logits line")
    if first is not None:
        out.append(f"gemma-inspect diff {result['a']['source']} {result['b']['source']} says whether the weights "
                   f"are bit-identical (then the runtimes differ, not the checkpoints)")
    return out


# ----------------------------------------------------------------------------- parity
def parity(a: Checkpoint | str, b: Checkpoint | str, runtime_a: str = "auto", runtime_b: str = "auto",
           device: str = "auto", dtype: str = "float32", tokens: list[int] | None = None,
           prompt: str | None = None, atol: float | None = None,
           progress: Callable[[str], None] | None = None, options_a: dict[str, Any] | None = None,
           options_b: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run A and B on the same tokens and compare logits and every hidden state (the parity JSON object).

    `tokens` (ids) or `prompt` (text, tokenized with A's tokenizer, BOS prepended); neither: a fixed
    sequence longer than any sliding window. `progress(message)` is called before each slow step.
    `options_a` / `options_b` are passed to the runtimes (e.g. {"device_map": "auto"}).
    """
    from .formats import load
    from .runtimes import DTYPES, resolve_device, resolve_runtime, run

    ca = load(a) if isinstance(a, str) else a
    cb = load(b) if isinstance(b, str) else b
    ca.require("parity")
    cb.require("parity")
    if dtype not in DTYPES:
        raise InputError(None, f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if tokens is not None and prompt is not None:
        raise InputError(None, "give either tokens or a prompt, not both")
    check_compatible(ca, cb)
    rt_a, rt_b = resolve_runtime(ca, runtime_a), resolve_runtime(cb, runtime_b)
    dev = resolve_device(device)
    quantized = ca.is_quantized or cb.is_quantized
    tol = tolerance_for(dtype, atol, quantized, {"a": storage_precision(ca), "b": storage_precision(cb)})
    if prompt is not None:
        if ca.tokenizer is None:
            raise InputError(ca.source, "has no tokenizer to encode --prompt with; pass --tokens instead")
        ids = ca.tokenizer.encode(prompt)
    elif tokens is not None:
        ids = [int(t) for t in tokens]
    else:
        ids = default_tokens(ca, cb)

    from .runtimes.memory import check_fits

    for c in (ca, cb):  # before anything is loaded: refuse a forward pass that cannot fit
        check_fits(c, len(ids), dtype, dev, window_driven=tokens is None and prompt is None
                   and len(ids) > MIN_DEFAULT_TOKENS)
    # Each side's own tokenizer first: seconds, and a tokenizer that cannot run fails before minutes of forward passes
    tok = tokenizer_parity(ca, cb)
    oracle = tol["mode"] == "noise floor"
    steps = 4 if oracle else 3
    say = progress or (lambda _msg: None)
    say(f"[1/{steps}] running A with {rt_a} on {dev} ({dtype}, {len(ids)} tokens)")
    ra = run(ca, ids, rt_a, dev, dtype, **(options_a or {}))
    say(f"[2/{steps}] running B with {rt_b} on {dev} ({dtype}, {len(ids)} tokens)")
    rb = run(cb, ids, rt_b, dev, dtype, **(options_b or {}))
    n = ca.spec.num_layers
    if oracle:
        say(f"[3/{steps}] measuring the float32 noise floor: the reference runtime in float64")
        try:
            measured = measure_noise(ca, ids, dev, ra, rb)
        except (MemoryError, RuntimeError, UnsupportedError) as e:  # CUDA out-of-memory is a RuntimeError
            if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
                why = f"did not fit in memory on {dev}"
            elif isinstance(e, UnsupportedError):
                why = f"cannot run A ({e})"
            else:
                raise
            oracle = False  # still judged, on the fixed rule, and the report says why
            tol = tolerance_for(dtype, FALLBACK_ATOL, quantized, tol["stored"])
            tol["reason"] = (f"the reference runtime's float64 run that measures the noise floor {why}: a fixed "
                             f"{FALLBACK_ATOL:g} of max|A| instead (--atol sets another)")
    if oracle:
        tol["oracle"] = {"runtime": "reference", "dtype": "float64", "weights": "A",
                         "seconds": round(measured["seconds"], 3)}
        layers = layer_rows(ra, rb, tol, measured["noise"], measured["scales"])
        for row, ea, eb in zip(layers, measured["a"], measured["b"]):
            row["error_a"], row["error_b"] = ea, eb
    else:
        layers = layer_rows(ra, rb, tol)
    say(f"[{steps}/{steps}] comparing")
    embedding = None
    if ra.logits is None or rb.logits is None:  # an embedding model: its sentence embedding instead of logits
        logits, logits_ok = None, True
        embedding = embedding_metrics(ra.embedding, rb.embedding, tol)
        logits_ok = embedding["passed"]
    elif tol["mode"] in ("noise floor", "fixed"):
        logits = logits_metrics(ra.logits, rb.logits)
        if oracle:
            lo = measured["logits"]
            bound = tol["noise_factor"] * lo["noise"] + tol["floor_relative"] * lo["scale"]
            logits.update({"noise_floor": lo["noise"], "error_a": lo["a"], "error_b": lo["b"]})
        else:
            bound = tol["logits_atol"] * _scale(ra.logits)
        logits_ok = math.isfinite(logits["max_abs_diff"]) and logits["max_abs_diff"] <= bound
        tol["logits_max_abs_diff"] = bound
        logits["bound"] = bound
    else:
        bits = PRECISION_BITS.get(tol["mode"].replace("stored ", ""), 8)
        tie = (tol["top1_tie_fraction"] * _scale(ra.logits) if quantized
               else tol["top1_tie_steps"] * bf16_step(_scale(ra.logits), bits))
        tol["top1_tie_logits"] = tie
        logits = logits_metrics(ra.logits, rb.logits, tie)
        logits_ok = (logits["top1_agreement_outside_ties"] >= tol["min_top1_agreement"]
                     and logits["kl_divergence"] <= tol["max_kl_divergence"])
    if logits is not None and "vocab_compared" in logits:
        tol["max_excluded_mass"] = MAX_EXCLUDED_MASS
        logits_ok = (logits_ok and logits["excluded_mass_a"] <= MAX_EXCLUDED_MASS
                     and logits["excluded_mass_b"] <= MAX_EXCLUDED_MASS)  # (a NaN fails)
    moe = routing_rows(ra, rb, ROUTER_TIE.get(tol["mode"].replace("stored ", ""), 1e-2))
    judge_routing(layers, moe)
    first = next((r["index"] for r in layers if r["status"] != "ok"), None)
    if first is None and not logits_ok:
        first = n  # only the output differs: the final norm / output projection / final soft cap
    passed = first is None and logits_ok and (tok is None or tok["passed"])
    result = {
        "passed": passed,
        "a": {"source": ca.source, "runtime": rt_a},
        "b": {"source": cb.source, "runtime": rt_b},
        "device": dev,
        "dtype": dtype,
        "tokens": ids,
        "vocab": {"a": int(ra.logits.shape[-1]), "b": int(rb.logits.shape[-1]),
                  "compared": int(min(ra.logits.shape[-1], rb.logits.shape[-1]))} if logits is not None else None,
        "logits": logits,
        "embedding": embedding,
        "layers": layers,
        "first_divergent_layer": first,
        "first_divergent_name": layer_label(first, n) if first is not None else None,
        "tokenizer": tok,
        "tolerance": tol,
    }
    if moe is not None:
        result["moe"] = moe
    result["advice"] = [] if passed else advice(result)
    return result


# ----------------------------------------------------------------------------- plot
def _short(source: str) -> str:
    import os

    return os.path.basename(source.rstrip("/\\")) or source


def plot_layers(result: dict[str, Any], path: str) -> str:
    """A PNG of max|A-B| per layer and for the logits (log scale), each with its bound (the measured noise
    floor's bound, or the fixed tolerance); the title names both checkpoints and the verdict. Returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = result["layers"]
    tol = result["tolerance"]
    n = len(layers) - 2
    emb = result.get("embedding")
    lg = result["logits"] or {"max_abs_diff": emb["max_abs_diff"]}  # an embedding model: its embedding instead
    last = "embedding" if emb is not None else "logits"
    x = [r["index"] for r in layers] + [n + 1]  # the logits (or the sentence embedding) after the final norm
    diffs = [r["max_abs_diff"] for r in layers] + [lg["max_abs_diff"]]
    bounds = [r.get("bound") for r in layers] + [lg.get("bound")]
    positive = [v for v in diffs + bounds if v and math.isfinite(v) and v > 0]
    floor = min(positive) / 100 if positive else 1e-12  # identical layers sit on the floor of the log axis
    y = [max(v, floor) if math.isfinite(v) else floor for v in diffs]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.35 * len(x) + 3), 4.6), dpi=110)
    ax.plot(x, y, color="#555555", linewidth=1, zorder=1)
    colors = [("#2a9d47" if r["status"] == "ok" else "#d62728") for r in layers]
    colors.append("#d62728" if result["first_divergent_layer"] == n and not result["passed"] else "#1f77b4")
    ax.scatter(x, y, c=colors, s=28, zorder=2)
    bx = [i for i, b in zip(x, bounds) if b is not None]
    by = [b for b in bounds if b is not None]
    label = {"noise floor": f"bound: {tol.get('noise_factor', 0):g} x measured float32 noise floor"}.get(
        tol["mode"], f"bound ({tol['mode']})")
    if bx:
        ax.step(bx, by, where="mid", color="#d62728", linestyle="--", linewidth=1, label=label)
    first = result["first_divergent_layer"]
    if first is not None:
        ax.axvline(first, color="#d62728", alpha=0.25, linewidth=6,
                   label=f"first divergent: {layer_label(first, n)}")
    if any(r["max_abs_diff"] == 0 for r in layers):
        ax.annotate("on the floor: bit-identical", (x[0], floor), textcoords="offset points", xytext=(4, 6),
                    fontsize=7, color="#2a9d47")
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, max(y + by) * 5)
    step = max(1, len(x) // 16)
    ticks = x[::step] if x[-1] in x[::step] else x[::step] + [x[-1]]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["emb" if i == -1 else ("norm" if i == n else last if i == n + 1 else str(i))
                        for i in ticks])
    ax.set_xlabel(f"layer (emb = embedding output, norm = final norm, then the {last})")
    ax.set_ylabel("max |A-B|")
    verdict = "PASS" if result["passed"] else "FAIL"
    a, b = result["a"], result["b"]
    ax.set_title(f"{verdict}: A {_short(a['source'])} ({a['runtime']}) vs B {_short(b['source'])} ({b['runtime']})\n"
                 f"{result['dtype']} on {result['device']}, {len(result['tokens'])} tokens, tolerance: {tol['mode']}; "
                 + (f"logits KL {lg['kl_divergence']:.2g}, top-1 {100 * lg['top1_agreement']:.1f}%" if emb is None
                    else f"embedding cosine {emb['cosine_similarity']:.9f}"), fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
