"""verify's checks of what only Gemma 3n has: activation sparsity on the FFN gate, AltUp's streams and LAuReL.

Registered in checks.py's FAMILY_CHECKS (run for the families whose row lists them, after the common checks);
verify.py imports this module. Each check recomputes the model's arithmetic from values the Observation kept
(observation.BlockValues: block 0's parts' inputs and outputs; every block's gate probe) and reports how far the
running model is from it.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .checks import ACTIVATIONS, Context, _g, _max_rel, _tol, expected_sparsity, register
from .findings import Record, check, published_card
from .observation import BLOCK_POINTS, GRID
from .spec import GemmaSpec


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _invert(f: Callable[[Any], Any], y: Any) -> Any:
    """z >= 0 with f(z) = y, elementwise, by bisection (f increasing on z >= 0: GELU, SiLU, ReLU)."""
    import torch

    lo, hi = torch.zeros_like(y), torch.full_like(y, 2 * GRID[1])
    for _ in range(80):
        mid = (lo + hi) / 2
        below = f(mid) < y
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def _sparsity_of(act_fn: Callable[[Any], Any], x: Any, y: Any) -> tuple[float | None, str]:
    """The sparsity target a gate probe shows: 0.0 when the activation saw the grid as it was (negative outputs
    survive), else p = Phi((c - mean) / std) of the cutoff c the outputs imply (y = act(x - c) above it, 0 below)."""
    if bool((y < -1e-6 * float(y.abs().max())).any()):
        return 0.0, "negative activations pass: no cutoff"
    top = float(y.max())
    if top <= 0:
        return None, "every activation is 0: the cutoff lies above the whole grid"
    keep = y > 1e-3 * top
    c = float((x[keep] - _invert(act_fn, y[keep])).median())
    mean, std = float(x.mean()), float(x.std(unbiased=False))
    kept = int(keep.sum())
    return _phi((c - mean) / std), f"cutoff {c:.4g} = mean {mean:.2g} + {(c - mean) / std:.4f} std ({kept} kept)"


@register("activation_sparsity", family_only=True)
def activation_sparsity(ctx: Context) -> Record:
    """Gemma 3n's Gaussian top-k on the FFN gate: each block's down projection, fed the gate grid, shows whether
    the block zeroes what lies below mean + std * Phi^-1(p) and with which p."""
    expected = expected_sparsity(ctx.spec)
    acts = ctx.obs.layer_activations
    if not any(expected) and not ctx.spec.gemma3n_features:
        return check("activation_sparsity", "skip", None, None, f"{ctx.row.title} has no activation sparsity")
    if len(acts) != ctx.spec.num_layers:
        return check("activation_sparsity", "skip", expected, None, "the FFN projections of every block were not seen")
    fn = ACTIVATIONS.get(ctx.rules.activation, ACTIVATIONS["gelu_tanh"])
    tol = 1e-3 if ctx.obs.dtype == "float32" else 2e-2
    observed, notes = [], []
    for i in sorted(acts):
        p, how = _sparsity_of(fn, acts[i].x, acts[i].y)
        observed.append(None if p is None else round(p, 4) if p else 0.0)
        if expected[i] or p:
            notes.append(f"block {i}: {how}, p = {_g(p, 4)}")
    ok = all(o is not None and abs(o - e) <= tol for o, e in zip(observed, expected))
    sparse = [i for i, e in enumerate(expected) if e]
    if notes:
        seen = "; ".join(notes[:4]) + (f"; ... ({len(notes)} blocks)" if len(notes) > 4 else "")
        seen += "; the other blocks pass negative activations (dense)"
    else:
        seen = "every block passes negative activations (dense)"
    evidence = (f"every block's gate output replaced by the grid: {seen}; expected sparse: "
                f"{', '.join(map(str, sparse)) or 'none'}")
    return check("activation_sparsity", "pass" if ok else "fail", [round(e, 4) for e in expected], observed, evidence)


def _expected_from_card(spec: GemmaSpec, field: str) -> Any:
    c = published_card(spec)
    return getattr(c if c is not None else spec, field)


@register("altup", family_only=True)
def altup(ctx: Context) -> Record:
    """AltUp, recomputed from block 0's values: the n streams entering it (streams 1..n-1 at stream 0's RMS), the
    prediction (stream i + sum_k C[i, k] stream k, C from prediction_coefs) that input_layernorm receives, and the
    correction (prediction + (1 + correction_coefs) * innovation) that leaves stream 0 as the block's output and
    streams 1..n-1 that plus one shared per-layer-input term."""
    import torch

    expected = _expected_from_card(ctx.spec, "altup_num_inputs")
    bv = ctx.obs.block_values
    if bv is None:
        if expected:
            return check("altup", "fail", expected, 0, "block 0 carries one residual stream: no AltUp coefficients ran")
        return check("altup", "skip", None, None, f"{ctx.row.title} has no AltUp")
    s, out, tol = bv.streams_in, bv.streams_out, _tol(ctx.obs.dtype)
    n, a = s.shape[0], ctx.spec.altup_active_idx
    idle = [k for k in ("altup_predict", "altup_correct", "ffn_norm", "post_ffn_norm", "attn_norm")
            if bv.outputs.get(k) is None]
    if idle:
        return check("altup", "fail", expected, n, f"block 0 receives {n} streams, but its "
                                                   f"{', '.join(BLOCK_POINTS[k] for k in idle)} did not run")
    rms = s.pow(2).mean(-1).sqrt()  # [n, T]
    rms_dev = float((rms[1:] / rms[:1] - 1).abs().max()) if n > 1 else 0.0
    coefs = bv.outputs["altup_predict"].reshape(s.shape[1], n, n)  # [T, i, k]
    pred = s + torch.einsum("tik,ktd->itd", coefs, s)
    predicted = _max_rel(bv.inputs["attn_norm"], pred[a])
    unmixed = _max_rel(bv.inputs["attn_norm"], s[a])
    activated = bv.inputs["ffn_norm"] + bv.outputs["post_ffn_norm"]
    corr = bv.outputs["altup_correct"].T[:, :, None] + 1.0  # [n, T, 1]
    corrected = pred + corr * (activated - pred[a])
    active_err = _max_rel(out[a], corrected[a])
    extra = out[1:] - corrected[1:]  # the per-layer-input term, the same on every other stream
    spread = _max_rel(extra, extra[:1].expand_as(extra)) if n > 2 else 0.0
    ok = n == expected and max(predicted, active_err, spread) <= tol and rms_dev <= tol
    evidence = (f"block 0 receives {n} streams (1..{n - 1} at stream 0's RMS to {rms_dev:.1e}); input_layernorm "
                f"reads the prediction to {predicted:.1e} (the unmixed stream would be {unmixed:.1e}); the output's "
                f"stream {a} is the correction to {active_err:.1e}, the others differ from it by one shared term "
                f"(spread {spread:.1e})")
    return check("altup", "pass" if ok else "fail", expected, n, evidence)


@register("laurel", family_only=True)
def laurel(ctx: Context) -> Record:
    """LAuReL, recomputed from block 0's values: the feed-forward norm reads (x + attention + LAuReL) / sqrt(2),
    LAuReL = normed x + RMSNorm(R(L(normed x))), not the plain residual x + attention."""
    expected = _expected_from_card(ctx.spec, "laurel_rank")
    bv = ctx.obs.block_values
    if bv is None or "laurel_left" not in bv.outputs:
        if expected:
            return check("laurel", "fail", expected, 0, "block 0 has no LAuReL projections")
        return check("laurel", "skip", None, None, f"{ctx.row.title} has no LAuReL")
    if any(bv.outputs.get(k) is None for k in ("laurel_left", "laurel_norm", "attn_norm", "post_attn_norm")) or \
            bv.inputs.get("ffn_norm") is None:
        return check("laurel", "fail", expected, 0, "block 0's LAuReL projections (or the norms around them) did "
                                                    "not run")
    i, o, tol = bv.inputs, bv.outputs, _tol(ctx.obs.dtype)
    x, normed, attn = i["attn_norm"], o["attn_norm"], o["post_attn_norm"]
    with_laurel = (x + attn + normed + o["laurel_norm"]) / math.sqrt(2)
    err, plain = _max_rel(i["ffn_norm"], with_laurel), _max_rel(i["ffn_norm"], x + attn)
    reads = _max_rel(i["laurel_left"], normed)
    rank = int(o["laurel_left"].shape[-1])
    ok = rank == expected and err <= tol and reads <= tol
    evidence = (f"block 0: linear_left reads input_layernorm's output (to {reads:.1e}) through rank {rank}; the "
                f"feed-forward norm reads (x + attention + LAuReL) / sqrt(2) to {err:.1e} (x + attention alone: "
                f"{plain:.1e})")
    return check("laurel", "pass" if ok else "fail", expected, rank, evidence)


__all__ = ["activation_sparsity", "altup", "laurel"]
