"""keras-hub's Gemma4Backbone preset (Gemma 4's text decoder): its config keys and H5 variable paths, both ways.

keras-hub 0.32 has an importer (utils/transformers/convert_gemma4.py) and an exporter (utils/transformers/export/
gemma4.py); this module is both directions of our own, on the model of formats/keras_gemma3n.py. The common language
is the HF text config: a Keras config is turned into the `gemma4_text` config it stands for (the HF reader builds
the spec from that), and a spec's HF config into the Keras one - every Gemma 4 spec field is read in one place
(formats/hf.py) whichever format it comes from.

Where the tensors live. The functional model's top-level layers are H5 groups named after their class in creation
order (`reversible_embedding`, then with per-layer inputs `embedding`, `dense`, `rms_normalization`, then the
decoder blocks `gemma4_text_decoder_block_N`, then the final `rms_normalization[_1]`); the reader goes by the layer
names Keras writes beside them (`token_embedding`, `per_layer_token_embedding`, ...). Inside a block the groups are
the attribute names. Attention kernels are per head as in Gemma 1-3 (query/key/value (N, d, D), output (H, D, d))
with each layer's own head count and head_dim; the MLP, per-layer-input and router kernels are Dense [in, out];
`layer_scalar` is the block's own variable (`vars/0`, a scalar); the expert bank holds gate and up apart
(`vars/0`, `vars/1`: [E, d, I]), down (`vars/2`: [E, I, d]) and the per-expert scales (`vars/3`), where
transformers fuses gate and up into one [E, 2I, d] tensor.

K=V. keras-hub has no attention_k_eq_v key: a full layer has no value kernel (V is its key projection) exactly when
num_global_key_value_heads is set. transformers gives full layers their own K/V head count only with
attention_k_eq_v, so the two say the same thing: the writer sets num_global_key_value_heads only for a K=V model.

KV sharing. keras-hub, like transformers 5.24, builds no k/v/k_norm on the KV-shared layers, and the writer writes
none (a source that stores them, as older transformers saves did, has them set aside by the HF reader). A Keras
preset that holds them anyway (another tool's) is read with them set aside and a note.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import InputError, UnsupportedError
from .keras_gemma4_config import (BACKBONE, MODULE, hf_config, keras_config,  # the mapping module's interface
                                  keras_problems)

BLOCK_CLASS = "gemma4_text_decoder_block"
SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass(frozen=True)
class KerasVar:
    """One row of the name table: the HF name (`{i}` a layer), the H5 path (under `layers/`; a block's under its
    group), the `attrs['name']` Keras gives the layer holding it, and the layout:
    "same"; "T" (a Dense kernel, the transpose of HF's [out, in]); "q"/"kv" (a query/key/value kernel (N, d, D),
    HF [N*D, d]); "o" (the output kernel (H, D, d), HF [d, H*D]); "scalar" (Keras (), HF [1]); "experts_T" (the
    last two axes swapped); "gate"/"up" (one half of HF's fused gate_up_proj, the last two axes swapped)."""

    hf: str
    path: str
    layer_name: str
    layout: str
    kv: bool = False  # k/v/k_norm: not built on KV-shared layers; v_proj not on K=V full layers either

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


_L = "model.layers.{i}."
TOP_VARS: tuple[KerasVar, ...] = (
    KerasVar("model.embed_tokens.weight", "reversible_embedding/vars/0", "token_embedding", "same"),
    KerasVar("model.embed_tokens_per_layer.weight", "embedding/vars/0", "per_layer_token_embedding", "same"),
    KerasVar("model.per_layer_model_projection.weight", "dense/vars/0", "per_layer_model_projection", "T"),
    KerasVar("model.per_layer_projection_norm.weight", "rms_normalization/vars/0", "per_layer_projection_norm",
             "same"),
    # rms_normalization_1 after a per-layer projection norm; rms_normalization without one (top_path)
    KerasVar("model.norm.weight", "rms_normalization{n}/vars/0", "final_normalization", "same"),
)
BLOCK_VARS: tuple[KerasVar, ...] = (
    KerasVar(_L + "input_layernorm.weight", "pre_attention_norm/vars/0", "pre_attention_norm", "same"),
    KerasVar(_L + "post_attention_layernorm.weight", "post_attention_norm/vars/0", "post_attention_norm", "same"),
    KerasVar(_L + "pre_feedforward_layernorm.weight", "pre_ffw_norm/vars/0", "pre_ffw_norm", "same"),
    KerasVar(_L + "post_feedforward_layernorm.weight", "post_ffw_norm/vars/0", "post_ffw_norm", "same"),
    KerasVar(_L + "self_attn.q_proj.weight", "attention/query_dense/vars/0", "query", "q"),
    KerasVar(_L + "self_attn.k_proj.weight", "attention/key_dense/vars/0", "key", "kv", kv=True),
    KerasVar(_L + "self_attn.v_proj.weight", "attention/value_dense/vars/0", "value", "kv", kv=True),
    KerasVar(_L + "self_attn.o_proj.weight", "attention/output_dense/vars/0", "attention_output", "o"),
    KerasVar(_L + "self_attn.q_norm.weight", "attention/query_norm/vars/0", "query_norm", "same"),
    KerasVar(_L + "self_attn.k_norm.weight", "attention/key_norm/vars/0", "key_norm", "same", kv=True),
    KerasVar(_L + "mlp.gate_proj.weight", "gating_ffw/vars/0", "ffw_gating", "T"),
    KerasVar(_L + "mlp.up_proj.weight", "gating_ffw_2/vars/0", "ffw_gating_2", "T"),
    KerasVar(_L + "mlp.down_proj.weight", "ffw_linear/vars/0", "ffw_linear", "T"),
    KerasVar(_L + "layer_scalar", "vars/0", "decoder_block_{i}", "scalar"),
    KerasVar(_L + "per_layer_input_gate.weight", "per_layer_input_gate/vars/0", "per_layer_input_gate", "T"),
    KerasVar(_L + "per_layer_projection.weight", "per_layer_up_proj/vars/0", "per_layer_up_proj", "T"),
    KerasVar(_L + "post_per_layer_input_norm.weight", "post_per_layer_input_norm/vars/0",
             "post_per_layer_input_norm", "same"),
    KerasVar(_L + "post_feedforward_layernorm_1.weight", "post_ffw_norm_dense/vars/0", "post_ffw_norm_dense", "same"),
    KerasVar(_L + "pre_feedforward_layernorm_2.weight", "pre_ffw_norm_moe/vars/0", "pre_ffw_norm_moe", "same"),
    KerasVar(_L + "post_feedforward_layernorm_2.weight", "post_ffw_norm_moe_path/vars/0", "post_ffw_norm_moe_path",
             "same"),
    KerasVar(_L + "router.scale", "moe_router/vars/0", "moe_router", "same"),
    KerasVar(_L + "router.proj.weight", "moe_router/proj/vars/0", "proj", "T"),
    KerasVar(_L + "experts.gate_up_proj", "moe_expert_bank/vars/0", "moe_expert_bank", "gate"),
    KerasVar(_L + "experts.gate_up_proj", "moe_expert_bank/vars/1", "moe_expert_bank", "up"),
    KerasVar(_L + "experts.down_proj", "moe_expert_bank/vars/2", "moe_expert_bank", "experts_T"),
    KerasVar(_L + "router.per_expert_scale", "moe_expert_bank/vars/3", "moe_expert_bank", "same"),
)
_BLOCK_BY_PATH = {v.path: v for v in BLOCK_VARS}
_TOP_BY_LAYER = {v.layer_name: v for v in TOP_VARS}
_BLOCK_RE = re.compile(r"^layers/%s(?:_(\d{1,6}))?/(.+)$" % BLOCK_CLASS)
_BLOCK_NAME_RE = re.compile(r"^decoder_block_(\d{1,6})$")


def _suffix(n: int) -> str:
    return f"_{n}" if n else ""


def block_group(layer: int) -> str:
    return f"layers/{BLOCK_CLASS}{_suffix(layer)}"


def top_path(v: KerasVar, ple: bool) -> str:
    """A top-level variable's H5 path: keras' class-name groups, numbered in the order the backbone makes them."""
    return "layers/" + v.path.format(n="_1" if ple else "")


def h5_path(v: KerasVar, layer: int | None, ple: bool) -> str:
    return top_path(v, ple) if layer is None else f"{block_group(layer)}/{v.path}"


# ----------------------------------------------------------------------------- layouts
def keras_shape(v: KerasVar, hf_shape: tuple[int, ...], heads: int | None = None,
                head_dim: int | None = None) -> tuple[int, ...]:
    """The Keras variable's shape for an HF tensor of `hf_shape` (q/kv/o: the layer's head count and head_dim)."""
    if v.layout == "T":
        return tuple(reversed(hf_shape))
    if v.layout in ("q", "kv"):
        assert heads is not None and head_dim is not None
        return (heads, hf_shape[1], head_dim)
    if v.layout == "o":
        assert heads is not None and head_dim is not None
        return (heads, head_dim, hf_shape[0])
    if v.layout == "scalar":
        return ()
    if v.layout == "experts_T":
        return (hf_shape[0], hf_shape[2], hf_shape[1])
    if v.layout in ("gate", "up"):
        return (hf_shape[0], hf_shape[2], hf_shape[1] // 2)
    return tuple(hf_shape)


def write_layout(v: KerasVar, hf_shape: tuple[int, ...], keras: tuple[int, ...]) -> Any:
    """The re-layout from HF's layout to the Keras variable (None: the same bytes; gate/up are sliced instead)."""
    from ..arrays import Layout

    if v.layout == "T":
        return Layout(tuple(hf_shape), (1, 0), keras)
    if v.layout in ("q", "kv"):  # [N*D, d] -> (N, d, D)
        n, d, hd = keras
        return Layout((n, hd, d), (0, 2, 1), keras)
    if v.layout == "o":  # [d, H*D] -> (H, D, d)
        return Layout(tuple(hf_shape), (1, 0), keras)
    if v.layout == "experts_T":
        return Layout(tuple(hf_shape), (0, 2, 1), keras)
    return None


def read_layout(v: KerasVar, stored: tuple[int, ...]) -> Any:
    """The re-layout from a stored Keras variable to HF's layout (None: the same bytes, perhaps reshaped)."""
    from ..arrays import Layout

    if v.layout == "T":
        return Layout(tuple(stored), (1, 0), tuple(reversed(stored)))
    if v.layout in ("q", "kv"):  # (N, d, D) -> [N*D, d]
        n, d, hd = stored
        return Layout((n, d, hd), (0, 2, 1), (n * hd, d))
    if v.layout == "o":  # (H, D, d) -> [d, H*D]
        h, hd, d = stored
        return Layout((h * hd, d), (1, 0), (d, h * hd))
    if v.layout == "experts_T":
        return Layout(tuple(stored), (0, 2, 1), (stored[0], stored[2], stored[1]))
    return None


_RANK = {"T": 2, "q": 3, "kv": 3, "o": 3, "scalar": 0, "experts_T": 3, "gate": 3, "up": 3}


# ----------------------------------------------------------------------------- weights: H5 datasets <-> HF names
def _kv_absent(spec: Any, i: int, v: KerasVar) -> bool:
    """Whether keras-hub builds no variable of row `v` on layer i (k/v/k_norm of a KV-shared layer; v of a K=V
    full layer)."""
    if not v.kv:
        return False
    return spec.kv_shared(i) or (v.hf.endswith("v_proj.weight") and spec.k_eq_v(i))


def map_datasets(datasets: dict[str, Any], names: dict[str, str], where: str) -> tuple[
        dict[str, tuple[KerasVar, int | None, Any]], dict[str, Any]]:
    """Dataset path -> (row, layer, var) for the text decoder's weights; plus the datasets that are not (an
    encoder's, for a multimodal preset). A vars group whose `attrs['name']` contradicts the table is refused."""
    mapped: dict[str, tuple[KerasVar, int | None, Any]] = {}
    other: dict[str, Any] = {}
    ple_file = top_path(TOP_VARS[4], True) in datasets  # two rms_normalization groups: the first is PLE's
    for dpath, var in datasets.items():
        group = dpath.rsplit("/", 1)[0]
        attr = names.get(group)
        m = _BLOCK_RE.match(dpath)
        if m:
            row = _BLOCK_BY_PATH.get(m.group(2))
            if row is None:
                raise InputError(where, f"{dpath} is no {BACKBONE} decoder-block weight")
            bm = _BLOCK_NAME_RE.match(names.get(block_group(int(m.group(1) or 0)) + "/vars") or "")
            layer = int(bm.group(1)) if bm else int(m.group(1) or 0)
            want = row.layer_name.format(i=layer)
            if attr not in (None, want):
                raise InputError(where, f"{dpath} belongs to layer {attr!r}, expected {want!r}")
            mapped[dpath] = (row, layer, var)
            continue
        if attr is not None:  # Keras' layer name says which top-level variable it is
            top = _TOP_BY_LAYER.get(attr)
        else:  # no layer names: by path
            top = next((v for v in TOP_VARS if dpath == top_path(v, ple_file)
                        and (ple_file or v.layer_name != "per_layer_projection_norm")), None)
        if top is not None and dpath.endswith("/vars/0") and dpath.count("/") == 3:
            mapped[dpath] = (top, None, var)
        else:
            other[dpath] = var
    return mapped, other


def _ref(name: str, var: Any, row: KerasVar) -> Any:
    """A TensorRef of a dataset in HF layout."""
    from ..checkpoint import TensorRef
    from .keras_h5 import read_var

    if len(var.shape) != _RANK.get(row.layout, len(var.shape)):
        raise InputError(var.file, f"{var.path} has shape {list(var.shape)}, expected {_RANK[row.layout]} "
                                   f"dimensions")
    relayout = read_layout(row, tuple(var.shape))
    shape = relayout.shape if relayout is not None else ((1,) if row.layout == "scalar" else tuple(var.shape))
    span = (var.file, var.offset, var.nbytes) if relayout is None and var.offset is not None else None
    raw = (var.file, var.offset, var.nbytes, relayout) if relayout is not None and var.offset is not None else None

    def load() -> Any:
        arr = read_var(var, mapped=relayout is not None)
        return arr.reshape(shape) if relayout is None else relayout.apply(arr)

    return TensorRef(name=name, shape=tuple(shape), dtype=var.dtype, nbytes=var.nbytes,
                     origin=f"{var.file}:{var.path}", loader=load, span=span, stored=raw)


def _fused_ref(name: str, gate: Any, up: Any) -> Any:
    """transformers' gate_up_proj [E, 2I, d] from keras-hub's gate and up banks ([E, d, I] each)."""
    import numpy as np

    from ..checkpoint import TensorRef
    from .keras_h5 import read_var

    if len(gate.shape) != 3 or tuple(gate.shape) != tuple(up.shape):
        raise InputError(gate.file, f"{gate.path} {list(gate.shape)} and {up.path} {list(up.shape)}: expected two "
                                    f"[experts, hidden, width] banks of one shape")
    if gate.dtype != up.dtype:
        raise InputError(gate.file, f"{gate.path} is {gate.dtype}, {up.path} {up.dtype}: one expert bank, two dtypes")
    e, d, i = gate.shape

    def load() -> Any:
        return np.concatenate([read_var(gate).transpose(0, 2, 1), read_var(up).transpose(0, 2, 1)], axis=1)

    return TensorRef(name=name, shape=(e, 2 * i, d), dtype=gate.dtype, nbytes=gate.nbytes + up.nbytes,
                     origin=f"{gate.file}:{gate.path} + {up.path}", loader=load)


# The config keys that declare an encoder beside the text decoder (their weights are then set aside, not errors)
ENCODER_KEYS = ("vision_encoder", "audio_encoder")
# What a Keras config cannot hold, kept by our writer in metadata.json under "gemma_inspect".
KEPT = ("max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")


def read(path: str, cfg: dict[str, Any], config_path: str) -> Any:
    """A Gemma4Backbone preset directory -> Checkpoint (the text decoder; a multimodal preset's encoders are
    reported as ignored)."""
    from ..checkpoint import check_against_spec, expected_tensors
    from .keras_preset import open_planned_preset, preset_checkpoint

    restore, hf_cfg, notes, spec, files, where, mapped, ignored = open_planned_preset(
        path, cfg, config_path, KEPT, hf_config, map_datasets, ENCODER_KEYS, BACKBONE)
    tensors: dict[str, Any] = {}
    halves: dict[str, dict[str, Any]] = {}
    set_aside: list[int] = []
    for dpath, (row, layer, var) in sorted(mapped.items()):
        if layer is not None and not 0 <= layer < spec.num_layers:
            raise InputError(where, f"{dpath} is decoder block {layer}, but {config_path} has {spec.num_layers}")
        name = row.hf.format(i=layer)
        if layer is not None and _kv_absent(spec, layer, row):  # another tool's unused k/v: set aside
            ignored[dpath] = (var.shape, var.dtype)
            set_aside.append(layer)
            continue
        if row.layout in ("gate", "up"):
            halves.setdefault(name, {})[row.layout] = var
            continue
        if name in tensors:
            raise InputError(where, f"two datasets map to {name}: {tensors[name].origin} and {dpath}")
        tensors[name] = _ref(name, var, row)
    for name, parts in halves.items():
        if set(parts) != {"gate", "up"}:
            have = next(iter(parts.values()))
            raise InputError(where, f"{have.path}: the expert bank has a {' '.join(parts)} kernel but not its "
                                    f"{'up' if 'gate' in parts else 'gate'} kernel")
        tensors[name] = _fused_ref(name, parts["gate"], parts["up"])
    if set_aside:
        layers = sorted(set(set_aside))
        notes.append(f"{len(set_aside)} k/v variables of layers {', '.join(map(str, layers))} set aside: those "
                     f"layers reuse an earlier layer's keys and values (or take V from K), and keras-hub never "
                     f"reads them")
    check_against_spec(spec, tensors, config_path, where)
    expected = expected_tensors(spec)
    for dpath, (row, layer, var) in mapped.items():
        # the canonical shape alone is not enough: a (D, d, N) query kernel also flattens to [N*D, d]
        if layer is None or dpath in ignored or row.layout not in ("q", "kv", "o", "gate", "up"):
            continue
        heads = spec.layer_kv_heads(layer) if row.layout == "kv" else spec.num_attention_heads
        want = keras_shape(row, expected[row.hf.format(i=layer)], heads, spec.layer_head_dim(layer))
        if tuple(var.shape) != want:
            raise InputError(var.file, f"{var.path} has shape {list(var.shape)} but {config_path} implies "
                                       f"{list(want)}")
    tensors = {n: tensors[n] for n in expected}
    return preset_checkpoint(path, cfg, spec, tensors, notes, ignored, files, KEPT, restore)


def _block_vars(path: str) -> tuple[str, str] | None:
    """The `vars` group of the decoder block an H5 path lies in, and the name Keras gives it (None: not in one)."""
    m = _BLOCK_RE.match(path)
    return (block_group(int(m.group(1) or 0)) + "/vars", f"decoder_block_{int(m.group(1) or 0)}") if m else None


def _half(ref: Any, part: str) -> Any:
    """One half of a fused gate_up_proj [E, 2I, d] in keras-hub's layout [E, d, I] (loaded, sliced, swapped)."""
    import numpy as np

    from ..checkpoint import TensorRef

    e, two_i, d = ref.shape
    i = two_i // 2
    sl = slice(0, i) if part == "gate" else slice(i, two_i)
    return TensorRef(name=f"{ref.name}[{part}]", shape=(e, d, i), dtype=ref.dtype, nbytes=ref.nbytes // 2,
                     origin=ref.origin, loader=lambda: np.ascontiguousarray(ref.load()[:, sl, :].transpose(0, 2, 1)))


def _ones(name: str, dtype: str) -> Any:
    """A TensorRef of a layer_scalar of 1 (what transformers runs when the file stores none)."""
    import numpy as np

    from ..checkpoint import TensorRef
    from ..dtypes import numpy_dtype

    dt = dtype if dtype in ("float32", "bfloat16", "float16") else "float32"
    return TensorRef(name=name, shape=(1,), dtype=dt, origin="(not stored: 1)",
                     nbytes=np.dtype(numpy_dtype(dt)).itemsize, loader=lambda: np.ones((1,), dtype=numpy_dtype(dt)))


def plan(spec: Any, refs: dict[str, Any]) -> list[tuple[str, str, str, tuple[int, ...], Any, Any]]:
    """Every Keras variable of a checkpoint: (key, H5 path, layer name, Keras shape, source ref, layout), in
    keras-hub's file order; a key is the HF name (gate/up: the name with [gate]/[up])."""
    ple = bool(spec.per_layer_input_size)
    rows = []
    for v in TOP_VARS:
        if v.hf in refs:
            ref = refs[v.hf]
            shape = keras_shape(v, tuple(ref.shape))
            rows.append((v.hf, top_path(v, ple), v.layer_name, shape, ref, write_layout(v, tuple(ref.shape), shape)))
    for i in range(spec.num_layers):
        heads = {"q": spec.num_attention_heads, "o": spec.num_attention_heads, "kv": spec.layer_kv_heads(i)}
        for v in BLOCK_VARS:
            name = v.hf.format(i=i)
            if name not in refs or _kv_absent(spec, i, v):
                continue
            ref = refs[name]
            if v.layout in ("gate", "up"):
                ref = _half(ref, v.layout)
                rows.append((ref.name, h5_path(v, i, ple), v.layer_name, tuple(ref.shape), ref, None))
                continue
            shape = keras_shape(v, tuple(ref.shape), heads.get(v.layout), spec.layer_head_dim(i))
            rows.append((name, h5_path(v, i, ple), v.layer_name.format(i=i), shape, ref,
                         write_layout(v, tuple(ref.shape), shape)))
    rows.sort(key=lambda r: r[1])
    return rows


def write(ckpt: Any, dest: str, options: Any, progress: Any) -> None:
    """Write a Gemma 4 checkpoint as a keras-hub Gemma4Backbone preset: config.json, model.weights.h5 (or shards
    and model.weights.json), metadata.json and, with a tokenizer, the CausalLM files."""
    from . import hf as hf_format
    from .keras import refuse_unless_forced
    from .keras_preset import write_preset

    spec = ckpt.spec
    hf_cfg = hf_format.config_dict(spec)
    refuse_unless_forced(ckpt, keras_problems(hf_cfg), options)
    declared = options.dtype if options.dtype != "keep" else spec.dtype
    refs = {n: r for n, r in ckpt.tensors.items() if n != "lm_head.weight"}  # Keras ties the output matrix
    known = {v.hf for v in TOP_VARS} | {v.hf.format(i=i) for v in BLOCK_VARS for i in range(spec.num_layers)}
    stray = sorted(set(refs) - known)
    if stray:
        raise UnsupportedError(f"tensor {stray[0]} has no place in a {BACKBONE} preset")
    if not spec.layer_scalar:  # a file storing none runs with 1 on every layer; keras-hub needs the variable
        refs.update({f"model.layers.{i}.layer_scalar": _ones(f"model.layers.{i}.layer_scalar",
                                                             refs["model.embed_tokens.weight"].dtype)
                     for i in range(spec.num_layers)})
        options.notes.append(f"the source stores no layer_scalar (transformers runs 1 on every layer): written as 1 "
                             f"on each of the {spec.num_layers} blocks, where keras-hub keeps one")
    rows = [(k, path, name, shape, options.float_dtype(ref), ref, layout)
            for k, path, name, shape, ref, layout in plan(spec, refs)]
    write_preset(ckpt, dest, options, progress, rows, keras_config(hf_cfg, declared), declared, {
        "max_position_embeddings": spec.max_position_embeddings, "bos_token_id": spec.bos_token_id,
        "eos_token_id": spec.eos_token_id, "pad_token_id": spec.pad_token_id}, _block_vars)


# ----------------------------------------------------------------------------- a built backbone's variables
def backbone_variable(backbone: Any, path: str, layer_name: str) -> Any:
    """The variable of a built Gemma4Backbone at an H5 path (a block's by attribute, a top-level one by layer
    name), as Keras saves it: a layer's own trainable then non-trainable variables, numbered."""
    m = _BLOCK_RE.match(path)
    if m:
        obj = backbone.transformer_layers[int(m.group(1) or 0)]
        rel = m.group(2)
    else:
        obj = backbone.get_layer(layer_name)
        rel = path.split("/", 2)[2]
    where, _, index = rel.rpartition("vars/")
    for attr in [a for a in where.strip("/").split("/") if a]:
        obj = getattr(obj, attr)
    own = list(obj._trainable_variables) + list(obj._non_trainable_variables)
    return own[int(index)]


__all__ = ["TOP_VARS", "BLOCK_VARS", "KerasVar", "BACKBONE", "MODULE", "block_group", "keras_config", "hf_config",
           "keras_problems", "map_datasets", "plan", "read", "write", "backbone_variable"]
