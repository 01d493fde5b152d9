"""Parity: run two checkpoints (or two runtimes) on the same tokens and say where they part ways.

Both sides return the same points (runtimes/__init__.py): the scaled embedding, every decoder block's
output and the final norm, then the logits. Layer indices in the report: -1 the embedding output,
0..L-1 the decoder blocks, L the final norm. `first_divergent_layer` is the first of them whose
difference exceeds the tolerance (L when only the final norm or the logits disagree, None when
nothing does).

Tolerances depend on the dtype:
- float32 is strict: every hidden state and the logits must satisfy max|A - B| <= atol * max|A|
  (default atol 1e-4; correct implementations agree to about 1e-6 here).
- bfloat16 is judged by what bfloat16 can promise: top-1 agreement and KL divergence of the next-token
  distributions, with a loose per-layer bound (to say where a gross error starts) and a tight one on
  the embedding output, which any two correct implementations compute bit for bit (a lookup and one
  multiply by sqrt(d) rounded to bfloat16), so an embedding scale applied in float32 shows there.
- a quantized side (e.g. a Q8_0 GGUF against its source) is judged the same way, whatever the compute
  dtype: its weights differ by design, so only the next-token distributions can say whether it holds.

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
}

# A quantized checkpoint (GGUF Q8_0, Q4_K, ...) differs from its source in every weight by design: its
# hidden states drift by a few percent of their scale. Ties are gaps below 1% of the logits' scale.
QUANTIZED = {"atol": 0.25, "embedding_atol": 0.25, "logits_atol": None, "min_top1_agreement": 0.9,
             "max_kl_divergence": 0.02, "top1_tie_fraction": 0.01}

MAX_EXCLUDED_MASS = 0.01  # probability a side may put on vocabulary rows the other side does not have

DEFAULT_SEED = 20240221  # the default token sequence is the same on every run and every machine
MIN_DEFAULT_TOKENS = 32


# ----------------------------------------------------------------------------- inputs
def default_tokens(a: Checkpoint, b: Checkpoint | None = None) -> list[int]:
    """BOS, then ids drawn (deterministically) from the vocabulary past the 4 special ids, long enough
    that the last queries of every sliding-window layer see only part of the sequence."""
    import numpy as np

    specs = [s for s in (a.spec, b.spec if b is not None else None) if s is not None]
    windows = [s.sliding_window for s in specs if s.sliding_window and s.sliding_layers]
    n = max([MIN_DEFAULT_TOKENS] + [w + 8 for w in windows])
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
def bf16_step(x: float) -> float:
    """The spacing of bfloat16 numbers around |x| (8 significant bits: 2^(e - 7) for |x| in [2^e, 2^(e+1)))."""
    return 2.0 ** (math.floor(math.log2(abs(x))) - 7) if x else 2.0 ** -133


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


def layer_rows(ra: Any, rb: Any, tol: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    n = len(ra.hidden_states) - 2
    for pos, (ha, hb) in enumerate(zip(ra.hidden_states, rb.hidden_states)):
        index = pos - 1  # -1 embedding, 0..L-1 blocks, L final norm
        max_abs = float((ha - hb).abs().max())
        rel = max_abs / _scale(ha)
        bound = tol["embedding_atol"] if index == -1 else tol["atol"]
        ok = math.isfinite(rel) and rel <= bound
        rows.append({"index": index, "max_abs_diff": max_abs, "relative_diff": rel,
                     "status": "ok" if ok else "mismatch"})
    assert len(rows) == n + 2
    return rows


def tolerance_for(dtype: str, atol: float | None, quantized: bool = False) -> dict[str, Any]:
    tol = dict(QUANTIZED if quantized else TOLERANCES[dtype])
    strict = dtype == "float32" and not quantized
    if atol is not None:
        if not atol > 0:
            raise InputError(None, f"--atol must be positive, got {atol}")
        tol["atol"] = atol
        if strict:
            tol["embedding_atol"] = atol
            tol["logits_atol"] = atol
    tol["dtype"] = dtype
    tol["mode"] = "quantized" if quantized else dtype
    tol["relative_to"] = "max |A| of each tensor"
    if strict:
        tol["rule"] = "max|A-B| <= atol * max|A| for every hidden state and for the logits"
    else:
        tol["rule"] = ("top-1 agreement outside ties >= min_top1_agreement and KL(A||B) <= max_kl_divergence; "
                       "hidden states within atol * max|A|, the embedding output within embedding_atol * max|A|")
    return tol


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
    if dtype not in DTYPES:
        raise InputError(None, f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if tokens is not None and prompt is not None:
        raise InputError(None, "give either tokens or a prompt, not both")
    check_compatible(ca, cb)
    rt_a, rt_b = resolve_runtime(ca, runtime_a), resolve_runtime(cb, runtime_b)
    dev = resolve_device(device)
    quantized = ca.is_quantized or cb.is_quantized
    tol = tolerance_for(dtype, atol, quantized)
    if prompt is not None:
        if ca.tokenizer is None:
            raise InputError(ca.source, "has no tokenizer to encode --prompt with; pass --tokens instead")
        ids = ca.tokenizer.encode(prompt)
    elif tokens is not None:
        ids = [int(t) for t in tokens]
    else:
        ids = default_tokens(ca, cb)

    say = progress or (lambda _msg: None)
    say(f"running A with {rt_a} on {dev} ({dtype})")
    ra = run(ca, ids, rt_a, dev, dtype, **(options_a or {}))
    say(f"running B with {rt_b} on {dev} ({dtype})")
    rb = run(cb, ids, rt_b, dev, dtype, **(options_b or {}))
    say("comparing")

    layers = layer_rows(ra, rb, tol)
    n = ca.spec.num_layers
    if tol["mode"] == "float32":
        logits = logits_metrics(ra.logits, rb.logits)
        bound = tol["logits_atol"] * _scale(ra.logits)
        logits_ok = math.isfinite(logits["max_abs_diff"]) and logits["max_abs_diff"] <= bound
        tol["logits_max_abs_diff"] = bound
    else:
        tie = (tol["top1_tie_fraction"] * _scale(ra.logits) if quantized
               else tol["top1_tie_steps"] * bf16_step(_scale(ra.logits)))
        tol["top1_tie_logits"] = tie
        logits = logits_metrics(ra.logits, rb.logits, tie)
        logits_ok = (logits["top1_agreement_outside_ties"] >= tol["min_top1_agreement"]
                     and logits["kl_divergence"] <= tol["max_kl_divergence"])
    if "vocab_compared" in logits:
        tol["max_excluded_mass"] = MAX_EXCLUDED_MASS
        logits_ok = (logits_ok and logits["excluded_mass_a"] <= MAX_EXCLUDED_MASS
                     and logits["excluded_mass_b"] <= MAX_EXCLUDED_MASS)  # (a NaN fails)
    first = next((r["index"] for r in layers if r["status"] != "ok"), None)
    if first is None and not logits_ok:
        first = n  # only the output differs: the final norm / output projection / final soft cap
    tok = tokenizer_parity(ca, cb)
    passed = first is None and logits_ok and (tok is None or tok["passed"])
    return {
        "passed": passed,
        "a": {"source": ca.source, "runtime": rt_a},
        "b": {"source": cb.source, "runtime": rt_b},
        "device": dev,
        "dtype": dtype,
        "tokens": ids,
        "vocab": {"a": int(ra.logits.shape[-1]), "b": int(rb.logits.shape[-1]),
                  "compared": int(min(ra.logits.shape[-1], rb.logits.shape[-1]))},
        "logits": logits,
        "layers": layers,
        "first_divergent_layer": first,
        "tokenizer": tok,
        "tolerance": tol,
    }


# ----------------------------------------------------------------------------- plot
def layer_label(index: int, num_layers: int) -> str:
    return "embedding" if index == -1 else ("final norm" if index == num_layers else f"block {index}")


def plot_layers(result: dict[str, Any], path: str) -> str:
    """A PNG of the relative difference per layer (log scale) with the tolerance line; returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = result["layers"]
    tol = result["tolerance"]
    n = len(layers) - 2
    floor = 1e-12  # identical layers sit on the floor of the log axis
    x = [r["index"] for r in layers]
    y = [max(r["relative_diff"], floor) for r in layers]
    bounds = [tol["embedding_atol"] if i == -1 else tol["atol"] for i in x]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(x) + 3), 4.2), dpi=110)
    ax.plot(x, y, color="#555555", linewidth=1, zorder=1)
    colors = ["#2a9d47" if r["status"] == "ok" else "#d62728" for r in layers]
    ax.scatter(x, y, c=colors, s=28, zorder=2)
    ax.step(x, bounds, where="mid", color="#d62728", linestyle="--", linewidth=1,
            label=f"tolerance ({result['dtype']})")
    if result["first_divergent_layer"] is not None:
        ax.axvline(result["first_divergent_layer"], color="#d62728", alpha=0.25, linewidth=6,
                   label=f"first divergent: {layer_label(result['first_divergent_layer'], n)}")
    if any(r["relative_diff"] == 0 for r in layers):
        ax.annotate("on the floor: bit-identical", (x[0], floor), textcoords="offset points", xytext=(4, 6),
                    fontsize=7, color="#2a9d47")
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, max(max(y), max(bounds)) * 5)
    step = max(1, len(x) // 16)
    ticks = x[::step] if x[-1] in x[::step] else x[::step] + [x[-1]]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["emb" if i == -1 else ("norm" if i == n else str(i)) for i in ticks])
    ax.set_xlabel("layer (emb = embedding output, norm = final norm)")
    ax.set_ylabel("max|A-B| / max|A|")
    verdict = "PASS" if result["passed"] else "FAIL"
    ax.set_title(f"{verdict}: {result['a']['runtime']} vs {result['b']['runtime']} "
                 f"({result['dtype']}, {result['device']}, {len(result['tokens'])} tokens)", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
