"""GGUF `gemma4` (llama.cpp): Gemma 4's text decoder as llama.cpp's converter (Gemma4Model) writes it, both ways.

What differs from the other Gemma architectures (gguf.py's table):
- norms are stored as they are (Gemma 4's RMSNorm applies w, no +1), vectors in float32;
- the layer scalar is `blk.N.layer_output_scale.weight` [1]; the router's input scale `blk.N.ffn_gate_inp.scale`
  (no `.weight`) and its per-expert scales `blk.N.ffn_down_exps.scale` [E] (the converter's names: llama.cpp
  multiplies each expert's down projection output by it); the experts' gate and up projections stay fused as
  transformers stores them (`ffn_gate_up_exps`, numpy [E, 2F, H]), the down projections `ffn_down_exps` [E, H, F];
- the head geometry is per layer type: attention.key_length is the full layers' head_dim, key_length_swa the
  sliding layers', attention.head_count_kv one count per layer; feed_forward_length one width per layer where the
  KV-shared layers run a double-wide MLP, one number otherwise (as the converter writes it);
- proportional RoPE on full layers is a `rope_freqs` tensor (head_dim / 2 frequency divisors: 1 on the rotated
  pairs, 1e30 on the others) with rope.dimension_count the full head_dim; the reader recomputes it from the rotated
  fraction and refuses a file whose tensor says something else;
- K=V full layers store no attn_v (llama.cpp then uses K as V), KV-shared layers no attn_k / attn_v / attn_k_norm
  (its loader asks for them only on the layers that compute K/V).

What llama.cpp then fixes (llama_model_gemma4 and its graph), which the writer checks before writing: queries
unscaled, the tanh GELU, no RoPE scaling, one per-layer embedding row per token of the vocabulary, at least one
sliding layer (it asserts one), and a KV-shared layer reading the cache of layer n_kv - 2 (sliding) or n_kv - 1
(full), n_kv >= 2 being the layers that compute K/V (transformers reads the last such layer of the same type).
The tokenizer is gguf_vocab's: a tokenizer.json as the converter writes Gemma 4's ('gemma4' BPE with merges).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np

from ..errors import InputError, UnsupportedError
from .gguf import _Planned, refuse_unless_forced, write_file

ARCH = "gemma4"
SLIDING, FULL = "sliding_attention", "full_attention"
UNROTATED = 1e30  # the converter's frequency divisor for the pairs proportional RoPE leaves alone
LLAMA_CPP_SWA_BASE = 10_000.0  # rope_freq_base_train_swa when rope.freq_base_swa is absent
DEFAULT_PARTIAL = 0.25  # Gemma4TextConfig's partial_rotary_factor (a file without full layers stores none)


@dataclass(frozen=True)
class GGUFVar:
    """One row of the name table: the HF name (`{i}` a layer), the gguf package's MODEL_TENSOR member whose
    TENSOR_NAMES entry is the GGUF name, and the GGUF name's suffix ("weight", or "scale" for the converter's
    scales)."""

    hf: str
    member: str
    suffix: str = "weight"


_L = "model.layers.{i}."
VARS: tuple[GGUFVar, ...] = (
    GGUFVar("model.embed_tokens.weight", "TOKEN_EMBD"),
    GGUFVar("model.embed_tokens_per_layer.weight", "PER_LAYER_TOKEN_EMBD"),
    GGUFVar("model.per_layer_model_projection.weight", "PER_LAYER_MODEL_PROJ"),
    GGUFVar("model.per_layer_projection_norm.weight", "PER_LAYER_PROJ_NORM"),
    GGUFVar(_L + "input_layernorm.weight", "ATTN_NORM"),
    GGUFVar(_L + "self_attn.q_proj.weight", "ATTN_Q"),
    GGUFVar(_L + "self_attn.k_proj.weight", "ATTN_K"),
    GGUFVar(_L + "self_attn.v_proj.weight", "ATTN_V"),
    GGUFVar(_L + "self_attn.o_proj.weight", "ATTN_OUT"),
    GGUFVar(_L + "self_attn.q_norm.weight", "ATTN_Q_NORM"),
    GGUFVar(_L + "self_attn.k_norm.weight", "ATTN_K_NORM"),
    GGUFVar(_L + "post_attention_layernorm.weight", "ATTN_POST_NORM"),
    GGUFVar(_L + "pre_feedforward_layernorm.weight", "FFN_PRE_NORM"),
    GGUFVar(_L + "mlp.gate_proj.weight", "FFN_GATE"),
    GGUFVar(_L + "mlp.up_proj.weight", "FFN_UP"),
    GGUFVar(_L + "mlp.down_proj.weight", "FFN_DOWN"),
    GGUFVar(_L + "post_feedforward_layernorm.weight", "FFN_POST_NORM"),
    GGUFVar(_L + "layer_scalar", "LAYER_OUT_SCALE"),
    GGUFVar(_L + "router.proj.weight", "FFN_GATE_INP"),
    GGUFVar(_L + "router.scale", "FFN_GATE_INP", "scale"),
    GGUFVar(_L + "router.per_expert_scale", "FFN_DOWN_EXP", "scale"),
    GGUFVar(_L + "experts.gate_up_proj", "FFN_GATE_UP_EXP"),
    GGUFVar(_L + "experts.down_proj", "FFN_DOWN_EXP"),
    GGUFVar(_L + "pre_feedforward_layernorm_2.weight", "FFN_PRE_NORM_2"),
    GGUFVar(_L + "post_feedforward_layernorm_1.weight", "FFN_POST_NORM_1"),
    GGUFVar(_L + "post_feedforward_layernorm_2.weight", "FFN_POST_NORM_2"),
    GGUFVar(_L + "per_layer_input_gate.weight", "PER_LAYER_INP_GATE"),
    GGUFVar(_L + "per_layer_projection.weight", "PER_LAYER_PROJ"),
    GGUFVar(_L + "post_per_layer_input_norm.weight", "PER_LAYER_POST_NORM"),
    GGUFVar("model.norm.weight", "OUTPUT_NORM"),
    GGUFVar("lm_head.weight", "OUTPUT"),
)
ROPE_FREQS = "rope_freqs.weight"


@lru_cache(maxsize=None)
def _templates() -> tuple[tuple[GGUFVar, str, re.Pattern[str], re.Pattern[str]], ...]:
    """(row, GGUF name template with {i}, HF matcher, GGUF matcher) from the gguf package's own table (imported on
    first use)."""
    from gguf.constants import MODEL_ARCH, MODEL_TENSOR, MODEL_TENSORS, TENSOR_NAMES

    known = set(MODEL_TENSORS[MODEL_ARCH.GEMMA4])
    out = []
    for v in VARS:
        t = MODEL_TENSOR[v.member]
        assert t in known, f"{v.member} is not a gemma4 tensor in the installed gguf package"
        tmpl = TENSOR_NAMES[t].replace("{bid}", "{i}") + "." + v.suffix
        out.append((v, tmpl, _regex(v.hf), _regex(tmpl)))
    return tuple(out)


def _regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d{1,6})") + "$")


def gguf_name_of(hf_name: str) -> str | None:
    """The GGUF name of an HF tensor name; None for a name that is no Gemma 4 text weight."""
    for _, tmpl, hf_rx, _ in _templates():
        m = hf_rx.match(hf_name)
        if m:
            return tmpl.format(i=int(m.group("i"))) if "i" in m.groupdict() else tmpl
    return None


def hf_name_of(gguf_name: str) -> str | None:
    """The HF name of a GGUF tensor name; None for a name that is no Gemma 4 text weight."""
    for v, _, _, g_rx in _templates():
        m = g_rx.match(gguf_name)
        if m:
            return v.hf.format(i=int(m.group("i"))) if "i" in m.groupdict() else v.hf
    return None


def rope_freqs(head_dim: int, partial: float) -> np.ndarray:
    """The converter's frequency divisors for proportional RoPE on full layers: 1 on the int(head_dim * partial / 2)
    rotated pairs, 1e30 (no rotation) on the other head_dim / 2 - that many, float32."""
    rotated = int(head_dim * partial / 2)
    return np.array([1.0] * rotated + [UNROTATED] * (head_dim // 2 - rotated), dtype=np.float32)


# ----------------------------------------------------------------------------- metadata -> HF text config
def _k(suffix: str) -> str:
    return suffix.format(arch=ARCH)


def _per_layer(md: dict[str, Any], key: str, n: int, path: str, scalar: int | None) -> list[int] | None:
    """One positive integer per layer from an array or a number (None when absent)."""
    v = md.get(key)
    if v is None:
        return None if scalar is None else [scalar] * n
    if isinstance(v, np.ndarray):
        if v.size != n or v.dtype.kind not in "iu" or (v <= 0).any():
            raise InputError(path, f"metadata {key!r} must hold {n} positive integers, one per layer")
        return [int(x) for x in v]
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0:
        return [int(v)] * n
    raise InputError(path, f"metadata {key!r} must be a positive integer or {n} of them")


def hf_config(header: Any, path: str) -> tuple[dict[str, Any], list[str], set[str]]:
    """The HF `gemma4_text` config a gemma4 GGUF stands for (what formats/hf.py builds the spec from), notes, and
    the spec fields the file does not store (filled as llama.cpp fills them)."""
    import gguf

    from .gguf_header import Meta, decoder_basics

    K = gguf.Keys
    m, tensors, embed, n, hidden = decoder_basics(header, path, ARCH)
    md = header.metadata
    notes: list[str] = []
    assumed: set[str] = set()
    if len(embed.shape) != 2 or embed.shape[1] != hidden:
        raise InputError(path, f"token_embd.weight has shape {list(embed.shape)} but embedding_length is {hidden}")
    if m.has(K.LLM.VOCAB_SIZE) and m.integer(K.LLM.VOCAB_SIZE) != embed.shape[0]:
        raise InputError(path, f"metadata {m.key(K.LLM.VOCAB_SIZE)!r} is {m.integer(K.LLM.VOCAB_SIZE)} but "
                               f"token_embd.weight has {embed.shape[0]} rows")
    pat = md.get(_k(K.Attention.SLIDING_WINDOW_PATTERN))
    if not (isinstance(pat, np.ndarray) and pat.dtype == bool and pat.size == n):
        raise InputError(path, f"metadata {_k(K.Attention.SLIDING_WINDOW_PATTERN)!r} must be {n} booleans (llama.cpp's "
                               f"gemma4 requires them)")
    types = [SLIDING if s else FULL for s in pat.tolist()]
    heads = m.integer(K.Attention.HEAD_COUNT)
    full_dim = m.integer(K.Attention.KEY_LENGTH)
    swa_dim = m.integer(K.Attention.KEY_LENGTH_SWA)
    for key, want in ((K.Attention.VALUE_LENGTH, full_dim), (K.Attention.VALUE_LENGTH_SWA, swa_dim)):
        if m.integer(key, want) != want:
            raise UnsupportedError(f"{path}: {m.key(key)} differs from the key length; Gemma 4 (and llama.cpp's "
                                   f"gemma4) use one head_dim per layer type")
    kv = _per_layer(md, _k(K.Attention.HEAD_COUNT_KV), n, path, heads)
    assert kv is not None
    swa_kv = {kv[i] for i in range(n) if types[i] == SLIDING}
    full_kv = {kv[i] for i in range(n) if types[i] == FULL}
    if len(swa_kv) > 1 or len(full_kv) > 1:
        raise UnsupportedError(f"{path}: attention.head_count_kv {kv} varies within a layer type; Gemma 4 has one "
                               f"K/V head count for sliding layers and one for full layers")
    kv_swa = next(iter(swa_kv), next(iter(full_kv), heads))
    kv_full = next(iter(full_kv), kv_swa)
    shared = m.integer(K.Attention.SHARED_KV_LAYERS, 0, positive=False)
    if not 0 <= shared < n:
        raise InputError(path, f"metadata {_k(K.Attention.SHARED_KV_LAYERS)!r} is {shared}, not below the {n} layers")
    if K.Attention.SHARED_KV_LAYERS.format(arch=ARCH) not in md:
        assumed.add("num_kv_shared_layers")
    # feed-forward widths: one number, or one per layer (double-wide on the KV-shared layers)
    widths = _per_layer(md, _k(K.LLM.FEED_FORWARD_LENGTH), n, path, None)
    if widths is None:
        raise InputError(path, f"metadata {_k(K.LLM.FEED_FORWARD_LENGTH)!r} is missing")
    base = widths[0]
    plain = [base] * n
    double = [base if i < n - shared else 2 * base for i in range(n)]
    if widths == plain:
        double_wide = False
    elif shared and widths == double:
        double_wide = True
    else:
        raise UnsupportedError(f"{path}: feed_forward_length {widths} is neither one width nor twice it on the "
                               f"{shared} KV-shared layers (use_double_wide_mlp); Gemma 4 has no other layout")
    # K=V: full layers that compute K/V and store no attn_v
    kv_full_layers = [i for i in range(n - shared) if types[i] == FULL]
    no_v = [i for i in kv_full_layers if f"blk.{i}.attn_v.weight" not in tensors]
    if no_v and no_v != kv_full_layers:
        with_v = sorted(set(kv_full_layers) - set(no_v))
        raise UnsupportedError(f"{path}: full layers {no_v} store no attn_v but {with_v} "
                               f"do; Gemma 4's K=V holds for every full layer or none")
    missing_v = [i for i in range(n - shared) if types[i] == SLIDING and f"blk.{i}.attn_v.weight" not in tensors]
    if missing_v:
        raise InputError(path, f"sliding layers {missing_v} store no attn_v tensor (K=V is for full layers only)")
    k_eq_v = bool(no_v)
    # experts
    routers = [i for i in range(n) if f"blk.{i}.ffn_gate_inp.weight" in tensors]
    if routers and len(routers) != n:
        raise UnsupportedError(f"{path}: layers {routers} have experts and the others not; Gemma 4's MoE block is on "
                               f"every layer or none")
    experts = m.integer(K.LLM.EXPERT_COUNT) if routers else 0
    top_k = m.integer(K.LLM.EXPERT_USED_COUNT) if routers else 0
    expert_ff = m.integer(K.LLM.EXPERT_FEED_FORWARD_LENGTH) if routers else 0
    # per-layer embeddings
    ple_width = m.integer(K.LLM.EMBD_LENGTH_PER_LAYER_INP, 0, positive=False)
    ple = tensors.get("per_layer_token_embd.weight")
    if ple_width and ple is None:
        raise InputError(path, "embedding_length_per_layer_input is set but there is no per_layer_token_embd.weight")
    per_layer_vocab = ple.shape[0] if ple is not None and ple_width else embed.shape[0]
    # RoPE: the global base, the sliding one, proportional RoPE's rotated fraction from rope_freqs
    theta = m.number(K.Rope.FREQ_BASE, None)
    if theta is None:
        raise InputError(path, f"metadata {_k(K.Rope.FREQ_BASE)!r} is missing")
    local = m.number(K.Rope.FREQ_BASE_SWA, None)
    if local is None:
        local = LLAMA_CPP_SWA_BASE
        assumed.add("rope_local_theta")
    scaling = m.number(K.Rope.SCALING_FACTOR, None) or 1.0
    if m.text(K.Rope.SCALING_TYPE, "none") not in ("none", "linear") or scaling != 1.0:
        raise UnsupportedError(f"{path}: RoPE scaling is not supported for Gemma 4 (its full layers use proportional "
                               f"RoPE)")
    rot_full = m.integer(K.Rope.DIMENSION_COUNT, full_dim)
    rot_swa = m.integer(K.Rope.DIMENSION_COUNT_SWA, rot_full)
    if rot_full != full_dim or (SLIDING in types and rot_swa != swa_dim):
        raise UnsupportedError(f"{path}: rope.dimension_count {rot_full} / _swa {rot_swa} differ from the head_dims "
                               f"{full_dim} / {swa_dim}; Gemma 4 rotates whole heads (proportional RoPE through "
                               f"rope_freqs on full layers)")
    partial = DEFAULT_PARTIAL
    freqs = tensors.get(ROPE_FREQS)
    if FULL in types:
        if freqs is None:
            raise InputError(path, f"no {ROPE_FREQS} tensor: llama.cpp's gemma4 requires it for proportional RoPE on "
                                   f"full layers")
        from .gguf_header import load_float32

        got = np.asarray(load_float32(path, freqs), dtype=np.float32).reshape(-1)
        rotated = int(np.argmax(got != 1.0)) if (got != 1.0).any() else got.size
        partial = 2 * rotated / full_dim
        want = rope_freqs(full_dim, partial)
        if got.shape != want.shape or not np.array_equal(got, want):
            raise InputError(path, f"{ROPE_FREQS} is not proportional RoPE's frequency divisors for head_dim "
                                   f"{full_dim} (1 on the first pairs, {UNROTATED:g} on the others)")
    elif freqs is None:
        assumed.add("rope_partial_factor")
    cap = m.number(K.LLM.FINAL_LOGIT_SOFTCAPPING, None)
    tok = Meta(header, path, ARCH)
    hf: dict[str, Any] = {
        "architectures": ["Gemma4ForCausalLM"], "model_type": "gemma4_text",
        "vocab_size": embed.shape[0], "hidden_size": hidden, "intermediate_size": base, "num_hidden_layers": n,
        "num_attention_heads": heads, "num_key_value_heads": kv_swa, "head_dim": swa_dim,
        "global_head_dim": full_dim, "num_global_key_value_heads": kv_full,
        "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": m.integer(K.LLM.CONTEXT_LENGTH),
        "rms_norm_eps": m.number(K.Attention.LAYERNORM_RMS_EPS), "query_pre_attn_scalar": 1,
        "sliding_window": m.integer(K.Attention.SLIDING_WINDOW), "layer_types": types,
        "rope_parameters": {FULL: {"rope_type": "proportional", "partial_rotary_factor": partial, "rope_theta": theta},
                            SLIDING: {"rope_type": "default", "rope_theta": local}},
        "final_logit_softcapping": cap, "attn_logit_softcapping": None,
        "hidden_size_per_layer_input": ple_width, "vocab_size_per_layer_input": per_layer_vocab,
        "num_kv_shared_layers": shared, "use_double_wide_mlp": double_wide, "attention_k_eq_v": k_eq_v,
        "enable_moe_block": bool(routers), "num_experts": experts or None, "top_k_experts": top_k or None,
        "moe_intermediate_size": expert_ff or None,
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": tok.integer(K.Tokenizer.BOS_ID, 2, positive=False),
        "eos_token_id": tok.integer(K.Tokenizer.EOS_ID, 1, positive=False),
        "pad_token_id": tok.integer(K.Tokenizer.PAD_ID, 0, positive=False),
    }
    if k_eq_v or kv_full != kv_swa:
        hf["per_layer_config"] = {str(i): {"head_dim": full_dim, **({"num_key_value_heads": kv_full} if k_eq_v else {})}
                                  for i, t in enumerate(types) if t == FULL}
    if hf["rms_norm_eps"] is None:
        raise InputError(path, f"metadata {_k(K.Attention.LAYERNORM_RMS_EPS)!r} is missing")
    return hf, notes, assumed


# ----------------------------------------------------------------------------- reading
def _ref(path: str, name: str, info: Any) -> Any:
    """A TensorRef of a stored tensor under its HF name (float types as stored, quantized ones dequantized)."""
    from ..checkpoint import TensorRef
    from .gguf import QuantizedTensorRef
    from .gguf_header import FLOAT_TYPES, dequantize, load_float

    origin = f"{path}:{info.name}"
    shape = tuple(info.shape)
    if info.type_name in FLOAT_TYPES:
        return TensorRef(name=name, shape=shape, dtype=FLOAT_TYPES[info.type_name], nbytes=info.nbytes, origin=origin,
                         loader=lambda: load_float(path, info), span=(path, info.start, info.nbytes))
    from .safetensors_io import iter_bytes

    return QuantizedTensorRef(name=name, shape=shape, dtype=info.type_name, nbytes=info.nbytes, origin=origin,
                              loader=lambda: np.ascontiguousarray(dequantize(path, info)),
                              blocks=lambda size: iter_bytes(path, info.start, info.nbytes, size))


def read(path: str, header: Any) -> Any:
    """A gemma4 GGUF -> Checkpoint (HF names and layouts; rope_freqs checked against the config and set aside)."""
    import gguf

    from ..checkpoint import Checkpoint, check_against_spec, expected_tensors, parse_canonical
    from ..roles import group_of
    from . import hf as hf_format
    from .gguf import QUANT_GROUPS, _declared_dtype, quantization_stats
    from .gguf_header import NON_WEIGHT_TYPES, file_type_and_config
    from .gguf_vocab import embedded_tokenizer

    cfg, notes, assumed_keys = hf_config(header, path)
    cfg["dtype"] = _declared_dtype(header.tensors)
    spec, more = hf_format.spec_from_config(cfg, path, cfg["dtype"])
    notes += [n for n in more if not n.startswith("full-layer head geometry read from per_layer_config")]
    tensors: dict[str, Any] = {}
    infos: dict[str, Any] = {}
    ignored: dict[str, tuple[tuple[int, ...], str]] = {}
    for info in header.tensors:
        if info.name == ROPE_FREQS:  # checked against the config in hf_config; transformers recomputes it
            continue
        name = hf_name_of(info.name)
        if name is None:
            ignored[info.name] = (info.shape, info.type_name)
            continue
        if info.type_name in NON_WEIGHT_TYPES:
            raise InputError(path, f"tensor {info.name!r} is stored as {info.type_name}; Gemma weights are floating "
                                   f"point or quantized")
        tensors[name] = _ref(path, name, info)
        infos[name] = info
    if ignored:
        shown = ", ".join(list(ignored)[:3]) + (f" (and {len(ignored) - 3} more)" if len(ignored) > 3 else "")
        notes.append(f"{len(ignored)} tensors that are not Gemma decoder weights were ignored: {shown}")
    check_against_spec(spec, tensors, path, path)
    ordered = {n: tensors[n] for n in expected_tensors(spec)}
    tokenizer = embedded_tokenizer(header, path, spec, notes)
    file_type_name, config = file_type_and_config(header)
    rep = {g: min(roles) for g, roles in QUANT_GROUPS if roles}
    quantization = quantization_stats(
        [(rep.get(group_of(parse_canonical(n)[0]), "other"), infos[n].type_name,  # type: ignore[index]
          t.numel, t.nbytes)
         for n, t in ordered.items()], file_type_name)
    assumed = set(assumed_keys) | {f for f, key in (
        ("bos_token_id", gguf.Keys.Tokenizer.BOS_ID), ("eos_token_id", gguf.Keys.Tokenizer.EOS_ID),
        ("pad_token_id", gguf.Keys.Tokenizer.PAD_ID)) if key not in header.metadata}
    return Checkpoint(spec=spec, tensors=ordered, source=path, format="gguf", tokenizer=tokenizer, notes=notes,
                      ignored=ignored, config=config, files=[path], assumed=frozenset(assumed),
                      quantization=quantization)


# ----------------------------------------------------------------------------- writing
def llama_cpp_kv_source(spec: Any, i: int) -> int:
    """The layer whose K/V cache llama.cpp's gemma4 reads on layer i (its reuse callback): itself when it computes
    K/V, else n_kv - 2 on a sliding layer and n_kv - 1 on a full one."""
    n_kv = spec.num_layers - spec.num_kv_shared_layers
    if i < n_kv:
        return i
    return n_kv - (2 if spec.layer_types[i] == SLIDING else 1)


def gguf_problems(spec: Any) -> list[str]:
    """What llama.cpp's gemma4 would run differently from this spec: empty when it runs it as transformers does."""
    problems = []
    if spec.activation != "gelu_tanh":
        problems.append(f"activation {spec.activation}: llama.cpp's gemma4 runs the tanh GELU")
    if spec.query_pre_attn_scalar not in (None, 1):
        problems.append(f"query_pre_attn_scalar {spec.query_pre_attn_scalar}: llama.cpp's gemma4 leaves queries "
                        f"unscaled")
    if spec.attention_logit_softcap is not None:
        problems.append("an attention-logit soft cap: llama.cpp's gemma4 has none")
    if spec.rope_scaling_factor != 1.0 or spec.rope_local_scaling_factor != 1.0:
        problems.append("RoPE scaling: llama.cpp's gemma4 file has proportional RoPE on full layers and no scaling")
    if spec.per_layer_input_size and spec.per_layer_vocab_size != spec.vocab_size:
        problems.append(f"a per-layer embedding table of {spec.per_layer_vocab_size} rows for a {spec.vocab_size}-"
                        f"token vocabulary: llama.cpp's gemma4 requires one row per token")
    if SLIDING not in spec.layer_types:
        problems.append("no sliding-window layer: llama.cpp's gemma4 stops on an assertion (is_swa_any) when it "
                        "makes its KV cache")
    n_kv = spec.num_layers - spec.num_kv_shared_layers
    if spec.num_kv_shared_layers and n_kv < 2:
        problems.append(f"{n_kv} layer computing K/V before the KV-shared ones: llama.cpp's gemma4 asserts at least 2")
    elif spec.num_kv_shared_layers:
        wrong = [(i, spec.kv_source(i), llama_cpp_kv_source(spec, i)) for i in range(spec.num_layers)
                 if spec.kv_shared(i) and spec.kv_source(i) != llama_cpp_kv_source(spec, i)]
        if wrong:
            problems.append("KV-shared layers " + ", ".join(f"{i} (reads layer {want}, llama.cpp reads {got})"
                                                            for i, want, got in wrong)
                            + ": llama.cpp's gemma4 reads layer n_kv - 2 on sliding layers and n_kv - 1 on full ones")
    return problems


def plan(ckpt: Any, options: Any, notes: set[str]) -> list[_Planned]:
    """Every GGUF tensor `write` writes: rope_freqs first (where full layers are), then the checkpoint's tensors in
    their order; vectors in float32, matrices as the source or --dtype says."""
    import gguf

    from .gguf import _plan_tensor

    spec = ckpt.spec
    plans: list[_Planned] = []
    Q = gguf.GGMLQuantizationType
    if FULL in spec.layer_types:
        full_dim = spec.global_head_dim or spec.head_dim
        freqs = rope_freqs(full_dim, spec.rope_partial_factor)
        plans.append(_Planned(ROPE_FREQS, freqs.shape, Q.F32, freqs.nbytes, lambda: freqs))
    for name, ref in ckpt.tensors.items():
        gname = gguf_name_of(name)
        if gname is None:
            raise UnsupportedError(f"tensor {name} has no GGUF name in llama.cpp's gemma4")
        # norms as they are (no role: Gemma 4 applies w), vectors in float32, a GGUF's blocks copied as they are
        plans.append(_plan_tensor(ref, None, None, options, notes, name=gname, vectors_f32=True))
    return plans


def write(ckpt: Any, dest: str, options: Any, progress: Callable[[int], None]) -> None:
    """Write a Gemma 4 checkpoint as one `gemma4` GGUF file with llama.cpp's converter's names, keys and layouts."""
    import gguf

    from .gguf import _file_type
    from .gguf_vocab import add_tokenizer_gemma4

    spec = ckpt.spec
    refuse_unless_forced(gguf_problems(spec), options)
    plan_notes: set[str] = set()
    plans = plan(ckpt, options, plan_notes)
    options.notes.extend(sorted(plan_notes))
    n = spec.num_layers
    full_dim = spec.global_head_dim or spec.head_dim
    w = gguf.GGUFWriter(path=None, arch=ARCH)
    w.add_name(spec.name or os.path.basename(os.path.normpath(ckpt.source)))
    w.add_vocab_size(spec.vocab_size)
    w.add_block_count(n)
    w.add_context_length(spec.max_position_embeddings)
    w.add_embedding_length(spec.hidden_size)
    widths = [spec.layer_intermediate(i) for i in range(n)]
    # as the converter writes it: one number, one per layer where the KV-shared layers are double-wide
    w.add_feed_forward_length(widths if len(set(widths)) > 1 else widths[0])
    w.add_head_count(spec.num_attention_heads)
    kv = [spec.layer_kv_heads(i) for i in range(n)]
    w.add_head_count_kv(kv if len(set(kv)) > 1 else kv[0])  # one count per layer where they differ
    w.add_rope_freq_base(spec.rope_theta)
    w.add_rope_freq_base_swa(spec.local_rope_theta)
    w.add_layer_norm_rms_eps(spec.rms_norm_eps)
    if spec.moe_experts:
        w.add_expert_count(spec.moe_experts)
        w.add_expert_used_count(spec.moe_top_k)
        w.add_expert_feed_forward_length(spec.moe_intermediate_size)
    w.add_key_length(full_dim)
    w.add_value_length(full_dim)
    w.add_key_length_swa(spec.head_dim)
    w.add_value_length_swa(spec.head_dim)
    w.add_rope_dimension_count(full_dim)
    w.add_rope_dimension_count_swa(spec.head_dim)
    if spec.final_logit_softcap is not None:
        w.add_final_logit_softcapping(spec.final_logit_softcap)
    if spec.sliding_window:
        w.add_sliding_window(spec.sliding_window)
    w.add_shared_kv_layers(spec.num_kv_shared_layers)
    w.add_embedding_length_per_layer_input(spec.per_layer_input_size)
    w.add_sliding_window_pattern([t == SLIDING for t in spec.layer_types])
    w.add_file_type(_file_type(plans, ckpt, options))  # type: ignore[arg-type]
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer_gemma4(w, ckpt, options.notes)
    write_file(w, plans, dest, progress)


def planned_nbytes(ckpt: Any, options: Any) -> int:
    return sum(p.nbytes for p in plan(ckpt, options, set()))


__all__ = ["VARS", "GGUFVar", "gguf_name_of", "hf_name_of", "rope_freqs", "hf_config", "read", "write", "plan",
           "planned_nbytes", "gguf_problems", "llama_cpp_kv_source", "ARCH"]
