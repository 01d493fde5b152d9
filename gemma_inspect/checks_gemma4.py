"""verify's checks of what only Gemma 4 has: layer scalars, per-layer inputs, KV sharing, K=V, proportional RoPE and
the experts' routing.

Registered in checks.py's FAMILY_CHECKS (run for the families whose row lists them, after the common ones: the norm
offset, the final soft cap, the window... apply to Gemma 4 unchanged); verify.py imports this module. `observe_gemma4`
runs one forward pass of its own over the loaded model (either runtime: the reference runtime's modules carry
transformers' names) and keeps, per block, what its modules received and returned; each check recomputes Gemma 4's
arithmetic from those values and the running model's own weights, and says how far the model is from it.
"""

from __future__ import annotations

import math
from typing import Any

from .checks import Context, _g, _heads, _tol, register
from .observation import register_observer
from .findings import Record, check
from .observation import MASKED
from .spec import FULL, SLIDING

CHECKS = ("layer_scalar", "per_layer_inputs", "kv_sharing", "k_eq_v", "rope_fraction", "moe_routing")
# Block parts whose input and / or output the pass keeps (module paths as transformers names them)
INPUTS = {"ffn_in": "pre_feedforward_layernorm", "ple_gate_in": "per_layer_input_gate",
          "ple_proj_in": "per_layer_projection", "v_norm_in": "self_attn.v_norm", "router_in": "router",
          "experts_in": "experts"}
OUTPUTS = {"post_ffn_out": "post_feedforward_layernorm", "ple_gate_out": "per_layer_input_gate",
           "ple_norm_out": "post_per_layer_input_norm", "q_norm_out": "self_attn.q_norm",
           "k_norm_out": "self_attn.k_norm", "k_out": "self_attn.k_proj", "v_out": "self_attn.v_proj",
           "ffn_norm_out": "pre_feedforward_layernorm", "experts_out": "experts"}
FLAT = ("router_in", "experts_in", "experts_out")
ROPE_FRACTIONS = (0.0, 0.125, 0.25, 0.5, 1.0)  # candidates the full layers' scores are fit with


def _part(block: Any, path: str) -> Any:
    for attr in path.split("."):
        block = getattr(block, attr, None)
        if block is None:
            return None
    return block


def _first(t: Any) -> Any:
    return t[0].detach().double().cpu()


def _weight(module: Any, name: str) -> Any:
    t = getattr(module, name, None)
    t = getattr(t, "weight", t)  # transformers' embeddings are modules; the reference runtime keeps Parameters
    return None if t is None else t.detach().double().cpu()


@register_observer("gemma4", CHECKS)
def observe_gemma4(ckpt: Any, model: Any, ids: list[int]) -> dict[str, Any] | None:
    """None for a runtime whose modules do not carry transformers' names (the checks then skip). Else one traced
    forward pass: per block the values of INPUTS / OUTPUTS (first sequence, float64), the attention
    scores (softmax input, [H, T, S]), the router's (probabilities, weights, indices), and the weights the checks
    recompute with (layer scalars, router and expert parameters, the per-layer input tables)."""
    import torch

    from .trace import Tracer, first_tensor

    an = model.anatomy()
    if not all(hasattr(b, "self_attn") for b in an.blocks):  # keras-hub's layers have names of their own
        return None
    blocks: list[dict[str, Any]] = [{} for _ in an.blocks]
    handles = []

    def keep(i: int, key: str, t: Any) -> None:
        if t is not None and hasattr(t, "shape"):  # the router and the experts see tokens flattened, [B*T, d]
            blocks[i][key] = t.detach().double().cpu() if key in FLAT else _first(t)

    # scores (float64 [H, T, T] per layer) only where a check reads them: the first sliding and full layers that
    # compute K/V (rope_fraction) and the KV-shared layers (kv_sharing)
    spec = ckpt.spec
    wanted = {i for i in range(spec.num_layers) if spec.kv_shared(i)}
    for kind in (FULL, SLIDING):
        wanted |= {next((i for i in range(spec.num_layers) if spec.layer_types[i] == kind and not spec.kv_shared(i)),
                        -1)}

    def on_scores(i: int, s: Any, _p: Any) -> None:
        if i in wanted and "scores" not in blocks[i]:
            s = s.detach().double().cpu()
            blocks[i]["scores"] = s.reshape(s.shape[0], -1, s.shape[-2], s.shape[-1])[0]  # [H, T, S]

    with Tracer(an) as tr:
        for i, block in enumerate(an.blocks):
            tr.capture_input(block, f"in{i}")
            tr.capture_output(block, f"out{i}")
            for key, path in INPUTS.items():
                m = _part(block, path)
                if m is not None:
                    handles.append(m.register_forward_pre_hook(
                        lambda _m, a, kw, i=i, key=key: keep(i, key, first_tensor(a, kw)), with_kwargs=True))
            for key, path in OUTPUTS.items():
                m = _part(block, path)
                if m is not None:
                    handles.append(m.register_forward_hook(
                        lambda _m, _a, out, i=i, key=key: keep(i, key, out[0] if isinstance(out, tuple) else out)))
            router = _part(block, "router")
            if router is not None:
                def on_router(_m: Any, _a: Any, out: Any, i: int = i) -> None:
                    probs, weights, index = out
                    blocks[i]["router"] = (probs.detach().double().cpu(), weights.detach().double().cpu(),
                                           index.detach().cpu())
                handles.append(router.register_forward_hook(on_router))
        tr.on_softmax(on_scores)
        try:
            model.forward([ids])
        finally:
            for h in handles:
                h.remove()
        got = dict(tr.captured)
    for i, block in enumerate(an.blocks):
        blocks[i]["in"], blocks[i]["out"] = _first(got[f"in{i}"]), _first(got[f"out{i}"])
        scalar = getattr(block, "layer_scalar", None)
        blocks[i]["layer_scalar"] = None if scalar is None else float(scalar.detach().double().reshape(-1)[0])
        router = _part(block, "router")
        if router is not None:
            blocks[i]["router_weights"] = {n: _weight(router, n) for n in ("proj", "scale", "per_expert_scale")}
            blocks[i]["router_eps"] = float(getattr(router, "eps", None) or getattr(router.norm, "eps", 1e-6))
    # Block 0's experts, for recomputing their output: only those its first tokens were routed to
    experts = _part(an.blocks[0], "experts")
    expert_weights = None
    if experts is not None and "router" in blocks[0]:
        used = sorted(set(blocks[0]["router"][2][:4].reshape(-1).tolist()))
        expert_weights = {e: (experts.gate_up_proj[e].detach().double().cpu(),
                              experts.down_proj[e].detach().double().cpu()) for e in used}
    stack = next((m for m in an.root.modules() if hasattr(m, "per_layer_model_projection")), None)
    ple = None
    if stack is not None:
        table = getattr(stack, "embed_tokens_per_layer")
        table = getattr(table, "weight", table)  # only the rows of the tokens leave the device (E2B: 262,144 x 8,960)
        rows = table.detach()[torch.as_tensor(ids, device=table.device)].double().cpu()
        ple = {"rows": rows, "projection": _weight(stack, "per_layer_model_projection"),
               "norm": _weight(stack, "per_layer_projection_norm")}
    return {"blocks": blocks, "layouts": an.layouts, "tokens": len(ids), "experts": expert_weights, "ple": ple}


def _obs(ctx: Context) -> dict[str, Any] | None:
    return ctx.obs.family.get("gemma4")


def _rel(a: Any, b: Any) -> float:
    return float((a - b).abs().max()) / max(float(a.abs().max()), 1e-30)


# ----------------------------------------------------------------------------- layer scalars
@register("layer_scalar", family_only=True)
def layer_scalar(ctx: Context) -> Record:
    """Each block's output against its last residual sum (after the feed-forward and the per-layer input): the
    ratio is the scalar the running model applied; expected the stored one."""
    g = _obs(ctx)
    if not ctx.spec.layer_scalar:
        return check("layer_scalar", "skip", None, None, "the checkpoint stores no layer scalars")
    if g is None:
        return check("layer_scalar", "skip", None, None, "not observed: the runtime's modules have other names")
    expected, observed, worst = [], [], 0.0
    for b in g["blocks"]:
        if b.get("layer_scalar") is None or b.get("ffn_in") is None or b.get("post_ffn_out") is None:
            return check("layer_scalar", "fail", None, None, "a block holds no layer_scalar, or its feed-forward "
                                                             "norms did not run")
        pre = b["ffn_in"] + b["post_ffn_out"] + (b["ple_norm_out"] if b.get("ple_norm_out") is not None else 0)
        fit = float((b["out"] * pre).sum() / (pre * pre).sum())
        worst = max(worst, _rel(b["out"], fit * pre))
        expected.append(round(b["layer_scalar"], 4))
        observed.append(round(fit, 4))
    tol = _tol(ctx.obs.dtype)
    ok = worst <= tol and all(abs(o - e) <= max(tol, 1e-4) * max(1.0, abs(e)) for o, e in zip(observed, expected))
    ple = " + per-layer input" if ctx.spec.per_layer_input_size else ""

    def shown(values: list[float]) -> str:
        return ", ".join(_g(v, 4) for v in values[:8]) + (" ..." if len(values) > 8 else "")
    evidence = (f"block output / (residual after the feed-forward{ple}) per block: {shown(observed)} (fit residual "
                f"{worst:.1e}); stored: {shown(expected)}")
    return check("layer_scalar", "pass" if ok else "fail", expected, observed, evidence)


# ----------------------------------------------------------------------------- per-layer inputs
def _expected_ple(ctx: Context, g: dict[str, Any], x0: Any) -> Any:
    """[T, L, P]: (RMSNorm_P(x0 @ W^T * d^-0.5) + E_pl[ids] * sqrt(P)) * 2^-0.5 from the running model's tables."""
    spec, p = ctx.spec, ctx.spec.per_layer_input_size
    ple = g["ple"]
    t = x0.shape[0]
    tok = (ple["rows"] * math.sqrt(p)).view(t, spec.num_layers, p)
    proj = ((x0 @ ple["projection"].T) * spec.hidden_size ** -0.5).view(t, spec.num_layers, p)
    proj = proj / (proj.pow(2).mean(-1, keepdim=True) + spec.rms_norm_eps).sqrt() * ple["norm"]
    return (proj + tok) * 2 ** -0.5


@register("per_layer_inputs", family_only=True)
def per_layer_inputs(ctx: Context) -> Record:
    """PLE recomputed: every block's per_layer_projection reads gelu(per_layer_input_gate(x)) times that block's
    slice of (RMSNorm(embedding @ W_plmp^T / sqrt(d)) + E_pl[ids] sqrt(P)) / sqrt(2), the gate reading the residual
    after the feed-forward; the block adds the normed projection to it."""
    from .checks import ACTIVATIONS

    g, p = _obs(ctx), ctx.spec.per_layer_input_size
    if not p:
        return check("per_layer_inputs", "skip", None, None, "the checkpoint has no per-layer input embeddings")
    if g is None:
        return check("per_layer_inputs", "skip", p, None, "not observed: the runtime's modules have other names")
    blocks = g["blocks"]
    need = ("ple_gate_in", "ple_gate_out", "ple_proj_in")
    if g["ple"] is None or any(b.get(k) is None for b in blocks for k in need):
        return check("per_layer_inputs", "fail", p, 0, "the per-layer input gate or projection did not run")
    act = ACTIVATIONS.get(ctx.rules.activation, ACTIVATIONS["gelu_tanh"])
    want = _expected_ple(ctx, g, blocks[0]["in"])
    err = reads = 0.0
    for i, b in enumerate(blocks):
        gated = act(b["ple_gate_out"])
        err = max(err, _rel(b["ple_proj_in"], gated * want[:, i]))
        reads = max(reads, _rel(b["ple_gate_in"], b["ffn_in"] + b["post_ffn_out"]))
    without = _rel(blocks[0]["ple_proj_in"], act(blocks[0]["ple_gate_out"]))
    width = int(blocks[0]["ple_gate_out"].shape[-1])
    tol = _tol(ctx.obs.dtype)
    ok = width == p and err <= tol and reads <= tol
    evidence = (f"every block's per_layer_projection reads gelu(gate) x its per-layer input to {err:.1e} (with the "
                f"per-layer input left out: {without:.1e}); the gate reads the residual after the feed-forward to "
                f"{reads:.1e}; width {width}")
    return check("per_layer_inputs", "pass" if ok else "fail", p, width if ok else 0, evidence)


# ----------------------------------------------------------------------------- attention: RoPE, sharing, K=V
def _rotate(x: Any, inv_freq: Any) -> Any:
    """x [heads, T, D] rotated by position with frequencies [D / 2] (half-split pairs), float64."""
    import torch

    t = x.shape[-2]
    freqs = torch.arange(t, dtype=torch.float64)[:, None] * inv_freq.double()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return x * emb.cos() + torch.cat((-x2, x1), dim=-1) * emb.sin()


def _inv_freq(d: int, base: float, fraction: float) -> Any:
    """Proportional RoPE's frequencies [D / 2]: theta^(-2j / D) for j < int(fraction * D / 2), zeros after."""
    import torch

    rotated = int(fraction * d // 2)
    inv = 1.0 / (base ** (torch.arange(0, 2 * rotated, 2, dtype=torch.float64) / d))
    return torch.cat([inv, torch.zeros(d // 2 - rotated, dtype=torch.float64)])


def _as_heads(t: Any, layout: str, head_dim: int) -> Any:
    """A q/k norm output (first sequence) as [heads, T, D]."""
    return _heads(t[None], layout, head_dim)[0].transpose(0, 1)


def _score_residual(scores: Any, q: Any, k: Any, inv_freq: Any) -> float:
    """How far the layer's (unmasked) scores are from rope(q) . rope(k), relative to their scale."""
    qr, kr = _rotate(q, inv_freq), _rotate(k, inv_freq)
    kr = kr.repeat_interleave(qr.shape[0] // kr.shape[0], dim=0)
    want = qr @ kr.transpose(-1, -2)  # [H, T, S]
    seen = scores > MASKED
    return _rel(scores[seen], want[seen])


def _qk(g: dict[str, Any], i: int, key: str, head_dim: int) -> Any:
    layout = g["layouts"].get(key.split("_")[0] + "_norm", "bhtd")
    return _as_heads(g["blocks"][i][key], layout, head_dim)


@register("rope_fraction", family_only=True)
def rope_fraction(ctx: Context) -> Record:
    """The scores of the first full and sliding layer that compute their own K, fit by rope(q_norm) . rope(k_norm)
    with a fraction f of the head's frequencies rotated (theta^(-2j/D), the full D as denominator, zeros after);
    Gemma 4 rotates 0.25 on full layers (proportional RoPE) and all of the head on sliding ones."""
    g, spec = _obs(ctx), ctx.spec
    if g is None:
        return check("rope_fraction", "skip", None, None, "not observed: the runtime's modules have other names")
    expected: dict[str, float] = {}
    observed: dict[str, float | None] = {}
    notes = []
    for kind, label in ((FULL, "full"), (SLIDING, "sliding")):
        layer = next((i for i in range(spec.num_layers) if spec.layer_types[i] == kind and not spec.kv_shared(i)),
                     None)
        if layer is None:
            continue
        b = g["blocks"][layer]
        if b.get("scores") is None or b.get("q_norm_out") is None or b.get("k_norm_out") is None:
            return check("rope_fraction", "skip", None, None, f"block {layer}'s scores or q/k norms were not seen")
        d = spec.layer_head_dim(layer)
        q, k = _qk(g, layer, "q_norm_out", d), _qk(g, layer, "k_norm_out", d)
        expected[label] = spec.rope_partial_factor if kind == FULL else 1.0
        fits = {}
        base = spec.rope_theta if kind == FULL else spec.local_rope_theta
        factor = spec.rope_scaling_factor if kind == FULL else spec.rope_local_scaling_factor
        for f in ROPE_FRACTIONS:
            inv = _inv_freq(d, base, f) / factor
            fits[f] = _score_residual(b["scores"], q, k, inv)
        best = min(fits, key=fits.get)
        tol = _tol(ctx.obs.dtype)
        observed[label] = best if fits[best] <= tol else None
        notes.append(f"{label} layer {layer} (head_dim {d}): "
                     + ", ".join(f"f {f:g}: {r:.1e}" for f, r in fits.items()))
    ok = bool(expected) and observed == expected
    return check("rope_fraction", "pass" if ok else "fail", expected, observed,
                 "scores against rope_f(q_norm) . rope_f(k_norm), residual per fraction f of the frequencies "
                 "rotated (theta^(-2j/D), full D): " + "; ".join(notes))


@register("kv_sharing", family_only=True)
def kv_sharing(ctx: Context) -> Record:
    """Each KV-shared layer's scores fit by its own q_norm output against the k_norm output of every layer that
    computes K (rotated alike): the one that explains them is the layer it attends with."""
    from .runtimes.gemma4 import rope_inv_freq

    g, spec = _obs(ctx), ctx.spec
    shared = [i for i in range(spec.num_layers) if spec.kv_shared(i)]
    if not shared:
        return check("kv_sharing", "skip", None, None, "no KV-shared layers")
    if g is None:
        return check("kv_sharing", "skip", None, None, "not observed: the runtime's modules have other names")
    expected = {str(i): spec.kv_source(i) for i in shared}
    observed: dict[str, int | None] = {}
    notes = []
    tol = _tol(ctx.obs.dtype)
    for i in shared:
        b = g["blocks"][i]
        if b.get("scores") is None or b.get("q_norm_out") is None:
            return check("kv_sharing", "skip", expected, None, f"block {i}'s scores or q_norm were not seen")
        if b.get("k_norm_out") is not None:
            notes.append(f"{i} ran a k_norm of its own")
        d = spec.layer_head_dim(i)
        q, inv = _qk(g, i, "q_norm_out", d), rope_inv_freq(spec, i)
        fits = {}
        for j in range(spec.num_layers):
            kj = g["blocks"][j].get("k_norm_out")
            if kj is None or j == i and b.get("k_norm_out") is None or spec.layer_head_dim(j) != d:
                continue
            k = _qk(g, j, "k_norm_out", d)
            if q.shape[0] % k.shape[0]:
                continue
            fits[j] = _score_residual(b["scores"], q, k, inv)
        best = min(fits, key=fits.get) if fits else None
        observed[str(i)] = best if best is not None and fits[best] <= tol else None
        shown = ", ".join(f"{j}: {r:.1e}" for j, r in sorted(fits.items()))
        notes.append(f"layer {i}'s scores against the K of layer {shown}")
    ok = observed == expected
    return check("kv_sharing", "pass" if ok else "fail", expected, observed, "; ".join(notes))


@register("k_eq_v", family_only=True)
def k_eq_v(ctx: Context) -> Record:
    """On K=V layers v_norm reads the raw K projection (not the normed, rotated K, and no v_proj)."""
    g, spec = _obs(ctx), ctx.spec
    layers = [i for i in range(spec.num_layers) if spec.k_eq_v(i) and not spec.kv_shared(i)]
    if not spec.attention_k_eq_v:
        return check("k_eq_v", "skip", None, None, "K=V is off: every layer computing K/V has a v_proj")
    if g is None:
        return check("k_eq_v", "skip", layers, None, "not observed: the runtime's modules have other names")
    observed, notes = [], []
    tol = _tol(ctx.obs.dtype)
    for i in layers:
        b = g["blocks"][i]
        vin, kout = b.get("v_norm_in"), b.get("k_out")
        if vin is None or kout is None:
            notes.append(f"layer {i}: v_norm or k_proj did not run")
            continue
        err = _rel(vin.reshape(-1), kout.reshape(vin.shape[0], -1).reshape(-1)) if vin.numel() == kout.numel() \
            else float("inf")
        ran_v = b.get("v_out") is not None
        if err <= tol and not ran_v:
            observed.append(i)
        notes.append(f"layer {i}: v_norm's input against k_proj's output {err:.1e}" + (", v_proj ran" if ran_v else ""))
    return check("k_eq_v", "pass" if observed == layers else "fail", layers, observed, "; ".join(notes))


# ----------------------------------------------------------------------------- experts
def _route(x: Any, w: dict[str, Any], eps: float, k: int, renorm: bool, scaled: bool) -> tuple[Any, Any, Any]:
    import torch

    h = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w["scale"] * x.shape[-1] ** -0.5
    probs = torch.softmax(h @ w["proj"].T, dim=-1)
    top, index = torch.topk(probs, k, dim=-1)
    if renorm:
        top = top / top.sum(-1, keepdim=True)
    if scaled:
        top = top * w["per_expert_scale"][index]
    return probs, top, index


@register("moe_routing", family_only=True)
def moe_routing(ctx: Context) -> Record:
    """Every block's router recomputed from its input (float64): which input it reads (the residual stream, not the
    normed MLP input), the softmax over experts, top-k, whether the kept probabilities are renormalised to 1 and
    multiplied by per_expert_scale; and block 0's expert output recomputed from the fused gate_up (gate first)."""
    import torch

    from .checks import ACTIVATIONS

    g, spec = _obs(ctx), ctx.spec
    if not spec.moe_experts:
        return check("moe_routing", "skip", None, None, "the checkpoint has no experts")
    expected = {"top_k": spec.moe_top_k, "renormalised": True, "per_expert_scale": True, "router_input": "residual"}
    if g is None:
        return check("moe_routing", "skip", expected, None, "not observed: the runtime's modules have other names")
    blocks = g["blocks"]
    if any(b.get("router") is None or b.get("router_in") is None for b in blocks):
        return check("moe_routing", "fail", expected, None, "a block's router did not run")
    tol = _tol(ctx.obs.dtype)
    errs = {(r, s): 0.0 for r in (True, False) for s in (True, False)}
    prob_err = 0.0
    flips = reads_normed = 0
    tokens = 0
    reads = 0.0
    k_seen = set()
    for b in blocks:
        probs, weights, index = b["router"]
        k = int(index.shape[-1])
        k_seen.add(k)
        x = b["router_in"].reshape(-1, b["router_in"].shape[-1])
        reads = max(reads, _rel(x, b["ffn_in"].reshape(x.shape)))
        if b.get("ffn_norm_out") is not None:
            reads_normed += _rel(x, b["ffn_norm_out"].reshape(x.shape)) <= tol
        for key in errs:
            p, w, idx = _route(x, b["router_weights"], b["router_eps"], k, *key)
            same = (idx.sort(-1).values == index.sort(-1).values).all(-1)
            if key == (True, True):
                prob_err = max(prob_err, _rel(probs, p))
                flips += int((~same).sum())
                tokens += int(same.numel())
            order_obs, order_want = index.argsort(-1), idx.argsort(-1)
            w_obs, w_want = weights.gather(-1, order_obs)[same], w.gather(-1, order_want)[same]
            errs[key] = max(errs[key], _rel(w_obs, w_want) if w_obs.numel() else 0.0)
    best = min(errs, key=errs.get)
    observed = {"top_k": k_seen.pop() if len(k_seen) == 1 else sorted(k_seen),
                "renormalised": best[0] if errs[best] <= tol else None,
                "per_expert_scale": best[1] if errs[best] <= tol else None,
                "router_input": "residual" if reads <= tol else "normed" if reads_normed == len(blocks) else "other"}
    # block 0's experts: the weighted sum of the routed experts' GeGLU outputs on what the experts received
    b0, act = blocks[0], ACTIVATIONS.get(ctx.rules.activation, ACTIVATIONS["gelu_tanh"])
    expert_err = None
    if g["experts"] and b0.get("experts_in") is not None and b0.get("experts_out") is not None:
        xin = b0["experts_in"].reshape(-1, b0["experts_in"].shape[-1])[:4]
        out = b0["experts_out"].reshape(-1, xin.shape[-1])[:4]
        _, weights, index = b0["router"]
        want = torch.zeros_like(out)
        for t in range(xin.shape[0]):
            for slot, e in enumerate(index[t].tolist()):
                gate_up, down = g["experts"][e]
                gate, up = (xin[t] @ gate_up.T).chunk(2, dim=-1)
                want[t] += weights[t, slot] * ((act(gate) * up) @ down.T)
        expert_err = _rel(out, want)
    ok = observed == expected and prob_err <= tol and (expert_err is None or expert_err <= tol)
    flips_note = f"; top-k sets differ from the recomputation on {flips} of {tokens} token-layers" if flips else ""
    evidence = (f"router probabilities recomputed to {prob_err:.1e}; top-{observed['top_k']} weights fit by "
                + ", ".join(f"{'renormalised' if r else 'raw'}{' x per_expert_scale' if s else ''} {e:.1e}"
                            for (r, s), e in errs.items())
                + f"; the router reads the residual stream to {reads:.1e}"
                + (f"; block 0's expert output recomputed from gate_up (gate rows first) to {expert_err:.1e}"
                   if expert_err is not None else "") + flips_note)
    return check("moe_routing", "pass" if ok else "fail", expected, observed, evidence)


__all__ = ["CHECKS", "observe_gemma4", "layer_scalar", "per_layer_inputs", "rope_fraction", "kv_sharing", "k_eq_v",
           "moe_routing"]
