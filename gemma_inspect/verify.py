"""`verify`: confirm from a running model, not from its config, that a checkpoint computes what its Gemma
family computes; plus a config lint that needs no forward pass.

The architecture checks hook the runtime's real modules (trace.py) during two forward passes over a fixed
token sequence longer than any sliding window, and probe single modules with known inputs:

    pass 1 (as run)   the call order and data flow of decoder block 0; the input of block 0 (the scaled
                      embedding); q/k/v (and q/k norm) outputs of block 0; the attention scores and
                      probabilities of every block; the final norm's output and the logits
    pass 2 (probes)   the final hidden state x 10^4 (does the output saturate at a soft cap?); block 0's
                      queries x 10^4 (do the attention scores?); block 0's FFN gate output replaced by a grid
                      of known values and its up projection by ones, so the down projection receives
                      act(grid) (which activation?)
    module probes     every norm of block 0, the final norm and the q/k norms called on x = +-1 (unit RMS):
                      y / x against the module's own weight w (does it apply 1 + w or w?)

Each check reports `expected` (the family's rules in spec.FAMILY_RULES; for what depends on the size, the
published card of the same shape, else the checkpoint's own declaration), `observed`, a short `evidence`
string with the numbers, and a status: pass, fail, warn (ambiguous rather than wrong) or skip (not
observable with this runtime). `passed` is true when no check fails.

The lint (`lint:<rule>`) reads the config, tokenizer and tensors. A rule that applies to the checkpoint and
finds nothing reports `pass` (so CI logs show what was looked at); a rule that does not apply to the family
or format is left out; one that applies but lacks what it needs (e.g. no tokenizer) reports `skip`.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

from .checkpoint import NORM_ROLES, Checkpoint, parse_canonical
from .spec import (CARD_NAMES, FAMILY_RULES, FULL, SLIDING, GemmaSpec, card, family_layer_types,
                   round_to_dtype)
from .trace import is_norm

STATUSES = ("pass", "fail", "skip", "warn")
CHECK_NAMES = ("norm_placement", "norm_offset", "embedding_scale", "tied_embeddings", "activation",
               "attention_kind", "logit_softcap", "attention_softcap", "qk_norm", "sliding_window", "query_scale")
PROBE_SCALE = 1e4  # hidden states and queries are multiplied by this to push logits far past any soft cap
GRID = (-6.0, 6.0)  # the known gate values fed to the FFN activation
MASKED = -1e6  # a score at or below this is a masked key (runtimes add -inf, -1e9 or the dtype's minimum)
NEAR_ONE = 0.25  # a norm weight whose mean is within this of 1 looks like it holds the (1 + w) offset


def _gelu_tanh(x: Any) -> Any:
    return 0.5 * x * (1 + (math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)).tanh())


def _gelu_erf(x: Any) -> Any:
    import torch

    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


# The candidates of the activation probe, in float64, by the names GemmaSpec uses.
ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "gelu_tanh": _gelu_tanh,
    "gelu": _gelu_erf,
    "silu": lambda x: x / (1 + (-x).exp()),
    "relu": lambda x: x.clamp(min=0),
}


def check(name: str, status: str, expected: Any, observed: Any, evidence: str) -> dict[str, Any]:
    assert status in STATUSES, status
    return {"name": name, "status": status, "expected": expected, "observed": observed, "evidence": evidence}


def run_dtype(spec: GemmaSpec) -> str:
    """The dtype verify runs in: the checkpoint's own when a runtime can run it (bfloat16), else float32."""
    return "bfloat16" if spec.dtype == "bfloat16" else "float32"


# ============================================================================= verify
def verify(source: Checkpoint | str, runtime: str = "auto", device: str = "auto", graph: bool = False,
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the traced forward passes and the lint; returns the verify JSON object
    (`{"passed", "source", "runtime", "checks"}`, plus `"graph"`, block 0's recorded layer graph, when asked)."""
    from .formats import load
    from .parity import default_tokens
    from .runtimes import load_model, resolve_device, resolve_runtime

    ckpt = load(source) if isinstance(source, str) else source
    name = resolve_runtime(ckpt, runtime)
    dev = resolve_device(device)
    dtype = run_dtype(ckpt.spec)
    say = progress or (lambda _msg: None)
    say("[1/3] linting the config")
    lint_checks = lint(ckpt)
    ids = default_tokens(ckpt)
    from .parity import MIN_DEFAULT_TOKENS
    from .runtimes.memory import check_fits

    check_fits(ckpt, len(ids), dtype, dev, window_driven=len(ids) > MIN_DEFAULT_TOKENS)  # before loading
    say(f"[2/3] loading with {name} on {dev} ({dtype})")
    # Eager attention: transformers' SDPA and keras-hub's fused kernel hide the scores verify looks at.
    options = {"attn_implementation": "eager"} if name in ("transformers", "keras") else {}
    model = load_model(ckpt, name, dev, dtype, **options)
    try:
        say("[3/3] tracing the forward pass")
        obs = observe(model, ids)
    finally:
        model.close()
    checks = architecture_checks(ckpt, obs) + lint_checks
    result: dict[str, Any] = {"passed": all(c["status"] != "fail" for c in checks), "source": ckpt.source,
                              "runtime": name, "checks": checks}
    if graph:
        result["graph"] = obs["graph"]
    return result


# ============================================================================= observation
def observe(model: Any, ids: list[int]) -> dict[str, Any]:
    """Everything the checks need, from the hooked forward passes and module probes of `model` (a
    runtimes.LoadedModel). Plain values and CPU float64 tensors."""
    import torch

    from .trace import Tracer

    an = model.anatomy()
    obs: dict[str, Any] = {"runtime": model.runtime, "dtype": model.dtype, "tokens": len(ids),
                           "num_layers": len(an.blocks), "layouts": an.layouts, "head_dim": an.head_dim}
    scores: dict[int, dict[str, Any]] = {}

    def on_softmax(i: int, s: Any, p: Any) -> None:
        b, t, k = s.shape[0], s.shape[-2], s.shape[-1]
        s = s.detach().float().reshape(b, -1, t, k)[0]  # [H, T, S]: keras-hub's [B, K, G, T, S] too
        seen = s > MASKED
        entry = {"heads": s.shape[0], "keys_last": seen[:, -1, :].sum(-1).tolist(), "queries": t}
        if i == 0:
            entry["diag"] = torch.diagonal(s, dim1=-2, dim2=-1).double().cpu()  # [H, T]
            entry["seen"] = seen
            entry["max_abs"] = float(s[seen].abs().max())
        scores.setdefault(i, entry)

    # ---------------------------------------------------------------- pass 1: as run
    with Tracer(an) as tr:
        rec = tr.record_block(0)
        tr.capture_input(an.blocks[0], "block0_in")
        tr.capture_output(an.final_norm, "final")
        for role in ("q", "k", "v", "q_norm", "k_norm"):
            m = an.part(0, role)
            if m is not None:
                tr.capture_output(m, role)
        tr.on_softmax(on_softmax)
        res = model.forward([ids])
        got = dict(tr.captured)
    obs["graph"] = rec.as_dict()
    obs["scores"] = scores
    obs["logits_max"] = float(res.logits.abs().max())
    ids_t = torch.as_tensor(ids)
    emb_w = an.embedding_weight
    obs["embedding"] = {"x": got["block0_in"][0].cpu(), "rows": emb_w.detach()[ids_t.to(emb_w.device)].cpu(),
                        "d": int(emb_w.shape[-1])}
    obs["qkv"] = {k: got[k].cpu() for k in ("q", "k", "v", "q_norm", "k_norm") if got.get(k) is not None}
    obs["tied"] = _tied_observation(an, got["final"], res.logits)

    # ---------------------------------------------------------------- pass 2: probes
    probe: dict[str, Any] = {}

    def gate_grid(t: Any) -> Any:
        grid = torch.linspace(GRID[0], GRID[1], t.shape[-1], device=t.device).to(t.dtype)
        probe["grid"] = grid.double().cpu()
        return grid.expand(t.shape).contiguous()

    def on_softmax_probe(i: int, s: Any, _p: Any) -> None:
        if i == 0 and 0 in scores and "probe_max_abs" not in probe:
            s = s.detach().float().reshape(s.shape[0], -1, s.shape[-2], s.shape[-1])[0]
            probe["probe_max_abs"] = float(s[scores[0]["seen"]].abs().max())

    # The final soft cap is probed in a pass of its own: the block-0 probes below change the network, and a real
    # model's logits (Gemma 3 270M: max 194 as run) are not those of the changed one, so the growth ratio would
    # measure the change, not the cap (it read 1897 for 10000 on the real weights: "neither saturated nor linear").
    with Tracer(an) as tr:
        tr.replace_output(an.final_norm, lambda t: t * PROBE_SCALE)
        obs["logits_probe_max"] = float(model.forward([ids]).logits.abs().max())
    with Tracer(an) as tr:
        qpoint = an.part(0, "q_norm")  # after the QK-norm, which would undo the scale
        if qpoint is None:
            qpoint = an.part(0, "q")
        tr.replace_output(qpoint, lambda t: t * PROBE_SCALE)
        gate, up, down = an.part(0, "gate"), an.part(0, "up"), an.part(0, "down")
        if gate is not None and up is not None and down is not None:
            tr.replace_output(gate, gate_grid)
            tr.replace_output(up, lambda t: torch.ones_like(t))
            tr.capture_input(down, "down_in")
        tr.on_softmax(on_softmax_probe)
        model.forward([ids])
        down_in = tr.captured.get("down_in")
    obs["attention_probe_max"] = probe.get("probe_max_abs")
    if down_in is not None and "grid" in probe:
        obs["activation"] = {"x": probe["grid"], "y": down_in.reshape(-1, down_in.shape[-1])[0].double().cpu()}

    # ---------------------------------------------------------------- module probes: the norms
    obs["norms"] = _probe_norms(an, rec)
    obs["norm_means"] = _norm_weight_means(an)
    return obs


def _weight_of(module: Any) -> Any:
    """A norm module's own weight: its only 1-D parameter (HF `weight`, keras-hub `scale`)."""
    params = [p for p in module.parameters() if p.dim() == 1]
    return params[0] if len(params) == 1 else None


def _norm_modules(an: Any, block: int) -> list[tuple[str, Any]]:
    """The norms a block calls directly (by the runtime's class names), then its q/k norms."""
    out = [(n, m) for n, m in an.blocks[block].named_children() if is_norm(m)]
    for role in ("q_norm", "k_norm"):
        m = an.part(block, role)
        if m is not None:
            out.append((an.roles[role], m))
    return out


def _probe_norms(an: Any, rec: Any) -> list[dict[str, Any]]:
    import torch

    called = {n["name"] for n in rec.nodes if n.get("kind") == "module"}
    targets = [(n, m) for n, m in _norm_modules(an, 0) if n in called or "." in n] + [("final norm", an.final_norm)]
    out = []
    for name, module in targets:
        w = _weight_of(module)
        if w is None:
            continue
        n = w.shape[0]
        # x = +1, -1, +1, ...: unit RMS, exact in every dtype; y / x is then the factor the norm applies.
        x = torch.tensor([(-1.0) ** i for i in range(n)], device=w.device).to(w.dtype).reshape(1, 1, n)
        with torch.no_grad():
            y = module(x)
        r = (y.double().reshape(-1) / x.double().reshape(-1)).cpu()
        wd = w.detach().double().cpu()
        out.append({"name": name, "ratio": r, "w": wd})
    return out


def _norm_weight_means(an: Any) -> list[float]:
    means = []
    for i in range(len(an.blocks)):
        for _n, m in _norm_modules(an, i):
            w = _weight_of(m)
            if w is not None:
                means.append(float(w.detach().double().mean()))
    w = _weight_of(an.final_norm)
    if w is not None:
        means.append(float(w.detach().double().mean()))
    return means


def _project(h: Any, weight: Any) -> Any:
    """h [T, d] @ W^T in float32 on W's device, one vocabulary slice at a time -> CPU float64 [T, V]."""
    import torch

    hw = h.to(device=weight.device, dtype=torch.float32)
    parts = [(hw @ chunk.detach().float().T).double().cpu() for chunk in weight.split(32768)]
    return torch.cat(parts, dim=-1)


TIED_POSITIONS = 16  # whether logits = h @ E^T is settled by a few positions, not the whole sequence


def _tied_observation(an: Any, final: Any, logits: Any) -> dict[str, Any]:
    """The last TIED_POSITIONS positions' logits and their projections through the embedding (and a separate
    output matrix): a few [16, V] float64 arrays, where the whole sequence (Gemma 2's default 4,104 positions x
    256,000 rows) would be 8 GB each."""
    h = final.reshape(-1, final.shape[-1])[-TIED_POSITIONS:]
    logits = logits.reshape(-1, logits.shape[-1])[-TIED_POSITIONS:]
    out = {"via_embedding": _project(h, an.embedding_weight), "logits": logits.double()}
    w = an.output_weight
    same = w is None or w is an.embedding_weight or (
        w.shape == an.embedding_weight.shape and w.data_ptr() == an.embedding_weight.data_ptr())
    out["shares_storage"] = bool(same)
    if not same:
        out["via_output"] = _project(h, w)
    return out


# ============================================================================= expectations
def _card_of_shape(spec: GemmaSpec) -> GemmaSpec | None:
    """The published card with this checkpoint's family and shape, if there is one."""
    for name in CARD_NAMES:
        c = card(name)
        if (c.family, c.hidden_size, c.num_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == \
                (spec.family, spec.hidden_size, spec.num_layers, spec.num_attention_heads,
                 spec.num_key_value_heads, spec.head_dim):
            return c
    return None


def _expected_query_scalar(spec: GemmaSpec) -> tuple[float, str]:
    if spec.family == "gemma":
        return float(spec.head_dim), "Gemma 1 scales queries by head_dim^-0.5"
    c = _card_of_shape(spec)
    if c is not None:
        return float(c.query_pre_attn_scalar), f"the published {c.name} scales queries by query_pre_attn_scalar^-0.5"
    return float(spec.query_pre_attn_scalar), "query_pre_attn_scalar^-0.5 as declared (no published card of this shape)"


def _expected_layers(spec: GemmaSpec) -> dict[str, Any]:
    types = family_layer_types(spec.family, spec.num_layers)
    window = None
    if SLIDING in types:
        c = _card_of_shape(spec)
        window = c.sliding_window if c is not None else spec.sliding_window
    return {"window": window, "sliding_layers": [i for i, t in enumerate(types) if t == SLIDING],
            "global_layers": [i for i, t in enumerate(types) if t == FULL]}


def _tol(dtype: str) -> float:
    return 1e-4 if dtype == "float32" else 3e-2


def _g(x: float | None, digits: int = 6) -> str:
    return "none" if x is None else f"{x:.{digits}g}"


# ============================================================================= the checks
def architecture_checks(ckpt: Checkpoint, obs: dict[str, Any]) -> list[dict[str, Any]]:
    spec = ckpt.spec
    rules = FAMILY_RULES.get(spec.family)
    if rules is None:  # peers have no family rules to compare against
        return [check(n, "skip", None, None, f"no family rules for {spec.family}") for n in CHECK_NAMES]
    caps = _softcaps(rules, obs)
    qk = _query_scale_and_qk_norm(spec, rules, obs, caps["attention"])
    return [
        _norm_placement(rules, obs),
        _norm_offset(rules, obs),
        _embedding_scale(spec, obs),
        _tied_embeddings(ckpt, rules, obs, caps["final"]),
        _activation(rules, obs),
        _attention_kind(spec, obs),
        caps["final_check"],
        caps["attention_check"],
        qk["qk_norm"],
        _sliding_window(spec, obs),
        qk["query_scale"],
    ]


# ----------------------------------------------------------------------------- norm placement
def block_branches(graph: dict[str, Any]) -> list[dict[str, Any]]:
    """The residual branches of a recorded block: for each residual addition, the sub-layer it adds
    (attention or feed-forward), the norm that feeds it (pre) and the norm applied to its output (post)."""
    nodes = graph["nodes"]
    producers = {n["output"]: n for n in nodes if n.get("output")}
    streams = {graph["input"]} | {n["output"] for n in nodes if n["kind"] == "residual"}
    branches, start = [], 0
    for j, r in enumerate(nodes):
        if r["kind"] != "residual":
            continue
        segment = nodes[start:j]
        start = j + 1
        roles = {n.get("role"): n for n in segment if n["kind"] == "module"}
        if "attention" in roles:
            kind, entry, exit_ = "attention", roles["attention"], roles["attention"]
        elif "mlp" in roles:
            kind, entry, exit_ = "feed-forward", roles["mlp"], roles["mlp"]
        elif "gate" in roles and "down" in roles:
            kind, entry, exit_ = "feed-forward", roles["gate"], roles["down"]
        else:
            kind, entry, exit_ = "unknown", None, None
        pre = producers.get(entry["input"]) if entry else None
        if not (pre and pre.get("role") == "norm" and pre.get("input") in streams):
            pre = None
        post = producers.get(r["branch"])
        if not (post and post.get("role") == "norm" and exit_ is not None and post.get("input") == exit_["output"]):
            post = None
        direct = exit_ is not None and r["branch"] == exit_["output"]
        branches.append({"kind": kind, "pre": pre["name"] if pre else None, "post": post["name"] if post else None,
                         "module": exit_["name"] if exit_ and exit_ is entry else
                         (f"{entry['name']} .. {exit_['name']}" if entry and exit_ else None),
                         "stream": r["stream"], "output": r["output"], "resolved": bool(post or direct)})
    return branches


def placement_of(branches: list[dict[str, Any]]) -> str:
    pres = [b["pre"] is not None for b in branches]
    posts = [b["post"] is not None for b in branches]
    if not branches:
        return "none"
    if all(pres) and all(posts):
        return "pre+post"
    if all(pres) and not any(posts):
        return "pre"
    if all(posts) and not any(pres):
        return "post"
    if not any(pres) and not any(posts):
        return "none"
    return "mixed"


def _norm_placement(rules: Any, obs: dict[str, Any]) -> dict[str, Any]:
    graph = obs["graph"]
    branches = block_branches(graph)
    observed = placement_of(branches)
    parts = []
    for b in branches:
        chain = [b["pre"], b["module"], b["post"]]
        parts.append(f"{b['kind']}: " + " -> ".join(c for c in chain if c) + f" -> + {b['stream']}")
    evidence = f"{graph['block']} ({graph['class']}): " + "; ".join(parts) if parts else \
        f"{graph['block']}: no residual addition seen"
    kinds = sorted(b["kind"] for b in branches)
    if kinds != ["attention", "feed-forward"] or not all(b["resolved"] for b in branches):
        return check("norm_placement", "warn", rules.norm_placement, observed,
                     evidence + " (the block's structure was not fully resolved)")
    return check("norm_placement", "pass" if observed == rules.norm_placement else "fail",
                 rules.norm_placement, observed, evidence)


# ----------------------------------------------------------------------------- norm offset
def _norm_offset(rules: Any, obs: dict[str, Any]) -> dict[str, Any]:
    import torch

    tol = 3 * _tol(obs["dtype"])
    probes = obs["norms"]
    if not probes:
        return check("norm_offset", "skip", rules.norm_offset, None, "no norm module with a weight found")
    fits, constant = [], []
    for p in probes:
        r, w = p["ratio"], p["w"]
        if float(w.std()) < 1e-6:  # constant weights: y / x = a + b * w0 cannot separate a from b
            if abs(float(w.mean())) < 1e-6:
                fits.append((p["name"], float(r.mean()), None, float((r - r.mean()).abs().max())))
            else:
                constant.append(p["name"])
            continue
        design = torch.stack([torch.ones_like(w), w], dim=1)
        a, b = torch.linalg.lstsq(design, r.unsqueeze(1)).solution.squeeze(1).tolist()
        resid = float((r - (a + b * w)).abs().max())
        fits.append((p["name"], a, b, resid))
    if not fits:
        return check("norm_offset", "warn", rules.norm_offset, None,
                     f"every probed norm has a constant nonzero weight ({', '.join(constant)}): the offset "
                     f"cannot be told from the weight")
    offsets = [a for _, a, _, _ in fits]
    slopes = [b for _, _, b, _ in fits if b is not None]
    a_mid = sorted(offsets)[len(offsets) // 2]
    b_mid = sorted(slopes)[len(slopes) // 2] if slopes else 1.0
    observed: float | int = round(a_mid, 4)
    for k in (0, 1):  # the runtime applies (k + w)
        if all(abs(a - k) <= tol for a in offsets) and all(abs(b - 1) <= tol for b in slopes):
            observed = k
    how = {1: "(1 + w)", 0: "w"}.get(observed) if isinstance(observed, int) else f"({a_mid:.4g} + {b_mid:.4g} w)"
    name, a, b, _ = max(fits, key=lambda f: abs(f[1] - a_mid) + abs((1 if f[2] is None else f[2]) - 1))
    evidence = (f"{len(fits)} norms called on x = +-1 (unit RMS) apply {how}: y/x = {a:.4f} + "
                f"{1 if b is None else b:.4f} w at worst ({name}), fit residual {max(f[3] for f in fits):.1e}")
    means = obs["norm_means"]
    status = "pass" if observed == rules.norm_offset else "fail"
    if status == "pass" and rules.norm_offset == 1 and means:
        # The runtime adds 1; if the stored weights hold 1 + w already, the model runs 2 + w.
        lo, hi = min(means), max(means)
        if all(abs(m - 1) <= NEAR_ONE for m in means):
            return check("norm_offset", "fail", rules.norm_offset, 2,
                         evidence + f"; but every stored norm weight has a mean near 1 ({lo:.2f}..{hi:.2f} over "
                                    f"{len(means)}): the +1 is in the weights as well, an effective (2 + w)")
        if all(abs(m + 1) <= NEAR_ONE for m in means):
            return check("norm_offset", "fail", rules.norm_offset, 0,
                         evidence + f"; but every stored norm weight has a mean near -1 ({lo:.2f}..{hi:.2f} "
                                    f"over {len(means)}): the weights are w - 1, an effective w")
        near = sum(abs(m - 1) <= NEAR_ONE for m in means)
        evidence += (f"; the stored weights do not hold the +1 themselves ({near} of {len(means)} means near 1, "
                     f"means {lo:.2f}..{hi:.2f})")
    return check("norm_offset", status, rules.norm_offset, observed, evidence)


# ----------------------------------------------------------------------------- embedding scale
def _embedding_scale(spec: GemmaSpec, obs: dict[str, Any]) -> dict[str, Any]:
    import torch

    e, x, d = obs["embedding"]["rows"], obs["embedding"]["x"], obs["embedding"]["d"]
    dtype = obs["dtype"]
    ed, xd = e.double(), x.double()
    denom = float((ed * ed).sum())
    ratio = float((xd * ed).sum()) / denom if denom else float("nan")
    exact = math.sqrt(d)
    rounded = round_to_dtype(exact, dtype)
    dev = float((xd - ratio * ed).abs().max()) / max(float(xd.abs().max()), 1e-30)
    # Which factor reproduces the runtime's output bit for bit: sqrt(d) rounded to the dtype first
    # (Gemma), or the exact factor in float32 with the product rounded afterwards (the porting bug)?
    as_rounded = torch.equal(e * torch.tensor(exact, dtype=torch.float32).to(e.dtype), x)
    as_exact = torch.equal((e.float() * exact).to(e.dtype), x)
    expected = rounded if _scales_embeddings(spec) else 1.0
    if as_rounded and as_exact:
        used = f"sqrt({d}) is the same number exactly and in {dtype}"
    elif as_rounded:
        used = f"the runtime used sqrt({d}) rounded to {dtype} (bit-exact)"
    elif as_exact:
        used = f"the runtime used the exact sqrt({d}) in float32, rounding the product (bit-exact): not Gemma's"
    else:
        used = "neither factor reproduces the output bit for bit"
    # The factor that reproduces the output bit for bit is the one observed; else the least-squares ratio.
    observed = float(f"{(rounded if as_rounded else exact if as_exact else ratio):.6g}")
    evidence = (f"block 0 input / E[tok] = {ratio:.6g} over {x.numel()} values (max deviation {dev:.1e}); "
                f"sqrt({d}) = {exact:.6g}, {rounded:.6g} in {dtype}; {used}")
    if not _scales_embeddings(spec):
        ok = abs(ratio - 1) <= _tol(dtype)
    else:
        ok = as_rounded or (dtype == "float32" and abs(ratio - rounded) <= 1e-6 * rounded)
    return check("embedding_scale", "pass" if ok else "fail", expected, observed, evidence)


def _scales_embeddings(spec: GemmaSpec) -> bool:
    rules = FAMILY_RULES.get(spec.family)
    return rules.scale_embeddings if rules else spec.scale_embeddings


# ----------------------------------------------------------------------------- tied embeddings
def _stored_lm_head(ckpt: Checkpoint) -> tuple[float, str] | None:
    """A separate output matrix stored in the checkpoint, used by the runtimes or not (an HF reader
    with tie_word_embeddings true sets it aside in `ignored`): (max |W - E| against the embedding, where);
    inf when the shapes differ."""
    import numpy as np

    found = None
    if "lm_head.weight" in ckpt.tensors:
        ref = ckpt.tensors["lm_head.weight"]
        found = ref.load(), ref.origin or "lm_head.weight"
    names = [n for n in ckpt.ignored if n.endswith("lm_head.weight")]
    if found is None and names:
        from .formats.safetensors_io import read_array, read_header

        for f in ckpt.files:
            if f.endswith(".safetensors") and os.path.isfile(f):
                entries, _ = read_header(f)
                if names[0] in entries:
                    found = read_array(f, entries[names[0]]), f"{f}:{names[0]}"
                    break
    if found is None:
        return None
    emb = np.asarray(ckpt.tensor("embed").load(), dtype=np.float32)
    head = np.asarray(found[0], dtype=np.float32)
    return (float(np.abs(head - emb).max()) if head.shape == emb.shape else float("inf")), found[1]


def _max_rel(a: Any, b: Any) -> float:
    scale = max(float(a.abs().max()), 1e-30)
    return float((a - b).abs().max()) / scale


def _tied_embeddings(ckpt: Checkpoint, rules: Any, obs: dict[str, Any], cap: float | None) -> dict[str, Any]:
    t = obs["tied"]
    logits = t["logits"]
    capped = (lambda z: cap * (z / cap).tanh()) if cap else (lambda z: z)
    err_tied = _max_rel(logits, capped(t["via_embedding"]))
    err_out = _max_rel(logits, capped(t["via_output"])) if "via_output" in t else None
    tol = _tol(obs["dtype"])
    form = f"c * tanh(h @ E^T / c), c = {cap:g}" if cap else "h @ E^T"
    if err_tied <= tol:
        observed: bool | None = True
        evidence = f"logits = {form} to {err_tied:.1e} (h: the final norm's output, E: the embedding)"
        if t["shares_storage"]:
            evidence += "; the output projection shares the embedding's storage"
    elif err_out is not None and err_out <= tol:
        observed = False
        evidence = (f"logits = the output matrix's projection to {err_out:.1e}, not {form} "
                    f"({err_tied:.1e}): a separate output matrix")
    else:
        observed = None
        evidence = f"logits match neither {form} ({err_tied:.1e}) nor a separate output matrix"
    stored = _stored_lm_head(ckpt)
    status = "pass" if observed == rules.tied_embeddings else ("warn" if observed is None else "fail")
    if stored is not None:
        diff, where = stored
        if diff == 0:
            evidence += f"; a stored lm_head.weight equals the embedding ({where})"
        else:
            used = observed is False
            evidence += (f"; a stored lm_head.weight differs from the embedding (max |W - E| = {diff:.3g}) and is "
                         + ("used" if used else "not used by this runtime") + f" ({where})")
            if status == "pass":
                status = "warn"
    else:
        evidence += "; no lm_head.weight stored"
    return check("tied_embeddings", status, rules.tied_embeddings, observed, evidence)


# ----------------------------------------------------------------------------- activation
def _activation(rules: Any, obs: dict[str, Any]) -> dict[str, Any]:
    act = obs.get("activation")
    if act is None:
        return check("activation", "skip", rules.activation, None, "no gate/up/down projections found to probe")
    x, y = act["x"], act["y"]
    # Relative error per point (|f| floored at 1e-3, where both GELUs vanish): the tanh and erf GELUs
    # differ by up to 21% around x = -3, far more than bfloat16's 0.4% rounding.
    errors = {name: float(((y - f(x)).abs() / f(x).abs().clamp(min=1e-3)).max()) for name, f in ACTIVATIONS.items()}
    ranked = sorted(errors, key=errors.get)  # type: ignore[arg-type]
    best, second = ranked[0], ranked[1]
    tol = 1e-3 if obs["dtype"] == "float32" else 2e-2
    evidence = (f"gate output replaced by {x.numel()} values in [{GRID[0]:g}, {GRID[1]:g}], up by ones; the down "
                f"projection received act(x) with relative error " +
                ", ".join(f"{n} {errors[n]:.1e}" for n in ranked[:3]))
    if errors[best] > tol:
        return check("activation", "fail", rules.activation, "other", evidence + ": none of them")
    if errors[second] <= tol:
        return check("activation", "warn", rules.activation, best,
                     evidence + f": {best} and {second} cannot be told apart in {obs['dtype']}")
    return check("activation", "pass" if best == rules.activation else "fail", rules.activation, best, evidence)


# ----------------------------------------------------------------------------- attention kind
def _heads(t: Any, layout: str, head_dim: int) -> Any:
    """A q/k/v output as [B, T, heads, D] whatever the runtime's layout."""
    if layout == "bthd":
        return t
    if layout == "bhtd":
        return t.transpose(1, 2)
    return t.reshape(t.shape[0], t.shape[1], -1, head_dim)


def _head_counts(obs: dict[str, Any]) -> tuple[int, int, int, str] | None:
    """(H, K, D, how) from the block 0 projections' output shapes and the number of score maps."""
    q, k = obs["qkv"].get("q"), obs["qkv"].get("k")
    if q is None or k is None:
        return None
    per_token = lambda t: int(t[0, 0].numel())  # noqa: E731
    layout = obs["layouts"].get("q", "bt(hd)")
    s0 = obs["scores"].get(0)
    if s0 is not None:
        h, how = s0["heads"], f"{s0['heads']} score maps in the softmax"
    elif layout == "bthd":
        h, how = int(q.shape[2]), "the query projection's head axis"
    elif obs["head_dim"]:
        h, how = per_token(q) // obs["head_dim"], f"the runtime's head_dim {obs['head_dim']}"
    else:
        return None
    d = per_token(q) // h
    return h, per_token(k) // d, d, how


def _attention_kind(spec: GemmaSpec, obs: dict[str, Any]) -> dict[str, Any]:
    counts = _head_counts(obs)
    expected = spec.attention_kind
    if counts is None:
        return check("attention_kind", "skip", expected, None, "the q/k projections of block 0 were not seen")
    h, k, d, how = counts
    v = obs["qkv"].get("v")
    kv_v = int(v[0, 0].numel()) // d if v is not None else None
    kind = "MQA" if k == 1 and h > 1 else ("MHA" if k == h else "GQA")
    evidence = (f"block 0: q {h * d} = {h} x {d} per token ({h} query heads from {how}), k {k * d} = {k} x {d}"
                + (f", v {kv_v * d} = {kv_v} x {d}" if kv_v is not None else "")
                + f"; declared: {spec.num_attention_heads} query heads, {spec.num_key_value_heads} K/V heads")
    ok = kind == expected and (h, k) == (spec.num_attention_heads, spec.num_key_value_heads) and kv_v in (None, k)
    return check("attention_kind", "pass" if ok else "fail", expected, kind, evidence)


# ----------------------------------------------------------------------------- soft caps
def _cap_from(before: float, after: float | None) -> tuple[str, float | None]:
    """('cap', c) when scaling the input by PROBE_SCALE left the output bounded, ('none', None) when the
    output grew with it, ('unclear', after) otherwise."""
    if after is None or before == 0:
        return "unclear", after
    growth = after / before
    if growth >= PROBE_SCALE / 2:
        return "none", None
    if growth <= PROBE_SCALE / 100:
        return "cap", round(after, 4)
    return "unclear", after


def _softcaps(rules: Any, obs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, title, expected, before, after, what in (
            ("final", "logit_softcap", rules.final_logit_softcap, obs["logits_max"], obs["logits_probe_max"],
             "the final hidden state"),
            ("attention", "attention_softcap", rules.attention_logit_softcap,
             obs["scores"].get(0, {}).get("max_abs"), obs["attention_probe_max"], "block 0's queries")):
        if before is None:
            out[key] = None
            out[f"{key}_check"] = check(title, "skip", expected, None,
                                        "the attention scores were not observable (fused attention kernel)")
            continue
        verdict, value = _cap_from(before, after)
        label = "max |logits|" if key == "final" else "max |score| of block 0"
        outcome = {"cap": f"saturated at c = {_g(value)} (c * tanh(x / c))", "none": "grew with it, no cap",
                   "unclear": "neither saturated nor linear"}[verdict]
        evidence = f"{label} {before:.4g} as run, {_g(after)} with {what} x {PROBE_SCALE:g}: {outcome}"
        out[key] = value if verdict == "cap" else None
        if verdict == "unclear":
            status = "warn"
        elif expected is None:
            status = "pass" if verdict == "none" else "fail"
        else:
            status = "pass" if verdict == "cap" and abs(value - expected) <= 1e-3 * expected else "fail"
        out[f"{key}_check"] = check(title, status, expected, value if verdict != "none" else None, evidence)
    return out


# ----------------------------------------------------------------------------- query scale and QK-norm
def _query_scale_and_qk_norm(spec: GemmaSpec, rules: Any, obs: dict[str, Any],
                             cap: float | None) -> dict[str, dict[str, Any]]:
    """On the diagonal of the score matrix, query t meets key t: both carry the same RoPE rotation, which
    preserves their dot product, so score[h, t] = scale * (q_t . k_t) with q, k as they leave the
    projections (or the QK-norms, when those run). Fitting `scale` on either pair observes the query scale
    and whether the QK-norms are applied."""
    import torch

    scalar, why = _expected_query_scalar(spec)
    expected_scale = scalar ** -0.5
    s0 = obs["scores"].get(0)
    counts = _head_counts(obs)
    if s0 is None or counts is None:
        why_skip = "the attention scores were not observable (fused attention kernel)"
        return {"qk_norm": check("qk_norm", "skip", rules.qk_norm, None, why_skip),
                "query_scale": check("query_scale", "skip", round(expected_scale, 6), None, why_skip)}
    h, k, d, _ = counts
    diag = s0["diag"]  # [H, T]
    if cap:  # undo the soft cap: score = c * tanh(raw / c)
        diag = cap * torch.atanh((diag / cap).clamp(-1 + 1e-12, 1 - 1e-12))
    layouts = obs["layouts"]
    qkv = obs["qkv"]

    def fit(q_key: str, k_key: str) -> tuple[float, float] | None:
        if q_key not in qkv or k_key not in qkv:
            return None
        q = _heads(qkv[q_key].double(), layouts.get(q_key, "bt(hd)"), d)[0]  # [T, H, D]
        kk = _heads(qkv[k_key].double(), layouts.get(k_key, "bt(hd)"), d)[0]  # [T, K, D]
        if q.shape[1] != h or kk.shape[1] != k:
            return None
        kk = kk.repeat_interleave(h // k, dim=1)  # query head j reads K/V head j // (H / K)
        dots = (q * kk).sum(-1).T  # [H, T]
        denom = float((dots * dots).sum())
        if denom == 0:
            return None
        scale = float((diag * dots).sum()) / denom
        return scale, _max_rel(diag, scale * dots)

    raw = fit("q", "k")
    normed = fit("q_norm", "k_norm")
    tol = _tol(obs["dtype"])
    candidates = [(n, f) for n, f in (("normed", normed), ("raw", raw)) if f is not None]
    good = [(n, f) for n, f in candidates if f[1] <= tol]
    detail = ", ".join(f"{'q_norm/k_norm outputs' if n == 'normed' else 'projections'}: "
                       f"scale {f[0]:.6g}, residual {f[1]:.1e}" for n, f in candidates)
    where = f"block 0 score diagonals ({h} heads x {diag.shape[1]} positions) / (q . k)"
    if not good:
        return {"qk_norm": check("qk_norm", "warn", rules.qk_norm, None,
                                 f"{where}: explained by neither ({detail})"),
                "query_scale": check("query_scale", "warn", round(expected_scale, 6), None,
                                     f"{where}: no single scale fits ({detail})")}
    name, (scale, resid) = good[0]
    qk_norm = name == "normed"
    if qk_norm:
        qk_ev = f"{where}: fit by the q_norm/k_norm outputs (residual {resid:.1e})"
        if raw is not None:
            qk_ev += f", not by the raw projections ({raw[1]:.1e})"
    else:
        qk_ev = f"{where}: fit by the raw projections (residual {resid:.1e})"
        qk_ev += f", not by the q_norm/k_norm outputs ({normed[1]:.1e})" if normed else ", no q/k norm modules ran"
    qs_ok = abs(scale - expected_scale) <= tol * expected_scale
    qs_ev = (f"{where}: {scale:.6g} (residual {resid:.1e}); expected 1/sqrt({scalar:g}) = {expected_scale:.6g}, "
             f"{why}" + ("" if not cap else f"; soft cap {cap:g} undone first"))
    return {"qk_norm": check("qk_norm", "pass" if qk_norm == rules.qk_norm else "fail", rules.qk_norm, qk_norm,
                             qk_ev),
            "query_scale": check("query_scale", "pass" if qs_ok else "fail", round(expected_scale, 6),
                                 float(f"{scale:.6g}"), qs_ev)}


# ----------------------------------------------------------------------------- sliding window
def _sliding_window(spec: GemmaSpec, obs: dict[str, Any]) -> dict[str, Any]:
    expected = _expected_layers(spec)
    n, t = obs["num_layers"], obs["tokens"]
    scores = obs["scores"]
    missing = [i for i in range(n) if i not in scores]
    if missing:
        return check("sliding_window", "skip", expected, None,
                     f"no attention scores seen in layers {missing[:6]} (fused attention kernel)")
    keys = {i: max(scores[i]["keys_last"]) for i in range(n)}
    sliding = [i for i in range(n) if keys[i] < t]
    windows = sorted({keys[i] for i in sliding})
    observed = {"window": windows[0] if len(windows) == 1 else (windows or None),
                "sliding_layers": sliding, "global_layers": [i for i in range(n) if i not in sliding]}
    shown = ", ".join(f"{i}: {keys[i]}" for i in range(min(n, 12))) + (" ..." if n > 12 else "")
    evidence = f"keys attended by the last of {t} queries, per layer: {shown}"
    if expected["window"] is not None and expected["window"] >= t:
        from .parity import MAX_DEFAULT_TOKENS

        longer = (f"; the default sequence is not lengthened past {MAX_DEFAULT_TOKENS:,} tokens"
                  if expected["window"] + 8 > MAX_DEFAULT_TOKENS else "")
        return check("sliding_window", "warn", expected, observed,
                     evidence + f" (the sequence is not longer than the window {expected['window']}{longer})")
    return check("sliding_window", "pass" if observed == expected else "fail", expected, observed, evidence)


# ============================================================================= lint
def lint(ckpt: Checkpoint) -> list[dict[str, Any]]:
    """The config lint: `lint:<rule>` checks from the config, the tokenizer and the tensors."""
    out: list[dict[str, Any]] = []
    for rule in LINT_RULES:
        found = rule(ckpt)
        if found is not None:
            out.append(found)
    return out


def _text_config(ckpt: Checkpoint) -> dict[str, Any]:
    cfg = ckpt.config or {}
    if cfg.get("model_type") == "gemma3" and isinstance(cfg.get("text_config"), dict):
        return cfg["text_config"]
    return cfg


def _lint_exact_gelu(ckpt: Checkpoint) -> dict[str, Any] | None:
    if ckpt.format != "hf" or not ckpt.spec.is_gemma:
        return None
    text = _text_config(ckpt)
    read_key = "hidden_act" if ckpt.spec.family == "gemma" else "hidden_activation"
    values = {k: text.get(k) for k in ("hidden_act", "hidden_activation") if k in text}
    exact = [k for k, v in values.items() if v == "gelu"]
    shown = ", ".join(f"{k} = {v!r}" for k, v in values.items()) or "no activation key"
    if not exact:
        return check("lint:exact_gelu", "pass", "gelu_pytorch_tanh", shown, "no exact 'gelu' in the config")
    if read_key in exact and ckpt.spec.family != "gemma":
        return check("lint:exact_gelu", "fail", "gelu_pytorch_tanh", shown,
                     f"{read_key} = 'gelu' is the exact erf GELU to transformers and every other runtime; Gemma "
                     f"was trained with the tanh approximation (write gelu_pytorch_tanh)")
    if read_key in exact:
        return check("lint:exact_gelu", "warn", "gelu_pytorch_tanh", shown,
                     "hidden_act = 'gelu' is the Gemma 1 release value: transformers reads it as "
                     "gelu_pytorch_tanh, runtimes that take the name literally run the exact erf GELU "
                     "(write gelu_pytorch_tanh)")
    return check("lint:exact_gelu", "warn", "gelu_pytorch_tanh", shown,
                 f"{exact[0]} = 'gelu' is not the key transformers reads for {ckpt.spec.family} ({read_key}), "
                 f"but other runtimes may read it as the exact erf GELU")


def _lint_activation_key(ckpt: Checkpoint) -> dict[str, Any] | None:
    if ckpt.format != "hf" or not ckpt.spec.is_gemma:
        return None
    text = _text_config(ckpt)
    key = "hidden_act" if ckpt.spec.family == "gemma" else "hidden_activation"
    other = "hidden_activation" if key == "hidden_act" else "hidden_act"
    if key in text:
        return check("lint:activation_key", "pass", key, key, f"{key} = {text[key]!r}")
    if other in text:
        return check("lint:activation_key", "warn", key, other,
                     f"{key} is missing: transformers uses its default (gelu_pytorch_tanh) and ignores "
                     f"{other} = {text[other]!r}, which other runtimes read")
    return check("lint:activation_key", "warn", key, None,
                 "no activation key (hidden_act / hidden_activation): every runtime falls back to its own default")


def _lint_tied_lm_head(ckpt: Checkpoint) -> dict[str, Any] | None:
    if not ckpt.spec.is_gemma or "model.embed_tokens.weight" not in ckpt.tensors:
        return None
    tie = ckpt.spec.tied_embeddings
    flag = "tied" if tie else "untied"
    stored = _stored_lm_head(ckpt)
    if stored is None:
        return check("lint:tied_lm_head", "pass", "tied, no lm_head.weight", f"{flag}, no lm_head.weight",
                     "the output projection is the embedding")
    diff, where = stored
    observed = f"{flag}, lm_head.weight {'equal to' if diff == 0 else 'different from'} the embedding"
    if tie and diff:
        return check("lint:tied_lm_head", "fail", "tied, no lm_head.weight", observed,
                     f"{where} differs from the embedding (max |W - E| = {diff:.3g}) but the config ties them "
                     f"(tie_word_embeddings): "
                     f"which matrix the logits use depends on the runtime (transformers 5 uses the stored one, "
                     f"this tool's readers the embedding)")
    if tie:
        return check("lint:tied_lm_head", "pass", "tied, no lm_head.weight", observed,
                     f"{where} is a redundant copy of the embedding")
    if diff == 0:
        return check("lint:tied_lm_head", "warn", "tied, no lm_head.weight", observed,
                     f"{flag} with an output matrix identical to the embedding: "
                     f"{ckpt.tensor('embed').numel:,} redundant parameters (Gemma ties them)")
    return check("lint:tied_lm_head", "warn", "tied, no lm_head.weight", observed,
                 f"an untied output matrix (max |W - E| = {diff:.3g}): Gemma ties its output to the embedding")


def _lint_norm_weights(ckpt: Checkpoint) -> dict[str, Any] | None:
    import numpy as np

    if not ckpt.spec.is_gemma or ckpt.spec.norm_offset != 1:
        return None
    means = []
    for name, ref in ckpt.tensors.items():
        parsed = parse_canonical(name)
        if parsed and parsed[0] in NORM_ROLES:
            means.append(float(np.asarray(ref.load(), dtype=np.float64).mean()))
    if not means:
        return None
    lo, hi = min(means), max(means)
    near_one = sum(abs(m - 1) <= NEAR_ONE for m in means)
    near_minus = sum(abs(m + 1) <= NEAR_ONE for m in means)
    observed = f"means {lo:.3f}..{hi:.3f} over {len(means)} norm weights"
    expected = "stored without the +1 (the layer adds 1)"
    if near_one == len(means):
        return check("lint:norm_weights", "fail", expected, observed,
                     "every norm weight has a mean near 1: the (1 + w) offset is baked into the stored weights "
                     "and the layer adds 1 again (typical of a GGUF import that did not subtract 1)")
    if near_minus == len(means):
        return check("lint:norm_weights", "fail", expected, observed,
                     "every norm weight has a mean near -1: the offset was subtracted twice (stored as w - 1)")
    if near_one > len(means) / 2:
        return check("lint:norm_weights", "warn", expected, observed,
                     f"{near_one} of {len(means)} norm weights have a mean near 1: possibly (1 + w) stored")
    return check("lint:norm_weights", "pass", expected, observed,
                 f"{near_one} of {len(means)} means near 1 (within {NEAR_ONE:g}): trained norm weights spread "
                 f"widely and some land near 1 by chance; a baked-in +1 moves all or most of them there")


def _lint_softcaps(ckpt: Checkpoint) -> dict[str, Any] | None:
    spec = ckpt.spec
    if spec.family != "gemma2":
        return None
    rules = FAMILY_RULES["gemma2"]
    expected = {"attention": rules.attention_logit_softcap, "final": rules.final_logit_softcap}
    observed = {"attention": spec.attention_logit_softcap, "final": spec.final_logit_softcap}
    assumed = [f for f in ("attention_logit_softcap", "final_logit_softcap") if f in ckpt.assumed]
    if assumed:
        return check("lint:softcaps", "skip", expected, observed, f"{', '.join(assumed)} not stored in this format")
    wrong = [f"{k} cap {('missing' if observed[k] is None else f'{observed[k]:g}')}" for k in expected
             if observed[k] != expected[k]]
    if wrong:
        return check("lint:softcaps", "fail", expected, observed,
                     f"{'; '.join(wrong)}: Gemma 2 caps attention logits at 50 and final logits at 30 "
                     f"(attn_logit_softcapping / final_logit_softcapping); without them outputs differ")
    return check("lint:softcaps", "pass", expected, observed, "attention 50, final 30")


def _lint_query_pre_attn_scalar(ckpt: Checkpoint) -> dict[str, Any] | None:
    spec = ckpt.spec
    if spec.family not in ("gemma2", "gemma3"):
        return None
    declared = spec.query_pre_attn_scalar
    if "query_pre_attn_scalar" in ckpt.assumed:
        return check("lint:query_pre_attn_scalar", "skip", None, declared,
                     "not stored in this format; the reader inferred it")
    c = _card_of_shape(spec)
    if c is not None:
        ok = declared == c.query_pre_attn_scalar
        return check("lint:query_pre_attn_scalar", "pass" if ok else "fail", c.query_pre_attn_scalar, declared,
                     f"the published {c.name} has this shape and query_pre_attn_scalar {c.query_pre_attn_scalar:g}"
                     + ("" if ok else f"; this config says {declared:g}, so every attention score is scaled wrong"))
    usual = {float(spec.head_dim), spec.hidden_size / spec.num_attention_heads}
    ok = float(declared) in usual
    return check("lint:query_pre_attn_scalar", "pass" if ok else "warn", sorted(usual), declared,
                 "no published card of this shape; Gemma uses head_dim or hidden_size / heads"
                 + ("" if ok else f", not {declared:g}"))


def _lint_rope_scaling(ckpt: Checkpoint) -> dict[str, Any] | None:
    spec = ckpt.spec
    if spec.family != "gemma3":
        return None
    c = _card_of_shape(spec)
    if c is not None:
        want, why = c.rope_scaling_factor, f"the published {c.name}"
    elif spec.hidden_size >= 2560:
        want, why = 8.0, "Gemma 3 4B and larger (hidden size >= 2560)"
    else:
        return check("lint:rope_scaling", "pass", "no published card of this shape", spec.rope_scaling_factor,
                     f"no published card of this shape; global RoPE scaled x{spec.rope_scaling_factor:g}")
    ok = spec.rope_scaling_factor == want
    return check("lint:rope_scaling", "pass" if ok else "fail", want, spec.rope_scaling_factor,
                 f"{why} scales global-layer RoPE linearly by {want:g}" +
                 ("" if ok else f"; this config says {spec.rope_scaling_factor:g} (long contexts degrade)"))


def _lint_vocab_size(ckpt: Checkpoint) -> dict[str, Any] | None:
    if ckpt.tokenizer is None:
        return check("lint:vocab_size", "skip", None, ckpt.spec.vocab_size, "no tokenizer")
    tv, rows = ckpt.tokenizer.vocab_size, ckpt.spec.vocab_size
    if rows < tv:
        return check("lint:vocab_size", "fail", f">= {tv}", rows,
                     f"{rows} embedding rows for a tokenizer of {tv} tokens: ids {rows}..{tv - 1} have no row")
    return check("lint:vocab_size", "pass", f">= {tv}", rows, f"{rows} embedding rows, tokenizer {tv} tokens")


def _lint_special_ids(ckpt: Checkpoint) -> dict[str, Any] | None:
    if ckpt.tokenizer is None:
        return check("lint:special_ids", "skip", None, None, "no tokenizer")
    spec = ckpt.spec
    fields = {"bos_token_id": "<bos>", "eos_token_id": "<eos>", "pad_token_id": "<pad>"}
    expected, observed, bad = {}, {}, []
    for f, piece in fields.items():
        if f in ckpt.assumed:
            continue
        want = ckpt.tokenizer.token_to_id(piece)
        expected[f], observed[f] = want, getattr(spec, f)
        if want is not None and want != getattr(spec, f):
            bad.append(f"{f} = {getattr(spec, f)} but the vocabulary has {piece} at {want}")
    if not expected:
        return check("lint:special_ids", "skip", None, None, "this format does not store the special ids")
    if bad:
        return check("lint:special_ids", "fail", expected, observed, "; ".join(bad))
    return check("lint:special_ids", "pass", expected, observed, "the config's ids are the vocabulary's")


def _lint_end_of_turn(ckpt: Checkpoint) -> dict[str, Any] | None:
    if ckpt.format != "hf":
        return None
    if ckpt.tokenizer is None:
        return check("lint:end_of_turn", "skip", None, None, "no tokenizer")
    eot = ckpt.tokenizer.token_to_id("<end_of_turn>")
    if eot is None:
        return check("lint:end_of_turn", "skip", None, None, "the vocabulary has no <end_of_turn>")
    path = os.path.join(ckpt.source, "generation_config.json")
    if not os.path.isfile(path):
        return check("lint:end_of_turn", "warn", f"eos ids include {eot}", None,
                     "no generation_config.json: generation stops wherever the runtime's default says")
    from .formats.common import read_json_object

    eos = read_json_object(path, "generation_config.json").get("eos_token_id")
    if eos is None:
        return check("lint:end_of_turn", "warn", f"eos ids include {eot}", None,
                     "generation_config.json has no eos_token_id: generation stops wherever the runtime's "
                     "default says")
    ids = eos if isinstance(eos, list) else [eos]
    if eot in ids:
        return check("lint:end_of_turn", "pass", f"eos ids include {eot}", ids, "<end_of_turn> stops generation")
    return check("lint:end_of_turn", "warn", f"eos ids include {eot}", ids,
                 f"generation_config.json eos_token_id {ids} lacks <end_of_turn> ({eot}): chat generation runs "
                 f"past the end of its turn (fine for a base model)")


def _lint_float16(ckpt: Checkpoint) -> dict[str, Any] | None:
    spec = ckpt.spec
    if spec.family not in ("gemma2", "gemma3"):
        return None
    if spec.dtype == "float16":
        return check("lint:float16", "warn", "bfloat16 or float32", "float16",
                     f"{spec.title} activations overflow float16 (inf/NaN in the residual stream): run it in "
                     f"bfloat16 or float32")
    return check("lint:float16", "pass", "bfloat16 or float32", spec.dtype, f"declared dtype {spec.dtype}")


def _lint_nonfinite(ckpt: Checkpoint) -> dict[str, Any] | None:
    """NaN or infinite weights: the file is fine, the model is not (every logit downstream becomes NaN)."""
    from .scan import describe, nonfinite

    if ckpt.is_card:
        return None
    found = nonfinite(ckpt)
    if not found:
        return check("lint:nonfinite", "pass", "finite weights", "finite weights",
                     f"all {len(ckpt.tensors)} tensors read: no NaN or infinite values")
    observed = {f["name"]: {"nan": f["nan"], "inf": f["inf"]} for f in found}
    return check("lint:nonfinite", "fail", "finite weights", observed, describe(found, ckpt.source))


LINT_RULES: list[Callable[[Checkpoint], dict[str, Any] | None]] = [
    _lint_exact_gelu, _lint_activation_key, _lint_tied_lm_head, _lint_norm_weights, _lint_softcaps,
    _lint_query_pre_attn_scalar, _lint_rope_scaling, _lint_vocab_size, _lint_special_ids, _lint_end_of_turn,
    _lint_float16, _lint_nonfinite,
]

__all__ = ["verify", "lint", "observe", "architecture_checks", "block_branches", "placement_of", "CHECK_NAMES",
           "run_dtype"]
