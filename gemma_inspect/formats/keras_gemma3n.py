"""keras-hub's Gemma3nBackbone preset (Gemma 3n's text decoder): its config keys and H5 variable paths, both ways.

keras-hub 0.32 has an importer for Gemma 3n (utils/transformers/convert_gemma3n.py) and no exporter; this module is
both directions. The common language is the HF text config: a Keras config is turned into the `gemma3n_text` config
it stands for (and the HF reader builds the spec from that), and a spec's HF config into the Keras one - so every
Gemma 3n spec field is read in one place (formats/hf.py) whichever format it comes from.

Where the tensors live. keras-hub saves the text decoder under the multimodal embedding processor, the first layer
that tracks it (`layers/gemma3n_multimodal_embedding_processor/language_model/...`). Every weight is a Dense kernel
[in, out] (HF [out, in], transposed), an embedding [rows, width] or a vector, as is: no per-head reshapes, unlike
Gemma 1-3's einsum kernels. The AltUp projections are Python lists of Dense layers, whose H5 groups Keras names
after the class (`dense`, `dense_1`, `dense_2`); the decoder blocks after theirs (`gemma3n_text_decoder_block_N`).
`correct_output_scale` is the AltUp layer's own variable (`altup/vars/0`).

KV sharing. keras-hub builds k_proj, v_proj and k_norm on every layer, the KV-shared ones included, and never uses
them there (those layers read the cache of the last non-shared layer of their type, as transformers does).
transformers 5.24 neither builds nor saves them. The writer fills them (k/v zeros, k_norm ones) so that
`from_preset` finds every variable; the reader sets them aside.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..errors import InputError, UnsupportedError
from .common import show
from .keras_preset import backbone_fields

MODULE = "keras_hub.src.models.gemma3n.gemma3n_backbone"
BACKBONE = "Gemma3nBackbone"
# Where keras-hub 0.32 saves the text decoder (the multimodal embedding processor tracks it first).
LM_PREFIX = "layers/gemma3n_multimodal_embedding_processor/language_model/"
BLOCK_CLASS = "gemma3n_text_decoder_block"
LIST_CLASS = "dense"  # the AltUp projections: a list of keras.layers.Dense


@dataclass(frozen=True)
class KerasVar:
    """One row of the name table: the HF name (`{i}` a layer, `{k}` an AltUp projection), the H5 path under the
    text model (`{block}` the decoder block's group, `{dense}` the list entry's), the `attrs['name']` Keras gives the
    layer holding it, and the layout ("T": a Dense kernel, the transpose of HF's [out, in])."""

    hf: str
    path: str
    layer_name: str
    layout: str  # "same" | "T"
    kv: bool = False  # k/v/k_norm: built by keras-hub on KV-shared layers too, unused there

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


_L = "model.layers.{i}."
VARS: tuple[KerasVar, ...] = (
    KerasVar("model.embed_tokens.weight", "embed_tokens/embedding/vars/0", "embedding", "same"),
    KerasVar("model.embed_tokens_per_layer.weight", "embed_tokens_per_layer/embedding/vars/0", "embedding", "same"),
    KerasVar("model.per_layer_model_projection.weight", "per_layer_model_projection/vars/0",
             "per_layer_model_projection", "T"),
    KerasVar("model.per_layer_projection_norm.weight", "per_layer_projection_norm/vars/0", "per_layer_projection_norm",
             "same"),
    # stream k + 1 of AltUp: HF's list index k, Keras' layer name altup_projection_{k+1}
    KerasVar("model.altup_projections.{k}.weight", "altup_projections/{dense}/vars/0", "altup_projection_{k1}", "T"),
    KerasVar("model.altup_unembed_projections.{k}.weight", "altup_unembed_projections/{dense}/vars/0",
             "altup_unembed_projection_{k1}", "T"),
    KerasVar("model.norm.weight", "final_normalization/vars/0", "norm", "same"),
    KerasVar(_L + "input_layernorm.weight", "{block}/input_layernorm/vars/0", "input_layernorm", "same"),
    KerasVar(_L + "post_attention_layernorm.weight", "{block}/post_attention_layernorm/vars/0",
             "post_attention_layernorm", "same"),
    KerasVar(_L + "pre_feedforward_layernorm.weight", "{block}/pre_feedforward_layernorm/vars/0",
             "pre_feedforward_layernorm", "same"),
    KerasVar(_L + "post_feedforward_layernorm.weight", "{block}/post_feedforward_layernorm/vars/0",
             "post_feedforward_layernorm", "same"),
    KerasVar(_L + "self_attn.q_proj.weight", "{block}/attention/q_proj/vars/0", "q_proj", "T"),
    KerasVar(_L + "self_attn.k_proj.weight", "{block}/attention/k_proj/vars/0", "k_proj", "T", kv=True),
    KerasVar(_L + "self_attn.v_proj.weight", "{block}/attention/v_proj/vars/0", "v_proj", "T", kv=True),
    KerasVar(_L + "self_attn.o_proj.weight", "{block}/attention/o_proj/vars/0", "o_proj", "T"),
    KerasVar(_L + "self_attn.q_norm.weight", "{block}/attention/q_norm/vars/0", "q_norm", "same"),
    KerasVar(_L + "self_attn.k_norm.weight", "{block}/attention/k_norm/vars/0", "k_norm", "same", kv=True),
    KerasVar(_L + "mlp.gate_proj.weight", "{block}/mlp/gate_proj/vars/0", "gate_proj", "T"),
    KerasVar(_L + "mlp.up_proj.weight", "{block}/mlp/up_proj/vars/0", "up_proj", "T"),
    KerasVar(_L + "mlp.down_proj.weight", "{block}/mlp/down_proj/vars/0", "down_proj", "T"),
    KerasVar(_L + "altup.correct_output_scale", "{block}/altup/vars/0", "altup", "same"),
    KerasVar(_L + "altup.correction_coefs.weight", "{block}/altup/correction_coefs/vars/0", "correction_coefs", "T"),
    KerasVar(_L + "altup.prediction_coefs.weight", "{block}/altup/prediction_coefs/vars/0", "prediction_coefs", "T"),
    KerasVar(_L + "altup.modality_router.weight", "{block}/altup/modality_router/vars/0", "modality_router", "T"),
    KerasVar(_L + "altup.router_norm.weight", "{block}/altup/router_norm/vars/0", "router_norm", "same"),
    KerasVar(_L + "laurel.linear_left.weight", "{block}/laurel/linear_left/vars/0", "linear_left", "T"),
    KerasVar(_L + "laurel.linear_right.weight", "{block}/laurel/linear_right/vars/0", "linear_right", "T"),
    KerasVar(_L + "laurel.post_laurel_norm.weight", "{block}/laurel/post_laurel_norm/vars/0", "post_laurel_norm",
             "same"),
    KerasVar(_L + "per_layer_input_gate.weight", "{block}/per_layer_input_gate/vars/0", "per_layer_input_gate", "T"),
    KerasVar(_L + "per_layer_projection.weight", "{block}/per_layer_projection/vars/0", "per_layer_projection", "T"),
    KerasVar(_L + "post_per_layer_input_norm.weight", "{block}/post_per_layer_input_norm/vars/0",
             "post_per_layer_input_norm", "same"),
)


def _suffix(n: int) -> str:
    """Keras' de-duplication suffix of the n-th layer of one class in a list: '', '_1', '_2', ..."""
    return f"_{n}" if n else ""


def block_group(layer: int) -> str:
    return f"transformer_layers/{BLOCK_CLASS}{_suffix(layer)}"


@lru_cache(maxsize=None)
def _hf_patterns() -> tuple[tuple[KerasVar, re.Pattern[str]], ...]:
    out = []
    for v in VARS:
        rx = re.escape(v.hf).replace(r"\{i\}", r"(?P<i>\d{1,6})").replace(r"\{k\}", r"(?P<k>\d{1,3})")
        out.append((v, re.compile("^" + rx + "$")))
    return tuple(out)


@lru_cache(maxsize=None)
def _path_patterns() -> tuple[tuple[KerasVar, re.Pattern[str]], ...]:
    out = []
    for v in VARS:
        rx = re.escape(v.path).replace(r"\{block\}", r"transformer_layers/%s(?:_(?P<i>\d{1,6}))?" % BLOCK_CLASS)
        rx = rx.replace(r"\{dense\}", r"%s(?:_(?P<k>\d{1,3}))?" % LIST_CLASS)
        out.append((v, re.compile("^" + rx + "$")))
    return tuple(out)


def keras_var(hf_name: str) -> tuple[KerasVar, str, str] | None:
    """(row, H5 path under the text model, layer name) of an HF tensor name; None for a name that is no Gemma 3n
    text-decoder weight."""
    for v, rx in _hf_patterns():
        m = rx.match(hf_name)
        if m:
            i = int(m.group("i")) if "i" in rx.groupindex else None
            k = int(m.group("k")) if "k" in rx.groupindex else None
            path = v.path.format(block=block_group(i) if i is not None else "",
                                 dense=LIST_CLASS + _suffix(k) if k is not None else "")
            name = v.layer_name.format(k1=k + 1) if k is not None else v.layer_name
            return v, path, name
    return None


def hf_name_of(rel_path: str) -> tuple[KerasVar, str] | None:
    """(row, HF name) of an H5 dataset path under the text model; None for a path that is no such weight."""
    for v, rx in _path_patterns():
        m = rx.match(rel_path)
        if m:
            fields: dict[str, Any] = {}
            if "i" in rx.groupindex:
                fields["i"] = int(m.group("i") or 0)
            if "k" in rx.groupindex:
                fields["k"] = int(m.group("k") or 0)
            return v, v.hf.format(**fields)
    return None


def keras_shape(v: KerasVar, hf_shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(reversed(hf_shape)) if v.layout == "T" else tuple(hf_shape)


# ----------------------------------------------------------------------------- config: Keras <-> HF text config
# Keras config key -> HF text config key, for the values that are the same on both sides.
SAME_KEYS: dict[str, str] = {
    "text_vocab_size": "vocab_size",
    "text_hidden_size": "hidden_size",
    "num_hidden_layers": "num_hidden_layers",
    "pad_token_id": "pad_token_id",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "layer_types": "layer_types",
    "sliding_window": "sliding_window",
    "max_position_embeddings": "max_position_embeddings",
    "vocab_size_per_layer_input": "vocab_size_per_layer_input",
    "hidden_size_per_layer_input": "hidden_size_per_layer_input",
    "altup_num_inputs": "altup_num_inputs",
    "laurel_rank": "laurel_rank",
    "altup_coef_clip": "altup_coef_clip",  # a training-time clamp of prediction_coefs: no effect on inference
    "altup_active_idx": "altup_active_idx",
    "altup_correct_scale": "altup_correct_scale",
    "num_kv_shared_layers": "num_kv_shared_layers",
    "final_logit_soft_cap": "final_logit_softcapping",
    "rms_norm_eps": "rms_norm_eps",
}
# keras-hub's spelling of transformers' gelu_pytorch_tanh (Gemma3nTextMLP: gelu(approximate=True))
KERAS_GELU_TANH = "gelu_approximate"
HF_GELU_TANH = "gelu_pytorch_tanh"
# The multimodal arguments of Gemma3nBackbone, as its defaults leave them for a text-only model (keras-hub
# builds no encoder or embedder when the encoder configs are None).
TEXT_ONLY = dict(vision_encoder_config=None, vision_hidden_size=2048, vision_vocab_size=128, vision_vocab_offset=100,
                 vision_soft_tokens_per_image=256, image_token_id=98, audio_encoder_config=None, audio_hidden_size=32,
                 audio_vocab_size=128, audio_vocab_offset=228, audio_soft_tokens_per_image=188, audio_token_id=99)
# Gemma3nBackbone.get_config's key order (after name, trainable, dtype), for a config.json keras-hub would write.
CONFIG_ORDER = ("text_vocab_size", "text_hidden_size", "num_hidden_layers", "pad_token_id", "num_attention_heads",
                "num_key_value_heads", "head_dim", "intermediate_size", "hidden_activation", "layer_types",
                "sliding_window", "rope_theta", "max_position_embeddings", "vocab_size_per_layer_input",
                "hidden_size_per_layer_input", "altup_num_inputs", "laurel_rank", "attention_bias",
                "attention_dropout", "rope_scaling", "rope_local_base_freq", "activation_sparsity_pattern",
                "altup_coef_clip", "altup_active_idx", "altup_correct_scale", "num_kv_shared_layers",
                "final_logit_soft_cap") + tuple(TEXT_ONLY) + ("rms_norm_eps",)
# Gemma3nBackbone's defaults for keys a config may leave out
KERAS_DEFAULTS: dict[str, Any] = dict(attention_bias=False, attention_dropout=0.0, rope_scaling=None,
                                      rope_local_base_freq=10000.0, activation_sparsity_pattern=None,
                                      altup_coef_clip=None, altup_active_idx=0, altup_correct_scale=True,
                                      num_kv_shared_layers=0, final_logit_soft_cap=None, rms_norm_eps=1e-6)
REQUIRED = ("text_vocab_size", "text_hidden_size", "num_hidden_layers", "pad_token_id", "num_attention_heads",
            "num_key_value_heads", "head_dim", "intermediate_size", "hidden_activation", "layer_types",
            "sliding_window", "rope_theta", "max_position_embeddings", "vocab_size_per_layer_input",
            "hidden_size_per_layer_input", "altup_num_inputs", "laurel_rank")


def _rope_theta(params: Any, layer_type: str, where: str) -> float:
    p = params.get(layer_type) if isinstance(params, dict) else None
    if not isinstance(p, dict):
        raise UnsupportedError(f"{where}: rope_parameters has no {layer_type!r} entry")
    if p.get("rope_type", "default") != "default" or p.get("factor") not in (None, 1, 1.0):
        raise UnsupportedError(f"{where}: {layer_type} RoPE {show(p)}: keras-hub's Gemma3nBackbone runs plain RoPE "
                               f"(one scaling factor for every layer, none here)")
    return float(p["rope_theta"])


def keras_problems(hf: dict[str, Any]) -> list[str]:
    """What Gemma3nBackbone cannot express about an HF Gemma 3n text config (empty: all of it)."""
    problems = []
    if hf.get("hidden_activation", HF_GELU_TANH) != HF_GELU_TANH:
        problems.append(f"activation {hf.get('hidden_activation')}: keras-hub's Gemma3nBackbone is written for the "
                        f"tanh GELU")
    if not hf.get("tie_word_embeddings", True):
        problems.append("an untied output matrix: keras-hub's Gemma3nBackbone always ties it to the embedding")
    if hf.get("attention_bias"):
        problems.append("attention biases: this converter maps kernels only")
    if hf.get("attn_logit_softcapping") is not None:
        problems.append("an attention-logit soft cap: keras-hub's Gemma 3n attention has none")
    return problems


def keras_config(hf: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The Gemma3nBackbone config.json standing for an HF `gemma3n_text` config (as formats/hf.config_dict writes
    it)."""
    n = hf["num_hidden_layers"]
    inter = hf["intermediate_size"]
    sparsity = hf.get("activation_sparsity_pattern")
    c: dict[str, Any] = {k: hf.get(h) for k, h in SAME_KEYS.items()}
    c.update(
        intermediate_size=list(inter) if isinstance(inter, (list, tuple)) else [inter] * n,
        hidden_activation=KERAS_GELU_TANH,
        rope_theta=_rope_theta(hf.get("rope_parameters"), "full_attention", "HF config"),
        rope_local_base_freq=_rope_theta(hf.get("rope_parameters"), "sliding_attention", "HF config"),
        rope_scaling=None,
        attention_bias=False,
        attention_dropout=0.0,
        # keras-hub reads an absent pattern as dense everywhere; transformers fills one in: always written out
        activation_sparsity_pattern=[float(x) for x in sparsity] if sparsity is not None else None,
        **TEXT_ONLY,
    )
    own = {"name": "gemma3n_backbone", "trainable": True,
           "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": dtype},
                     "registered_name": None}}
    config = {**own, **{k: c[k] for k in CONFIG_ORDER}}
    return {"module": MODULE, "class_name": BACKBONE, "config": config, "registered_name": f"keras_hub>{BACKBONE}"}


def hf_config(cfg: dict[str, Any], path: str, restore: dict[str, Any] | None = None) -> tuple[dict[str, Any],
                                                                                              list[str]]:
    """The HF `gemma3n_text` config a Gemma3nBackbone config stands for, and notes. `restore`: what a Keras config
    cannot hold (bos/eos token ids), kept by our writer in metadata.json."""
    c = backbone_fields(cfg, path, BACKBONE, REQUIRED, KERAS_DEFAULTS)
    notes: list[str] = []
    if c.get("vision_encoder_config") or c.get("audio_encoder_config"):
        notes.append("multimodal Keras Gemma 3n preset: the vision and audio encoders are reported and ignored; only "
                     "the text decoder is read")
    act = c["hidden_activation"]
    if act != KERAS_GELU_TANH:
        raise UnsupportedError(f"{path}: hidden_activation {act!r}: only {KERAS_GELU_TANH!r} (transformers' "
                               f"{HF_GELU_TANH}) is a Gemma 3n activation")
    if c.get("attention_bias"):
        raise UnsupportedError(f"{path}: attention_bias=true: Gemma 3n has no attention biases")
    if c.get("rope_scaling") not in (None, 1, 1.0):
        raise UnsupportedError(f"{path}: rope_scaling {show(c['rope_scaling'])}: keras-hub scales every layer's "
                               f"RoPE by it, which no transformers Gemma 3n config expresses")
    n = c["num_hidden_layers"]
    inter = c["intermediate_size"]
    sparsity = c["activation_sparsity_pattern"]
    if sparsity is None and isinstance(n, int):
        # keras-hub reads an absent pattern as no sparsity anywhere (transformers would fill one in)
        sparsity = [0.0] * n
    hf: dict[str, Any] = {"architectures": ["Gemma3nForCausalLM"], "model_type": "gemma3n_text"}
    hf.update({h: c[k] for k, h in SAME_KEYS.items()})
    hf.update(
        intermediate_size=inter,
        hidden_activation=HF_GELU_TANH,
        activation_sparsity_pattern=sparsity,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": c["rope_theta"]},
                         "sliding_attention": {"rope_type": "default", "rope_theta": c["rope_local_base_freq"]}},
        attention_bias=False,
        tie_word_embeddings=True,  # keras-hub's token_embedding(reverse=True) is the output matrix
        bos_token_id=2, eos_token_id=1,
    )
    policy = c.get("dtype")
    if isinstance(policy, dict):
        policy = (policy.get("config") or {}).get("name")
    if isinstance(policy, str):
        hf["dtype"] = policy[len("mixed_"):] if policy.startswith("mixed_") else policy
    for k, v in (restore or {}).items():
        hf[k] = v
    return hf, notes



# ----------------------------------------------------------------------------- weights: H5 datasets <-> HF names
def shared_layers(hf: dict[str, Any]) -> range:
    """The KV-shared layers (transformers: the last num_kv_shared_layers; keras-hub: the same, when any)."""
    n, shared = hf["num_hidden_layers"], hf.get("num_kv_shared_layers") or 0
    return range(n - shared, n) if 0 < shared < n else range(0)


def unused_kv(hf: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], float]]:
    """HF name -> (shape, fill value) of what keras-hub builds on the KV-shared layers and never reads there."""
    kv = hf["num_key_value_heads"] * hf["head_dim"]
    out: dict[str, tuple[tuple[int, ...], float]] = {}
    for i in shared_layers(hf):
        out[f"model.layers.{i}.self_attn.k_proj.weight"] = ((kv, hf["hidden_size"]), 0.0)
        out[f"model.layers.{i}.self_attn.v_proj.weight"] = ((kv, hf["hidden_size"]), 0.0)
        out[f"model.layers.{i}.self_attn.k_norm.weight"] = ((hf["head_dim"],), 1.0)
    return out


def filler(name: str, shape: tuple[int, ...], value: float, dtype: str) -> Any:
    """A TensorRef of a constant tensor (an unused k/v keras-hub needs on a KV-shared layer)."""
    import numpy as np

    from ..checkpoint import TensorRef
    from ..dtypes import numpy_dtype

    return TensorRef(name=name, shape=shape, dtype=dtype, origin="(unused on a KV-shared layer)",
                     nbytes=int(np.prod(shape)) * np.dtype(numpy_dtype(dtype)).itemsize,
                     loader=lambda: np.full(shape, value, dtype=numpy_dtype(dtype)))


def map_datasets(datasets: dict[str, Any], names: dict[str, str], where: str) -> tuple[
        dict[str, tuple[str, Any]], dict[str, Any]]:
    """Dataset path -> (HF name, var) for the text decoder's weights; plus the datasets that are not (an encoder's,
    for a multimodal preset). A vars group whose `attrs['name']` contradicts the table is refused."""
    mapped: dict[str, tuple[str, Any]] = {}
    other: dict[str, Any] = {}
    for dpath, var in datasets.items():
        if not dpath.startswith(LM_PREFIX):
            other[dpath] = var
            continue
        rel = dpath[len(LM_PREFIX):]
        found = hf_name_of(rel)
        if found is None:
            raise InputError(where, f"{dpath} is no {BACKBONE} text-decoder weight")
        row, name = found
        want = keras_var(name)
        attr = names.get(dpath.rsplit("/", 1)[0])
        if want is not None and attr not in (None, want[2]):
            raise InputError(where, f"{dpath} belongs to layer {attr!r}, expected {want[2]!r}")
        mapped[dpath] = (name, var)
    return mapped, other


def _ref(name: str, var: Any, row: KerasVar) -> Any:
    """A TensorRef of a dataset in HF layout (a Dense kernel transposed on load)."""
    from ..checkpoint import TensorRef
    from .keras import stored_layout
    from .keras_h5 import read_var

    relayout = stored_layout(row.layout, var.shape) if row.layout == "T" else None
    if relayout is not None and len(var.shape) != 2:
        raise InputError(var.file, f"{var.path} has shape {list(var.shape)}, expected a Dense kernel (2 dimensions)")
    shape = relayout.shape if relayout is not None else var.shape
    span = (var.file, var.offset, var.nbytes) if relayout is None and var.offset is not None else None
    raw = (var.file, var.offset, var.nbytes, relayout) if relayout is not None and var.offset is not None else None

    def load() -> Any:
        arr = read_var(var, mapped=relayout is not None)
        return arr if relayout is None else relayout.apply(arr)

    return TensorRef(name=name, shape=tuple(shape), dtype=var.dtype, nbytes=var.nbytes,
                     origin=f"{var.file}:{var.path}", loader=load, span=span, stored=raw)


# The config keys that declare an encoder beside the text decoder (their weights are then set aside, not errors)
ENCODER_KEYS = ("vision_encoder_config", "audio_encoder_config")
# What a Keras config cannot hold, kept by our writer in metadata.json under "gemma_inspect".
KEPT = ("bos_token_id", "eos_token_id")


def read(path: str, cfg: dict[str, Any], config_path: str) -> Any:
    """A Gemma3nBackbone preset directory -> Checkpoint (the text decoder; a multimodal preset's encoders are
    reported as ignored)."""
    from ..checkpoint import check_against_spec, expected_tensors
    from .keras_preset import open_planned_preset, preset_checkpoint

    restore, hf_cfg, notes, spec, files, where, mapped, ignored = open_planned_preset(
        path, cfg, config_path, KEPT, hf_config, map_datasets, ENCODER_KEYS, BACKBONE)
    unused = unused_kv(hf_cfg)
    tensors: dict[str, Any] = {}
    set_aside = 0
    for dpath, (name, var) in mapped.items():
        if name in unused:  # built by keras-hub on a KV-shared layer, never read there
            ignored[dpath] = (var.shape, var.dtype)
            set_aside += 1
            continue
        if name in tensors:
            raise InputError(where, f"two datasets map to {name}: {tensors[name].origin} and {dpath}")
        row = hf_name_of(dpath[len(LM_PREFIX):])[0]  # type: ignore[index]
        tensors[name] = _ref(name, var, row)
    if set_aside:
        notes.append(f"{set_aside} k/v/k_norm variables of the KV-shared layers {shared_layers(hf_cfg).start}-"
                     f"{shared_layers(hf_cfg).stop - 1} set aside: keras-hub builds them on every layer, and those "
                     f"layers reuse an earlier layer's keys and values")
    check_against_spec(spec, tensors, config_path, where)
    tensors = {n: tensors[n] for n in expected_tensors(spec)}
    return preset_checkpoint(path, cfg, spec, tensors, notes, ignored, files, KEPT, restore)


def _block_vars(path: str) -> tuple[str, str] | None:
    """The `vars` group of the decoder block an H5 path lies in, and the name Keras gives it (None: not in one)."""
    m = re.match(r"^(.*/%s(?:_(\d+))?)/" % BLOCK_CLASS, path)
    return (m.group(1) + "/vars", f"decoder_block_{int(m.group(2) or 0)}") if m else None


def write(ckpt: Any, dest: str, options: Any, progress: Any) -> None:
    """Write a Gemma 3n checkpoint as a keras-hub Gemma3nBackbone preset: config.json, model.weights.h5 (or shards
    and model.weights.json), metadata.json and, with a tokenizer, the CausalLM files."""
    from ..arrays import Layout
    from . import hf as hf_format
    from .common import most_common
    from .keras import refuse_unless_forced
    from .keras_preset import write_preset

    spec = ckpt.spec
    hf_cfg = hf_format.config_dict(spec)
    refuse_unless_forced(ckpt, keras_problems(hf_cfg), options)
    declared = options.dtype if options.dtype != "keep" else spec.dtype
    refs = {n: r for n, r in ckpt.tensors.items() if n != "lm_head.weight"}  # Keras ties the output matrix
    fill_dtype = most_common([options.float_dtype(r) for r in refs.values()]) or "float32"
    fills = {n: filler(n, shape, value, fill_dtype) for n, (shape, value) in unused_kv(hf_cfg).items()
             if n not in refs}
    if fills:
        layers = shared_layers(hf_cfg)
        options.notes.append(f"keras-hub builds k/v/k_norm on the KV-shared layers {layers.start}-{layers.stop - 1} "
                             f"and never reads them there: written as zeros (k_norm ones)")
    refs.update(fills)
    # file order: keras-hub's own (by H5 path), a layer's weights together
    rows = []
    for name, ref in refs.items():
        found = keras_var(name)
        if found is None:
            raise UnsupportedError(f"tensor {name} has no place in a {BACKBONE} preset")
        v, path, layer_name = found
        dt = fill_dtype if name in fills else options.float_dtype(ref)
        layout = Layout(tuple(ref.shape), (1, 0), tuple(reversed(ref.shape))) if v.layout == "T" else None
        rows.append((name, LM_PREFIX + path, layer_name, keras_shape(v, tuple(ref.shape)), dt, ref, layout))
    rows.sort(key=lambda r: r[1])
    write_preset(ckpt, dest, options, progress, rows, keras_config(hf_cfg, declared), declared,
                 {"bos_token_id": spec.bos_token_id, "eos_token_id": spec.eos_token_id},
                 _block_vars, groups={LM_PREFIX + "vars": "text_model"})


__all__ = ["VARS", "KerasVar", "LM_PREFIX", "BACKBONE", "MODULE", "keras_var", "hf_name_of", "keras_shape",
           "block_group", "keras_config", "hf_config", "keras_problems", "shared_layers",
           "unused_kv", "filler", "map_datasets", "read", "write"]
