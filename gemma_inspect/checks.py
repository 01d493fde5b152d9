"""The architecture checks of `verify`: a registry of small functions, each registered under its check name, each
reading an `Observation` (observation.py) and the family row's rules (families.py) and returning one check record
(findings.py).

Each check reports `expected` (the family row's rules; for what depends on the size, the published card of the
same shape, else the checkpoint's own declaration), `observed`, a short `evidence` string with the numbers, and a
status: pass, fail, warn (ambiguous rather than wrong) or skip (not observable with this runtime).

A check is `fn(ctx) -> record` registered with `@register("name")`; the registry's order is the order `verify`
prints them in. What several checks share (the soft caps, the fit of the score diagonals) is computed once on
the `Context`.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

from .families import FAMILY_TABLE, FULL, SLIDING, Family
from .findings import Record, check, published_card
from .lint import NEAR_ONE, stored_lm_head
from .observation import GRID, PROBE_SCALE, Observation
from .spec import GemmaSpec, round_to_dtype

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoint import Checkpoint


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


class Context:
    """What a check reads: the checkpoint, its family row and the observation; shared derivations cached."""

    def __init__(self, ckpt: "Checkpoint", row: Family, obs: Observation):
        self.ckpt, self.spec, self.row, self.rules, self.obs = ckpt, ckpt.spec, row, row.rules, obs

    @cached_property
    def softcaps(self) -> dict[str, Any]:
        return _softcaps(self.rules, self.obs)

    @cached_property
    def qk(self) -> dict[str, Record]:
        return _query_scale_and_qk_norm(self, self.softcaps["attention"])


CheckFn = Callable[[Context], Record]
CHECKS: dict[str, CheckFn] = {}
# Checks of what only some families have (Gemma 3n's AltUp, LAuReL, activation sparsity: checks_gemma3n.py, which
# verify.py imports): run after the common ones for the families whose row names them (`Family.checks`).
FAMILY_CHECKS: dict[str, CheckFn] = {}


def register(name: str, family_only: bool = False) -> Callable[[CheckFn], CheckFn]:
    """Register `fn(ctx) -> record` as the check `name` (after the ones registered before it); `family_only`: run
    only for the families whose row lists it."""
    table = FAMILY_CHECKS if family_only else CHECKS

    def wrap(fn: CheckFn) -> CheckFn:
        assert name not in CHECKS and name not in FAMILY_CHECKS, name
        table[name] = fn
        return fn
    return wrap


def architecture_checks(ckpt: "Checkpoint", obs: Observation) -> list[Record]:
    """Every registered check's record, in the registry's order, then the family row's own checks."""
    row = FAMILY_TABLE.get(ckpt.spec.family)
    if row is None:  # nothing to compare against
        return [check(n, "skip", None, None, f"no family rules for {ckpt.spec.family}") for n in CHECKS]
    ctx = Context(ckpt, row, obs)
    return [fn(ctx) for fn in CHECKS.values()] + [FAMILY_CHECKS[n](ctx) for n in row.checks]


# ============================================================================= expectations
def expected_query_scalar(spec: GemmaSpec) -> tuple[float, str]:
    row = FAMILY_TABLE[spec.family]
    if row.rules.query_scalar == "head_dim":
        return float(spec.head_dim), f"{row.title} scales queries by head_dim^-0.5"
    c = published_card(spec)
    if c is not None:
        return float(c.query_pre_attn_scalar), f"the published {c.name} scales queries by query_pre_attn_scalar^-0.5"
    return float(spec.query_pre_attn_scalar), "query_pre_attn_scalar^-0.5 as declared (no published card of this shape)"


def expected_layers(spec: GemmaSpec) -> dict[str, Any]:
    c = published_card(spec)  # a published layout (VaultGemma 1B: every layer global) over the family's pattern
    row = FAMILY_TABLE[spec.family]
    # A family whose config reads its geometry per layer (Gemma 4: each release has its own sliding:full ratio, 4:1
    # on E2B, 5:1 on the others) is held to the layer types its config lists, not to one pattern.
    per_layer = row.hf is not None and row.hf.layer_geometry
    types = c.layer_types if c is not None else spec.layer_types if per_layer else row.layer_types(spec.num_layers)
    window = None
    if SLIDING in types:
        window = c.sliding_window if c is not None else spec.sliding_window
    return {"window": window, "sliding_layers": [i for i, t in enumerate(types) if t == SLIDING],
            "global_layers": [i for i, t in enumerate(types) if t == FULL]}


def _tol(dtype: str) -> float:
    return 1e-4 if dtype == "float32" else 3e-2


def _g(x: float | None, digits: int = 6) -> str:
    return "none" if x is None else f"{x:.{digits}g}"


def _max_rel(a: Any, b: Any) -> float:
    scale = max(float(a.abs().max()), 1e-30)
    return float((a - b).abs().max()) / scale


# ============================================================================= norm placement
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
        if not (post and post.get("role") == "norm" and exit_ is not None and
                (post.get("input") == exit_["output"] or _merged_into(producers, post, exit_))):
            post = None
        direct = exit_ is not None and r["branch"] == exit_["output"]
        mods = [n["name"] for n in segment if n["kind"] == "module"]  # an unknown branch is named by these
        branches.append({"kind": kind, "pre": pre["name"] if pre else None, "post": post["name"] if post else None,
                         "module": exit_["name"] if exit_ and exit_ is entry else f"{entry['name']} .. {exit_['name']}"
                         if entry and exit_ else " .. ".join(dict.fromkeys([*mods[:1], *mods[-1:]])) or None,
                         "stream": r["stream"], "output": r["output"], "resolved": bool(post or direct)})
    return branches


def _merged_into(producers: dict[str, Any], post: dict[str, Any], exit_: dict[str, Any]) -> bool:
    """Whether `post` norms a sum one of whose terms is a norm of `exit_`'s output: Gemma 4's mixture of experts
    norms the MLP's output and the experts' apart, adds them, and the feed-forward's post norm reads that sum."""
    summed = producers.get(post.get("input"))
    if not summed or summed.get("kind") != "op" or summed.get("name") != "add":
        return False
    terms = [producers.get(x) for x in summed.get("inputs", [])]
    return any(t and t.get("role") == "norm" and t.get("input") == exit_["output"] for t in terms)


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


@register("norm_placement")
def norm_placement(ctx: Context) -> Record:
    rules, graph = ctx.rules, ctx.obs.graph
    if ctx.obs.block_values is not None:  # AltUp streams and LAuReL: the residual structure is read from values
        return _placement_from_values(ctx)
    every = block_branches(graph)
    # Gemma 4's per-layer-input residual (no pre norm, a post norm) is a third branch: the placement is the
    # attention's and the feed-forward's
    branches = [b for b in every if b["kind"] != "unknown"] if len(every) > 2 else every
    observed = placement_of(branches)
    parts = []
    for b in every:
        chain = [b["pre"], b["module"], b["post"]]
        parts.append(f"{'other branch' if b['kind'] == 'unknown' else b['kind']}: " + " -> ".join(c for c in chain if c)
                     + f" -> + {b['stream']}")
    evidence = f"{graph['block']} ({graph['class']}): " + "; ".join(parts) if parts else \
        f"{graph['block']}: no residual addition seen"
    kinds = sorted(b["kind"] for b in branches)
    if kinds != ["attention", "feed-forward"] or not all(b["resolved"] for b in branches):
        return check("norm_placement", "warn", rules.norm_placement, observed,
                     evidence + " (the block's structure was not fully resolved)")
    return check("norm_placement", "pass" if observed == rules.norm_placement else "fail",
                 rules.norm_placement, observed, evidence)


def _placement_from_values(ctx: Context) -> Record:
    """Gemma 3n's block mixes streams and averages residuals, which the call graph does not resolve into two
    branches; its values show the chain directly: does attention read a norm's output, and does a norm read
    attention's output (likewise for the MLP)?"""
    bv, tol = ctx.obs.block_values, _tol(ctx.obs.dtype)
    i, o = bv.inputs, bv.outputs
    links = {"attention pre": ("attention", "attn_norm"), "attention post": ("post_attn_norm", "attention"),
             "mlp pre": ("mlp", "ffn_norm"), "mlp post": ("post_ffn_norm", "mlp")}
    err = {k: _max_rel(i[a], o[b]) if i.get(a) is not None and o.get(b) is not None else float("inf")
           for k, (a, b) in links.items()}
    pre = err["attention pre"] <= tol and err["mlp pre"] <= tol
    post = err["attention post"] <= tol and err["mlp post"] <= tol
    observed = "pre+post" if pre and post else "pre" if pre else "post" if post else "none"
    evidence = ("block 0 (AltUp streams): input_layernorm -> self_attn -> post_attention_layernorm, "
                "pre_feedforward_layernorm -> mlp -> post_feedforward_layernorm; each module's input against the "
                "previous one's output: " + ", ".join(f"{k} {v:.1e}" for k, v in err.items()))
    return check("norm_placement", "pass" if observed == ctx.rules.norm_placement else "fail",
                 ctx.rules.norm_placement, observed, evidence)


# ============================================================================= norm offset
@register("norm_offset")
def norm_offset(ctx: Context) -> Record:
    import torch

    rules, obs = ctx.rules, ctx.obs
    tol = 3 * _tol(obs.dtype)
    probes = obs.norms
    if not probes:
        return check("norm_offset", "skip", rules.norm_offset, None, "no norm module with a weight found")
    fits, constant = [], []
    for p in probes:
        r, w = p.ratio, p.w
        if float(w.std()) < 1e-6:  # constant weights: y / x = a + b * w0 cannot separate a from b
            if abs(float(w.mean())) < 1e-6:
                fits.append((p.name, float(r.mean()), None, float((r - r.mean()).abs().max())))
            else:
                constant.append(p.name)
            continue
        design = torch.stack([torch.ones_like(w), w], dim=1)
        a, b = torch.linalg.lstsq(design, r.unsqueeze(1)).solution.squeeze(1).tolist()
        resid = float((r - (a + b * w)).abs().max())
        fits.append((p.name, a, b, resid))
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
    means = obs.norm_means
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


# ============================================================================= embedding scale
@register("embedding_scale")
def embedding_scale(ctx: Context) -> Record:
    import torch

    emb, dtype, scales = ctx.obs.embedding, ctx.obs.dtype, ctx.rules.scale_embeddings
    e, x, d = emb.rows, emb.x, emb.d
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
    expected = rounded if scales else 1.0
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
    if not scales:
        ok = abs(ratio - 1) <= _tol(dtype)
    else:
        ok = as_rounded or (dtype == "float32" and abs(ratio - rounded) <= 1e-6 * rounded)
    return check("embedding_scale", "pass" if ok else "fail", expected, observed, evidence)


# ============================================================================= tied embeddings
@register("tied_embeddings")
def tied_embeddings(ctx: Context) -> Record:
    rules, t, cap = ctx.rules, ctx.obs.tied, ctx.softcaps["final"]
    if t is None:
        return check("tied_embeddings", "skip" if not rules.lm_head else "fail", rules.tied_embeddings, None,
                     "the model computes no logits (no LM head): its token states are the output")
    logits = t.logits
    capped = (lambda z: cap * (z / cap).tanh()) if cap else (lambda z: z)
    err_tied = _max_rel(logits, capped(t.via_embedding))
    err_out = _max_rel(logits, capped(t.via_output)) if t.via_output is not None else None
    tol = _tol(ctx.obs.dtype)
    form = f"c * tanh(h @ E^T / c), c = {cap:g}" if cap else "h @ E^T"
    if err_tied <= tol:
        observed: bool | None = True
        evidence = f"logits = {form} to {err_tied:.1e} (h: the final norm's output, E: the embedding)"
        if t.shares_storage:
            evidence += "; the output projection shares the embedding's storage"
    elif err_out is not None and err_out <= tol:
        observed = False
        evidence = (f"logits = the output matrix's projection to {err_out:.1e}, not {form} "
                    f"({err_tied:.1e}): a separate output matrix")
    else:
        observed = None
        evidence = f"logits match neither {form} ({err_tied:.1e}) nor a separate output matrix"
    stored = stored_lm_head(ctx.ckpt)
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


# ============================================================================= activation
def expected_sparsity(spec: GemmaSpec) -> list[float]:
    """Per layer, the activation sparsity target of the published card of this shape, else the declared one."""
    source = published_card(spec) or spec
    return [source.layer_sparsity(i) for i in range(spec.num_layers)]


@register("activation")
def activation(ctx: Context) -> Record:
    rules, act, dtype = ctx.rules, ctx.obs.activation, ctx.obs.dtype
    where = ""
    sparsity = expected_sparsity(ctx.spec)
    if sparsity and sparsity[0] > 0:  # block 0's gate is sparsified first (Gemma 3n): probe the first dense block
        dense = [i for i in sorted(ctx.obs.layer_activations) if sparsity[i] == 0]
        act = ctx.obs.layer_activations[dense[0]] if dense else None
        where = f" (block {dense[0]}, the first without activation sparsity)" if dense else ""
        if act is None:
            return check("activation", "skip", rules.activation, None,
                         "every block sparsifies its gate: see activation_sparsity")
    if act is None:
        return check("activation", "skip", rules.activation, None, "no gate/up/down projections found to probe")
    x, y = act.x, act.y
    # Relative error per point (|f| floored at 1e-3, where both GELUs vanish): the tanh and erf GELUs
    # differ by up to 21% around x = -3, far more than bfloat16's 0.4% rounding.
    errors = {name: float(((y - f(x)).abs() / f(x).abs().clamp(min=1e-3)).max()) for name, f in ACTIVATIONS.items()}
    ranked = sorted(errors, key=errors.get)  # type: ignore[arg-type]
    best, second = ranked[0], ranked[1]
    tol = 1e-3 if dtype == "float32" else 2e-2
    evidence = (f"gate output{where} replaced by {x.numel()} values in [{GRID[0]:g}, {GRID[1]:g}], up by ones; the "
                f"down projection received act(x) with relative error " +
                ", ".join(f"{n} {errors[n]:.1e}" for n in ranked[:3]))
    if errors[best] > tol:
        return check("activation", "fail", rules.activation, "other", evidence + ": none of them")
    if errors[second] <= tol:
        return check("activation", "warn", rules.activation, best,
                     evidence + f": {best} and {second} cannot be told apart in {dtype}")
    return check("activation", "pass" if best == rules.activation else "fail", rules.activation, best, evidence)


# ============================================================================= attention kind
def _heads(t: Any, layout: str, head_dim: int) -> Any:
    """A q/k/v output as [B, T, heads, D] whatever the runtime's layout."""
    if layout == "bthd":
        return t
    if layout == "bhtd":
        return t.transpose(1, 2)
    return t.reshape(t.shape[0], t.shape[1], -1, head_dim)


def _head_counts(obs: Observation) -> tuple[int, int, int, str] | None:
    """(H, K, D, how) from the block 0 projections' output shapes and the number of score maps."""
    q, k = obs.qkv.get("q"), obs.qkv.get("k")
    if q is None or k is None:
        return None
    per_token = lambda t: int(t[0, 0].numel())  # noqa: E731
    layout = obs.layouts.get("q", "bt(hd)")
    s0 = obs.scores.get(0)
    if s0 is not None:
        h, how = s0.heads, f"{s0.heads} score maps in the softmax"
    elif layout == "bthd":
        h, how = int(q.shape[2]), "the query projection's head axis"
    elif obs.head_dim:
        h, how = per_token(q) // obs.head_dim, f"the runtime's head_dim {obs.head_dim}"
    else:
        return None
    d = per_token(q) // h
    return h, per_token(k) // d, d, how


@register("attention_kind")
def attention_kind(ctx: Context) -> Record:
    spec, obs = ctx.spec, ctx.obs
    counts = _head_counts(obs)
    expected = spec.attention_kind
    if counts is None:
        return check("attention_kind", "skip", expected, None, "the q/k projections of block 0 were not seen")
    h, k, d, how = counts
    v = obs.qkv.get("v")
    kv_v = int(v[0, 0].numel()) // d if v is not None else None
    kind = "MQA" if k == 1 and h > 1 else ("MHA" if k == h else "GQA")
    evidence = (f"block 0: q {h * d} = {h} x {d} per token ({h} query heads from {how}), k {k * d} = {k} x {d}"
                + (f", v {kv_v * d} = {kv_v} x {d}" if kv_v is not None else "")
                + f"; declared: {spec.num_attention_heads} query heads, {spec.num_key_value_heads} K/V heads")
    ok = kind == expected and (h, k) == (spec.num_attention_heads, spec.num_key_value_heads) and kv_v in (None, k)
    return check("attention_kind", "pass" if ok else "fail", expected, kind, evidence)


# ============================================================================= soft caps
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


def _softcaps(rules: Any, obs: Observation) -> dict[str, Any]:
    """Both soft caps: the observed cap values ("final", "attention") and their records."""
    out: dict[str, Any] = {}
    s0 = obs.scores.get(0)
    for key, title, expected, before, after, what in (
            ("final", "logit_softcap", rules.final_logit_softcap, obs.logits_max, obs.logits_probe_max,
             "the final hidden state"),
            ("attention", "attention_softcap", rules.attention_logit_softcap,
             s0.max_abs if s0 is not None else None, obs.attention_probe_max, "block 0's queries")):
        if before is None:
            out[key] = None
            out[f"{key}_check"] = check(title, "skip", expected, None,
                                        "the attention scores were not observable (fused attention kernel)"
                                        if key == "attention" else "the model computes no logits (no LM head)")
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


@register("logit_softcap")
def logit_softcap(ctx: Context) -> Record:
    return ctx.softcaps["final_check"]


@register("attention_softcap")
def attention_softcap(ctx: Context) -> Record:
    return ctx.softcaps["attention_check"]


# ============================================================================= query scale and QK-norm
def _query_scale_and_qk_norm(ctx: Context, cap: float | None) -> dict[str, Record]:
    """On the diagonal of the score matrix, query t meets key t: both carry the same RoPE rotation, which
    preserves their dot product, so score[h, t] = scale * (q_t . k_t) with q, k as they leave the
    projections (or the QK-norms, when those run). Fitting `scale` on either pair observes the query scale
    and whether the QK-norms are applied."""
    import torch

    rules, obs = ctx.rules, ctx.obs
    scalar, why = expected_query_scalar(ctx.spec)
    expected_scale = scalar ** -0.5
    s0 = obs.scores.get(0)
    counts = _head_counts(obs)
    if s0 is None or counts is None:
        why_skip = "the attention scores were not observable (fused attention kernel)"
        return {"qk_norm": check("qk_norm", "skip", rules.qk_norm, None, why_skip),
                "query_scale": check("query_scale", "skip", round(expected_scale, 6), None, why_skip)}
    h, k, d, _ = counts
    diag = s0.diag  # [H, T]
    if cap:  # undo the soft cap: score = c * tanh(raw / c)
        diag = cap * torch.atanh((diag / cap).clamp(-1 + 1e-12, 1 - 1e-12))
    layouts, qkv = obs.layouts, obs.qkv

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
    tol = _tol(obs.dtype)
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


@register("qk_norm")
def qk_norm(ctx: Context) -> Record:
    return ctx.qk["qk_norm"]


# ============================================================================= sliding window
@register("sliding_window")
def sliding_window(ctx: Context) -> Record:
    from .parity import MAX_DEFAULT_TOKENS

    expected = expected_layers(ctx.spec)
    n, t, scores = ctx.obs.num_layers, ctx.obs.tokens, ctx.obs.scores
    missing = [i for i in range(n) if i not in scores]
    if missing:
        return check("sliding_window", "skip", expected, None,
                     f"no attention scores seen in layers {missing[:6]} (fused attention kernel)")
    keys = {i: max(scores[i].keys_last) for i in range(n)}
    sliding = [i for i in range(n) if keys[i] < t]
    # bidirectional: the last query sees itself and window // 2 before it, which the stored window 2 (k - 1) gives
    two_sided = ctx.rules.attention_mask == "bidirectional"
    windows = sorted({2 * (keys[i] - 1) if two_sided else keys[i] for i in sliding})
    observed = {"window": windows[0] if len(windows) == 1 else (windows or None),
                "sliding_layers": sliding, "global_layers": [i for i in range(n) if i not in sliding]}
    shown = ", ".join(f"{i}: {keys[i]}" for i in range(min(n, 12))) + (" ..." if n > 12 else "")
    evidence = f"keys attended by the last of {t} queries, per layer: {shown}"
    if two_sided:
        evidence += " (bidirectional: the stored window is 2 x (keys - 1), window // 2 on either side)"
    if expected["window"] is not None and (expected["window"] // 2 + 1 if two_sided else expected["window"]) >= t:
        longer = (f"; the default sequence is not lengthened past {MAX_DEFAULT_TOKENS:,} tokens"
                  if expected["window"] + 8 > MAX_DEFAULT_TOKENS else "")
        return check("sliding_window", "warn", expected, observed,
                     evidence + f" (the sequence is not longer than the window {expected['window']}{longer})")
    return check("sliding_window", "pass" if observed == expected else "fail", expected, observed, evidence)


@register("query_scale")
def query_scale(ctx: Context) -> Record:
    return ctx.qk["query_scale"]


# ============================================================================= attention mask and embedding head
@register("attention_mask")
def attention_mask(ctx: Context) -> Record:
    expected, m = ctx.rules.attention_mask, ctx.obs.mask
    if m is None or ctx.obs.tokens < 2:
        return check("attention_mask", "skip", expected, None, "not observed (a single token)")
    rel = m.changed / m.scale if m.scale else m.changed
    observed = "bidirectional" if rel > 1e-4 else "causal" if rel <= 1e-6 else None
    evidence = (f"changing the last of {ctx.obs.tokens} tokens moved the first token's final state by "
                f"{m.changed:.3g} ({rel:.2g} of its scale)")
    if m.first_query_sees_later is not None:
        evidence += f"; block 0's first query attends to {'later keys' if m.first_query_sees_later else 'no later key'}"
        if observed is not None and m.first_query_sees_later != (observed == "bidirectional"):
            observed = None
    status = "pass" if observed == expected else "warn" if observed is None else "fail"
    return check("attention_mask", status, expected, observed, evidence)


def _head_form(head: Any, dimension: int | None = None) -> dict[str, Any]:
    return {"pooling": head.pooling, "dense": [[d.in_features, d.out_features, d.activation, d.bias] for d in head.dense],
            "normalize": head.normalize, "output_dimension": head.output_dimension if dimension is None else dimension}


@register("embedding_head")
def embedding_head(ctx: Context) -> Record:
    """An embedding model's modules after the transformer: the published card's (or, without a card of this shape,
    the checkpoint's declaration) against the declared modules run on the observed final states."""
    from .runtimes.pooling import load_dense, sentence_embedding
    from .spec import card_head

    head = ctx.ckpt.embedding_head
    if head is None:
        if ctx.rules.lm_head:
            return check("embedding_head", "skip", None, None, "a language model: no pooling or dense heads")
        return check("embedding_head", "warn", "pooling modules", None,
                     "no LM head and no sentence-transformers modules (modules.json): the token states are the output")
    c = published_card(ctx.spec)
    published = card_head(c.name) if c is not None else None
    expected = _head_form(published or head)
    if ctx.obs.final is None:
        return check("embedding_head", "skip", expected, None, "the final states were not observed")
    e = sentence_embedding(head, load_dense(ctx.ckpt), ctx.obs.final[None])[0]
    norm = float(e.norm())
    observed = _head_form(head, int(e.shape[-1]))
    normalized = abs(norm - 1) <= 1e-6
    evidence = (f"{' -> '.join(head.modules)}: the final norm's states of {ctx.obs.tokens} tokens, pooled "
                f"({head.pooling}) and through {len(head.dense)} dense layer(s), give {int(e.shape[-1])} values of "
                f"L2 norm {norm:.6f}; expected: " + (f"the published {c.name}" if published else "as declared"))
    ok = observed == expected and normalized == head.normalize
    return check("embedding_head", "pass" if ok else "fail", expected, observed, evidence)


CHECK_NAMES = tuple(CHECKS)

__all__ = ["CHECKS", "FAMILY_CHECKS", "CHECK_NAMES", "Context", "register", "architecture_checks", "block_branches", "placement_of",
           "expected_query_scalar", "expected_layers", "ACTIVATIONS"]
