"""The summary / compare rows of Gemma 4's and Gemma 3n's per-layer architecture: head geometry by layer type, KV
sharing, K=V, experts, per-layer input embeddings, layer scalars, AltUp, LAuReL, activation sparsity and the
parameter counts Google quotes (effective, active).

Every value is computed from the summary object (spec fields and counts derived from the role rows); a model
without those fields (an earlier family beside a Gemma 4 in `compare`) shows what it has: none, no, uniform.
"""

from __future__ import annotations

from typing import Any

from .render_base import ranges
from .spec import format_count

SLIDING, FULL = "sliding_attention", "full_attention"


def _span(layers: list[int]) -> str:
    """Consecutive layers as a range (15-34), others as render_base.ranges lists them."""
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ranges(layers)


def _short(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else format_count(n)


def _geometry(a: dict[str, Any], compact: bool) -> str:
    types = a["layer_types"]
    hds = a.get("layer_head_dims") or [a["head_dim"]] * len(types)
    kvs = a.get("layer_kv_heads") or [a["num_key_value_heads"]] * len(types)
    parts = []
    for kind, label in ((SLIDING, "sliding"), (FULL, "full")):
        geo = sorted({(kvs[i], hds[i]) for i, t in enumerate(types) if t == kind})
        if geo:
            parts.append(f"{label} " + ", ".join(f"{k}kv x {d}" if compact else f"{k} K/V x head_dim {d}"
                                                 for k, d in geo))
    return "; ".join(parts)


def _sharing(a: dict[str, Any], compact: bool) -> str:
    n = a.get("num_kv_shared_layers", 0)
    if not n:
        return "none"
    layers = len(a["layer_types"])
    src = a["kv_sources"]
    shared = list(range(layers - n, layers))
    producers = sorted({src[i] for i in shared})
    if compact:
        return f"last {n} reuse {', '.join(map(str, producers))}"
    named = " / ".join(f"{p} ({a['layer_types'][p].split('_')[0]})" for p in producers)
    return f"last {n} layers ({_span(shared)}) compute no K/V and reuse layer {named}"


def _experts(a: dict[str, Any], compact: bool) -> str:
    e = a.get("moe_experts", 0)
    if not e:
        return "none"
    if compact:
        return f"{e} x {a['moe_intermediate_size']}, top {a['moe_top_k']}"
    return (f"{e} experts x width {a['moe_intermediate_size']}, top {a['moe_top_k']} per token, beside the "
            f"dense MLP (fused gate_up, per-expert scales)")


def _ple(a: dict[str, Any], p: dict[str, Any], compact: bool) -> str:
    w = a.get("per_layer_input_size", 0)
    if not w:
        return "none"
    table = p.get("per_layer_embedding", 0)
    if compact:
        return f"{w} per layer, table {_short(table)}"
    rows = a["per_layer_vocab_size"]
    beyond = f"; ids >= {rows:,} look up row 0" if rows < a["vocab_size"] else ""  # Gemma 3n: 262,144 of 262,400
    return f"{w} per layer; table {rows:,} x {len(a['layer_types']) * w:,} = {format_count(table)}{beyond}"


def _ffn(a: dict[str, Any], base: str, compact: bool) -> str:
    widths = a.get("layer_intermediate_sizes")
    if not widths or len(set(widths)) == 1:
        return base
    wide = [i for i, w in enumerate(widths) if w != a["intermediate_size"]]
    if a.get("double_wide_mlp"):
        return base + (f" ({widths[wide[0]]} on {_span(wide)})" if compact
                       else f"; {widths[wide[0]]} on the KV-shared layers {_span(wide)} (double-wide)")
    others = sorted({widths[i] for i in wide})  # a config list of widths (Gemma 3n): each width and its layers
    def on(w: int) -> str:
        layers = [i for i in wide if widths[i] == w]
        return f"{w} on {_span(layers)}" if compact else \
            f"{w} on layer{'s' if len(layers) > 1 else ''} {_span(layers)}"

    return base + (" (" + ", ".join(map(on, others)) + ")" if compact else "; " + ", ".join(map(on, others)))


def _altup(a: dict[str, Any], p: dict[str, Any], compact: bool) -> str:
    n = a.get("altup_num_inputs", 0)
    if not n:
        return "none"
    if compact:
        return f"{n} streams, {_short(p.get('altup', 0))}"
    scale = ", corrected stream scaled" if a.get("altup_correct_scale") else ""
    return (f"{n} streams, block runs on stream {a['altup_active_idx']}; the others predicted and corrected per "
            f"layer{scale}; {format_count(p.get('altup', 0))} parameters")


def _laurel(a: dict[str, Any], p: dict[str, Any], compact: bool) -> str:
    r = a.get("laurel_rank", 0)
    if not r:
        return "none"
    if compact:
        return f"rank {r}"
    return (f"rank {r} residual beside attention, (x + attn + laurel) / sqrt(2); "
            f"{format_count(p.get('laurel', 0))} parameters")


def _sparsity(a: dict[str, Any], compact: bool) -> str:
    values = a.get("activation_sparsity") or []
    sparse = [i for i, v in enumerate(values) if v > 0]
    if not sparse:
        return "none"
    targets = sorted({values[i] for i in sparse})
    what = ", ".join(f"{t:g}" for t in targets)
    if compact:
        return f"{what} on {_span(sparse)}"
    return f"{what} on layers {_span(sparse)} (gate kept above mean + std x Phi^-1({what}))"


def _scalars(m: dict[str, Any]) -> str:
    a = m["architecture"]
    if not a.get("layer_scalar"):
        return "none"
    stored = m.get("layer_scalars_stored")
    if stored is None:
        return "yes (published)"
    return f"stored on {stored} of {len(a['layer_types'])} layers"


def insert_layer_rows(rows: list[tuple[str, str]], m: dict[str, Any], compact: bool) -> list[tuple[str, str]]:
    """`rows` with the Gemma 4 rows inserted after the rows they qualify."""
    a, p = m["architecture"], m["parameters"]
    k_eq_v = "full layers: no v_proj, V = v_norm(K projection)" if not compact else "full layers"
    after: dict[str, list[tuple[str, str]]] = {
        "  embedding": [r for r in (
            ("  per-layer embedding", _short(p["per_layer_embedding"]) if compact else
             f"{format_count(p['per_layer_embedding'])} ({p['per_layer_embedding']:,})")
            if p.get("per_layer_embedding") else None,
            ("  effective", _short(p["effective"]) if compact else
             f"{format_count(p['effective'])} ({p['effective']:,}) without the per-layer table")
            if "effective" in p else None,
            ("  active / token", _short(p["experts_active"]) if compact else
             f"{format_count(p['experts_active'])} ({p['experts_active']:,})")
            if "experts_active" in p else None) if r],
        "Attention": [("KV sharing", _sharing(a, compact)),
                      ("K=V", k_eq_v if a.get("attention_k_eq_v") else "no")],
        "Head dim": [("Head geometry", _geometry(a, compact))],
        "FFN": [("Experts", _experts(a, compact))],
        "Embedding scale": [("Per-layer inputs", _ple(a, p, compact))]
        + ([("AltUp", _altup(a, p, compact)), ("LAuReL", _laurel(a, p, compact)),
            ("Act. sparsity", _sparsity(a, compact))] if "altup_num_inputs" in a else []),
        "Norm placement": [("Layer scalars", _scalars(m))],
    }
    out: list[tuple[str, str]] = []
    for label, value in rows:
        if label == "FFN":
            value = _ffn(a, value, compact)
        elif label == "RoPE" and a.get("rope_partial_factor", 1.0) != 1.0:
            value += f", {a['rope_partial_factor']:g} of head_dim rotated on global layers (proportional)"
        elif label == "Query scale" and a["query_pre_attn_scalar"] == 1:
            value = "1 (unscaled)" if compact else "1 (queries unscaled; QK-norm sets their size)"
        out.append((label, value))
        out += after.get(label, [])
    return out


__all__ = ["insert_layer_rows"]
