"""The HF config keys of a family's extra spec fields (Gemma 4, Gemma 3n): per-layer head geometry in either
spelling, per-layer input embeddings, KV sharing, K=V, the expert block and proportional RoPE on full layers; AltUp,
LAuReL, per-layer FFN widths and activation sparsity.

What is read comes from the family row (`hf.config_fields`, `hf.layer_geometry`, `hf.experts_switch`), never from
the family's name. Values are read as transformers 5.24 reads them: `global_head_dim` defaults to 512,
`num_global_key_value_heads` counts only when `attention_k_eq_v` is on, and a saved `per_layer_config` (sparse,
keys the layer index, zero-padded or not) wins over both.
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError, UnsupportedError
from ..families import FULL, SLIDING, Family
from .common import require_int, show

GEOMETRY_KEYS = ("head_dim", "num_key_value_heads")


def _count(v: Any, key: str, path: str) -> int:
    """A non-negative integer config value (null counts as 0: transformers' "none")."""
    if v is None or v is False:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InputError(path, f"config {key} must be a non-negative integer, got {show(v)}")
    return v


def _flag(v: Any, key: str, path: str) -> bool:
    if v is None:
        return False
    if not isinstance(v, bool):
        raise InputError(path, f"config {key} must be true or false, got {show(v)}")
    return v


# transformers' Gemma3nTextConfig: without activation_sparsity_pattern, the first 10 layers of a model deeper than 10
# are sparse at 0.95 and the rest dense
DEFAULT_SPARSE_LAYERS, DEFAULT_SPARSITY = 10, 0.95


def _sparsity(v: Any, key: str, n: int, path: str, notes: list[str]) -> tuple[float, ...]:
    """A per-layer list of sparsity targets in [0, 1) (absent: transformers' default, with a note)."""
    if v is None:
        sparse = DEFAULT_SPARSE_LAYERS if n > DEFAULT_SPARSE_LAYERS else 0
        notes.append(f"config has no {key}: read as transformers fills it in ("
                     + (f"{DEFAULT_SPARSITY} on the first {sparse} layers, dense after)" if sparse else
                        f"every layer dense, the model having {DEFAULT_SPARSE_LAYERS} layers or fewer)"))
        return (DEFAULT_SPARSITY,) * sparse + (0.0,) * (n - sparse)
    if not isinstance(v, list) or len(v) != n:
        raise InputError(path, f"config {key} must list {n} numbers in [0, 1), one per layer, got {show(v)}")
    for i, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x < 1:
            raise InputError(path, f"config {key}[{i}] is {show(x)}, not a sparsity in [0, 1)")
    return tuple(float(x) for x in v)


def intermediate_sizes(text: dict[str, Any], n: int, path: str) -> tuple[int, tuple[int, ...]]:
    """intermediate_size as an integer or, as Gemma 3n's configs spell it, one per layer: (the width, the per-layer
    widths where they differ, else ())."""
    v = text.get("intermediate_size")
    if not isinstance(v, list):
        return require_int(text, "intermediate_size", path), ()
    if len(v) != n or any(isinstance(x, bool) or not isinstance(x, int) or x <= 0 for x in v):
        raise InputError(path, f"config intermediate_size must be a positive integer or list {n} of them, one per "
                               f"layer, got {show(v)}")
    return v[0], (tuple(v) if len(set(v)) > 1 else ())


def _per_layer_config(raw: Any, layer_types: tuple[str, ...], path: str) -> dict[int, dict[str, int]]:
    if not isinstance(raw, dict):
        raise InputError(path, f"config per_layer_config must be an object, got {show(raw)}")
    out: dict[int, dict[str, int]] = {}
    for k, v in raw.items():
        try:
            i = int(k)
        except (TypeError, ValueError):
            raise InputError(path, f"config per_layer_config key {show(k)} is not a layer index") from None
        if not 0 <= i < len(layer_types):
            raise InputError(path, f"config per_layer_config names layer {i}, outside 0..{len(layer_types) - 1}")
        if not isinstance(v, dict):
            raise InputError(path, f"config per_layer_config[{show(k)}] must be an object, got {show(v)}")
        other = sorted(set(v) - set(GEOMETRY_KEYS))
        if other:
            raise UnsupportedError(f"{path}: per_layer_config[{show(k)}] overrides {', '.join(other)}; only "
                                   f"{' and '.join(GEOMETRY_KEYS)} are supported")
        for key, val in v.items():
            if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
                raise InputError(path, f"config per_layer_config[{show(k)}].{key} must be a positive integer, "
                                       f"got {show(val)}")
        out[i] = dict(v)
    return out


def _geometry(text: dict[str, Any], raw_text: dict[str, Any], layer_types: tuple[str, ...], kv: int,
              head_dim: int, k_eq_v: bool, path: str, notes: list[str]) -> dict[str, Any]:
    """global_head_dim / num_global_key_value_heads from either spelling."""
    if "per_layer_config" in raw_text and raw_text["per_layer_config"] is not None:
        plc = _per_layer_config(raw_text["per_layer_config"], layer_types, path)
        full = [i for i, t in enumerate(layer_types) if t == FULL]
        per_full = {(plc.get(i, {}).get("head_dim", head_dim), plc.get(i, {}).get("num_key_value_heads", kv))
                    for i in full}
        sliding_overridden = [i for i in plc if layer_types[i] == SLIDING]
        if len(per_full) > 1 or sliding_overridden:
            raise UnsupportedError(f"{path}: per_layer_config gives layers of one attention type different head "
                                   f"geometries (only one geometry for full layers, none for sliding ones is "
                                   f"supported)")
        g_hd, g_kv = per_full.pop() if per_full else (head_dim, kv)
        plain = {k: raw_text[k] for k in ("global_head_dim", "num_global_key_value_heads") if k in raw_text}
        if not plain:
            notes.append("full-layer head geometry read from per_layer_config (as transformers 5.24 saves it; "
                         "llama.cpp and keras-hub read global_head_dim / num_global_key_value_heads instead)")
        elif plain.get("global_head_dim", g_hd) != g_hd or (k_eq_v and plain.get("num_global_key_value_heads",
                                                                                   g_kv) != g_kv):
            raise InputError(path, f"config per_layer_config gives full layers head_dim {g_hd} and {g_kv} K/V heads "
                                   f"but {', '.join(f'{k}={v}' for k, v in plain.items())}: transformers reads the "
                                   f"former, llama.cpp and keras-hub the latter")
        return dict(global_head_dim=g_hd, num_global_key_value_heads=g_kv)
    g_hd = text.get("global_head_dim")
    if g_hd is not None and (isinstance(g_hd, bool) or not isinstance(g_hd, int) or g_hd <= 0):
        raise InputError(path, f"config global_head_dim must be a positive integer, got {show(g_hd)}")
    g_kv = text.get("num_global_key_value_heads")
    if g_kv is not None and (isinstance(g_kv, bool) or not isinstance(g_kv, int) or g_kv <= 0):
        raise InputError(path, f"config num_global_key_value_heads must be a positive integer, got {show(g_kv)}")
    if g_kv is not None and not k_eq_v and g_kv != kv:
        notes.append(f"num_global_key_value_heads {g_kv} is ignored: transformers uses it only with "
                     f"attention_k_eq_v (full layers keep num_key_value_heads {kv})")
        g_kv = None
    return dict(global_head_dim=g_hd, num_global_key_value_heads=g_kv)


def _partial_rope(text: dict[str, Any], path: str) -> dict[str, float]:
    rp = text.get("rope_parameters")
    full = rp.get(FULL) if isinstance(rp, dict) else None
    if not isinstance(full, dict) or full.get("rope_type") != "proportional":
        return dict(rope_partial_factor=1.0)
    f = full.get("partial_rotary_factor", 1.0)
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
        raise InputError(path, f"config rope_parameters.{FULL}.partial_rotary_factor must be in (0, 1], "
                               f"got {show(f)}")
    return dict(rope_partial_factor=float(f))


def extra_fields(text: dict[str, Any], raw_text: dict[str, Any], row: Family, layer_types: tuple[str, ...],
                 kv: int, head_dim: int, path: str) -> tuple[dict[str, Any], list[str]]:
    """The spec fields of the row's `hf.config_fields` and head geometry, and notes on how they were read.
    `text` has transformers' defaults merged in; `raw_text` is the config as stored."""
    ids = row.hf
    fields: dict[str, Any] = {}
    notes: list[str] = []
    if ids is None or not (ids.config_fields or ids.layer_geometry):
        return fields, notes
    from ..spec import GemmaSpec

    for field, key in ids.config_fields.items():
        v = text.get(key)
        kind = type(GemmaSpec.__dataclass_fields__[field].default)  # the spec field's type says how to read it
        if kind is bool:
            fields[field] = _flag(v, key, path)
        elif kind is tuple:
            fields[field] = _sparsity(v, key, len(layer_types), path, notes)
        else:
            fields[field] = _count(v, key, path)
    if ids.experts_switch is not None and not _flag(text.get(ids.experts_switch), ids.experts_switch, path):
        for f in ("moe_experts", "moe_top_k", "moe_intermediate_size"):  # the block is off: no experts
            fields[f] = 0
    if not fields.get("per_layer_input_size"):
        fields["per_layer_vocab_size"] = 0
    if ids.layer_geometry:
        fields.update(_geometry(text, raw_text, layer_types, kv, head_dim, bool(fields.get("attention_k_eq_v")),
                                path, notes))
        fields.update(_partial_rope(text, path))
    return fields, notes


def config_extras(spec: Any, ids: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """The config.json keys the writer adds for a row with per-layer geometry or an experts switch (Gemma 4), given
    the config written so far: proportional RoPE on full layers, the MoE switch, the head geometry."""
    out: dict[str, Any] = {}
    if spec.rope_partial_factor != 1.0:  # full layers rotate a fraction of the head (proportional)
        if spec.rope_scaling_factor != 1.0:
            raise UnsupportedError(f"HF {spec.title.split(' (')[0]} cannot express linear RoPE scaling together "
                                   f"with proportional RoPE on full layers")
        out["rope_parameters"] = {**cfg["rope_parameters"], FULL: {
            "rope_type": "proportional", "partial_rotary_factor": spec.rope_partial_factor,
            "rope_theta": spec.rope_theta}}
    if ids.experts_switch is not None:  # the MoE block is switched on by its own key
        out[ids.experts_switch] = bool(spec.moe_experts)
        if not spec.moe_experts:
            out.update({ids.config_fields[f]: None for f in ("moe_experts", "moe_top_k", "moe_intermediate_size")})
    if ids.layer_geometry:
        out.update(config_geometry(spec))
    return out


def config_geometry(spec: Any) -> dict[str, Any]:
    """Full layers' head geometry in both spellings, so that every consumer reads the same model:
    `global_head_dim` / `num_global_key_value_heads` (llama.cpp's converter and keras-hub read these) and the
    `per_layer_config` transformers 5.24 saves (and reads first when present)."""
    g_hd = spec.global_head_dim or spec.head_dim
    g_kv = spec.num_global_key_value_heads or spec.num_key_value_heads
    if g_kv != spec.num_key_value_heads and not spec.attention_k_eq_v:
        raise UnsupportedError("HF Gemma 4 gives full layers their own K/V head count only with attention_k_eq_v "
                               "(transformers ignores num_global_key_value_heads otherwise)")
    override = {"head_dim": g_hd, **({"num_key_value_heads": g_kv} if spec.attention_k_eq_v else {})}
    return {"global_head_dim": g_hd, "num_global_key_value_heads": g_kv,
            "per_layer_config": {str(i): dict(override) for i, t in enumerate(spec.layer_types) if t == FULL}}


def set_aside_unused(spec: Any, tensors: dict[str, Any], ignored: dict[str, tuple[tuple[int, ...], str]],
                     config_path: str, where: str) -> list[str]:
    """Move the k/v/k_norm a file stores for KV-shared layers (which never use them) from `tensors` to `ignored`,
    after checking their shapes; a note says whether the file holds them (Google's original files) or not
    (save_pretrained's output, QAT exports). Roles marked `stored_unused` only, on KV-shared layers only."""
    from ..checkpoint import parse_canonical
    from ..roles import ROLE_TABLE

    if not getattr(spec, "num_kv_shared_layers", 0):
        return []
    unused = []
    for name in list(tensors):
        parsed = parse_canonical(name)
        if parsed is None or parsed[1] is None:
            continue
        role, i = parsed
        r = ROLE_TABLE[role]
        if not (r.stored_unused and r.applies(spec) and i < spec.num_layers and spec.kv_shared(i)):
            continue
        want = r.shape_of(spec, i)
        t = tensors[name]
        if tuple(t.shape) != want:
            raise InputError(where, f"{name} (unused: layer {i} shares its K/V) has shape {list(t.shape)} but "
                                    f"{config_path} implies {list(want)} ({r.explain(spec, i)})")
        ignored[name] = (tuple(t.shape), t.dtype)
        unused.append(name)
        del tensors[name]
    n = spec.num_kv_shared_layers
    first = spec.num_layers - n
    layers = f"layers {first}-{spec.num_layers - 1}" if n > 1 else f"layer {first}"
    if unused:
        return [f"the file stores k/v tensors for the {n} KV-shared {layers} ({len(unused)} tensors), which "
                f"never use them (as Google's original files do): set aside"]
    return [f"the {n} KV-shared {layers} store no k/v tensors (as save_pretrained writes them)"]


def without_layer_scalars(spec: Any, tensors: dict[str, Any]) -> tuple[Any, list[str]]:
    """A file that stores no layer_scalar at all loads in transformers with every scalar 1 (a buffer it
    initialises): read it so, with a note; a file that stores some but not all is incomplete (the check says so)."""
    if not getattr(spec, "layer_scalar", False) or any(n.endswith(".layer_scalar") for n in tensors):
        return spec, []
    return spec.replace(layer_scalar=False), [
        "no layer_scalar is stored: transformers runs every layer with scalar 1 (its initial value), which no "
        "released Gemma 4 has"]


__all__ = ["config_extras", "config_geometry", "extra_fields", "intermediate_sizes", "set_aside_unused", "without_layer_scalars"]
