"""GGUF (llama.cpp, ollama): the Gemma mapping of a file holding metadata, the vocabulary and every tensor.

The container is gguf_header.py's (a strict parser of our own, raw reads, dequantization with the `gguf`
package) and the embedded vocabulary gguf_vocab.py's; this module maps them to a Checkpoint and back. Tensor
names come from the `gguf` package's tables (llama.cpp's), one role -> MODEL_TENSOR row each; what llama.cpp
leaves implicit per architecture comes from the family rows (families.GGUFIds). Tensors are read lazily:
F32/F16/BF16 keep their stored dtype, quantized types are dequantized to float32, and norm weights come back
zero-centred (llama.cpp stores 1 + w). Writing lays out metadata and tensor infos with `gguf.GGUFWriter`, then
writes the data one tensor at a time.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..checkpoint import (NORM_ROLES, Checkpoint, TensorRef, canonical_name, check_against_spec, compile_names,
                          expected_tensors, fill_name, match_name, parse_canonical)
from ..errors import InputError, UnsupportedError
from ..families import FAMILY_TABLE, FULL, SLIDING, Family, by_gguf_arch, gguf_architectures
from ..roles import GROUPS, ROLE_TABLE, group_of
from ..spec import GemmaSpec
from .common import MAX_LAYERS
# The container (header, limits, raw reads) and the vocabulary live in their own modules; the names other
# modules and tests know are re-exported here.
from .gguf_header import (DEQUANT_CHUNK_ELEMENTS, FLOAT_TYPES, GGML_OF_FLOAT, NON_WEIGHT_TYPES,  # noqa: F401
                          Header, Meta, StringArray, TensorInfo, dequantize, dequantize_rows, file_type_and_config,
                          load_float, load_float32, read_header, read_raw)
from .gguf_embedding import add_head_metadata, embedding_head, head_names, head_problems, head_tensors
from .gguf_vocab import add_tokenizer, embedded_tokenizer
from .gguf_vocab import sentencepiece_pieces as _sentencepiece_pieces  # noqa: F401 - the names tests import
from .gguf_vocab import sentencepiece_types as _sentencepiece_types  # noqa: F401
from .safetensors_io import iter_bytes

if TYPE_CHECKING:  # pragma: no cover
    from ..tensorio import WriteOptions

_read_raw = read_raw  # the name tests know


# ----------------------------------------------------------------------------- names
# canonical role -> the gguf package's MODEL_TENSOR member: llama.cpp's own table (gguf.constants), whose
# TENSOR_NAMES give the GGUF names ("blk.{bid}.attn_q" -> "blk.{i}.attn_q.weight"). The pre-FFN norm is
# FFN_PRE_NORM in the Gemma 2/3 tables and FFN_NORM in Gemma 1's, both spelled `blk.N.ffn_norm`; the trap is on
# the HF side, where Gemma 1 calls that norm `post_attention_layernorm` (canonical names already resolved it).
ROLE_TENSOR_MEMBERS: dict[str, str] = {
    "embed": "TOKEN_EMBD",
    "final_norm": "OUTPUT_NORM",
    "lm_head": "OUTPUT",
    "attn_norm": "ATTN_NORM",
    "post_attn_norm": "ATTN_POST_NORM",
    "ffn_norm": "FFN_PRE_NORM",
    "post_ffn_norm": "FFN_POST_NORM",
    "q": "ATTN_Q",
    "k": "ATTN_K",
    "v": "ATTN_V",
    "o": "ATTN_OUT",
    "q_norm": "ATTN_Q_NORM",
    "k_norm": "ATTN_K_NORM",
    "gate": "FFN_GATE",
    "up": "FFN_UP",
    "down": "FFN_DOWN",
}


def tensor_name_template(tensor: Any) -> str:
    """The GGUF name of a weight (a gguf.constants.MODEL_TENSOR) as llama.cpp's table spells it, `{i}` for the
    layer."""
    from gguf.constants import TENSOR_NAMES

    return TENSOR_NAMES[tensor].replace("{bid}", "{i}") + ".weight"


@functools.cache
def _tables() -> tuple[dict[str, Any], dict[str, str], list[Any]]:
    """(role -> MODEL_TENSOR, role -> GGUF name template, the reverse matchers), read from the gguf package on first
    use: importing it costs ~85 ms, which `summary` of another format must not pay."""
    from gguf.constants import MODEL_TENSOR

    tensors = {role: MODEL_TENSOR[member] for role, member in ROLE_TENSOR_MEMBERS.items()}
    names = {role: tensor_name_template(t) for role, t in tensors.items()}
    return tensors, names, compile_names(names)


def __getattr__(name: str) -> Any:
    """ROLE_TENSORS (role -> gguf's MODEL_TENSOR) and GGUF_NAMES (role -> GGUF name template), derived from the
    gguf package's tables when first asked."""
    if name == "ROLE_TENSORS":
        return _tables()[0]
    if name == "GGUF_NAMES":
        return _tables()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def gguf_name(role: str, layer: int | None = None) -> str:
    return fill_name(_tables()[1][role], layer)


def parse_gguf_name(name: str) -> tuple[str, int | None] | None:
    return match_name(_tables()[2], name)


def canonical_of(name: str) -> str | None:
    parsed = parse_gguf_name(name)
    return None if parsed is None else canonical_name(*parsed)


# ----------------------------------------------------------------------------- llama.cpp's implicit values
# What llama.cpp fills in per architecture is in the family rows (families.GGUFIds): its defaults for absent
# keys, the layer count by which it recognises the 27B model, the local RoPE it hard-codes; the sliding-window
# layout it hard-codes (set_swa_pattern) is the family's layer pattern.
LLAMA_CPP_ROPE_BASE = 10000.0  # rope.freq_base when the file has none


def _title(row: Family) -> str:
    """The family's name in messages: 'Gemma 3 (text)' -> 'Gemma 3'."""
    return row.title.split(" (")[0]


def llama_cpp_query_scalar(arch: str, num_layers: int, hidden: int, heads: int,
                           head_dim: int) -> tuple[int, str]:
    """(query_pre_attn_scalar llama.cpp uses, why) for a Gemma GGUF of this shape. GGUF does not store it:
    llama.cpp (llama_model::load_hparams) recognises the 27B models by their layer count and scales queries by
    1/sqrt(d/H) there, by 1/sqrt(head_dim) everywhere else."""
    row = by_gguf_arch(arch)
    if row is not None and row.gguf.big_model_layers == num_layers:  # type: ignore[union-attr]
        return hidden // heads, (f"{num_layers} layers mark the 27B model, which scales queries by "
                                 f"hidden_size/num_heads = {hidden}/{heads}")
    return head_dim, "head_dim"


def llama_cpp_layer_types(arch: str, num_layers: int) -> tuple[str, ...]:
    row = by_gguf_arch(arch)
    return (FULL,) * num_layers if row is None else row.layer_types(num_layers)


def _short(v: float) -> str:
    return f"{v:g}".replace("e+0", "e").replace("e+", "e")  # 1000000.0 -> 1e6


# ----------------------------------------------------------------------------- metadata -> spec
def spec_from_metadata(header: Header, path: str) -> tuple[GemmaSpec, list[str], frozenset[str]]:
    """GemmaSpec from the metadata (and the embedding's shape), filling in what GGUF leaves implicit exactly
    as llama.cpp does. Returns (spec, notes, the spec fields the file does not store)."""
    import gguf

    K = gguf.Keys
    arch = header.metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise InputError(path, "metadata 'general.architecture' is missing or not a string")
    row = by_gguf_arch(arch)
    if row is None or row.gguf is None:
        raise UnsupportedError(f"{path}: GGUF architecture {arch!r} is not a Gemma; supported: "
                               f"{', '.join(gguf_architectures())}")
    ids, rules = row.gguf, row.rules
    m = Meta(header, path, arch)
    notes: list[str] = []
    assumed: set[str] = set()
    hidden = m.integer(K.LLM.EMBEDDING_LENGTH)
    n_layers = m.integer(K.LLM.BLOCK_COUNT)
    if n_layers > MAX_LAYERS:  # before per-layer tables are built (9 million layers took minutes)
        raise InputError(path, f"metadata {m.key(K.LLM.BLOCK_COUNT)!r} is {n_layers}, more than the {MAX_LAYERS} "
                               f"this tool accepts")
    heads = m.integer(K.Attention.HEAD_COUNT)
    kv_heads = m.integer(K.Attention.HEAD_COUNT_KV, heads)
    head_dim = m.integer(K.Attention.KEY_LENGTH, hidden // heads if hidden % heads == 0 else None)
    value_dim = m.integer(K.Attention.VALUE_LENGTH, head_dim)
    if value_dim != head_dim:
        raise UnsupportedError(f"{path}: attention.value_length {value_dim} != key_length {head_dim}; "
                               f"Gemma uses one head_dim")
    eps = m.number(K.Attention.LAYERNORM_RMS_EPS)
    if eps is None:
        raise InputError(path, f"metadata {m.key(K.Attention.LAYERNORM_RMS_EPS)!r} is missing")
    embed = next((t for t in header.tensors if t.name == _tables()[1]["embed"]), None)
    if embed is None:
        raise InputError(path, f"no {_tables()[1]['embed']} tensor")
    if len(embed.shape) != 2 or embed.shape[1] != hidden:
        raise InputError(path, f"{embed.name} has shape {list(embed.shape)} but embedding_length is {hidden}")
    if m.has(K.LLM.VOCAB_SIZE) and m.integer(K.LLM.VOCAB_SIZE) != embed.shape[0]:
        raise InputError(path, f"metadata {m.key(K.LLM.VOCAB_SIZE)!r} is {m.integer(K.LLM.VOCAB_SIZE)} but "
                               f"{embed.name} has {embed.shape[0]} rows")

    # RoPE: one base (llama.cpp's default 10000), optional linear scaling.
    rope_base = m.number(K.Rope.FREQ_BASE, LLAMA_CPP_ROPE_BASE)
    if not m.has(K.Rope.FREQ_BASE):
        assumed.add("rope_theta")
        trained = row.defaults.get("rope_theta", LLAMA_CPP_ROPE_BASE)
        if trained != LLAMA_CPP_ROPE_BASE:
            notes.append(f"rope.freq_base is absent: llama.cpp uses {_short(LLAMA_CPP_ROPE_BASE)} for the global "
                         f"layers ({_title(row)} trains {_short(trained)})")
    factor = m.number(K.Rope.SCALING_FACTOR, None)
    if factor is None:
        factor = m.number("{arch}.rope.scale_linear", None)  # the older spelling llama.cpp still reads
    scaling_type = m.text(K.Rope.SCALING_TYPE, "linear")
    if scaling_type == "none" or not factor:
        factor = 1.0
    elif scaling_type != "linear":
        raise UnsupportedError(f"{path}: RoPE scaling {scaling_type!r} is not supported (linear only)")
    if factor <= 0:
        raise InputError(path, f"metadata rope scaling factor must be positive, got {factor}")

    # the architecture fixes the mask too: llama.cpp runs gemma-embedding without causality
    fields: dict[str, Any] = dict(norm_placement=rules.norm_placement, qk_norm=rules.qk_norm,
                                  activation=rules.activation, attention_mask=rules.attention_mask)
    qps, why = llama_cpp_query_scalar(arch, n_layers, hidden, heads, head_dim)
    if ids.big_model_layers is not None:  # the scale follows the model's size: an inference worth saying
        notes.append(f"query_pre_attn_scalar is not stored in GGUF; inferred as llama.cpp does: {qps} ({why})")
        assumed.add("query_pre_attn_scalar")
    layer_types = row.layer_types(n_layers)
    optional: list[tuple[str, str, str]] = []  # (llama.cpp's key, spec field, metadata key) it reads
    if row.windowed:
        pattern_key = m.key(K.Attention.SLIDING_WINDOW_PATTERN)
        if pattern_key not in header.metadata:
            assumed.add("layer_types")  # llama.cpp hard-codes the layout per architecture
        else:  # newer files may spell the layout out
            pat = header.metadata[pattern_key]
            if isinstance(pat, np.ndarray) and pat.dtype == bool and pat.size == n_layers:
                layer_types = tuple(SLIDING if s else FULL for s in pat.tolist())
            elif isinstance(pat, int) and not isinstance(pat, bool) and pat > 0:
                layer_types = row.layer_types(n_layers, pat)
            else:
                raise InputError(path, f"metadata {pattern_key!r} must be a positive integer or "
                                       f"{n_layers} booleans")
        optional.append(("sliding_window", "sliding_window", K.Attention.SLIDING_WINDOW))
    optional += [(key, field, suffix) for key, field, suffix in (
        ("attn_logit_softcapping", "attention_logit_softcap", K.LLM.ATTN_LOGIT_SOFTCAPPING),
        ("final_logit_softcapping", "final_logit_softcap", K.LLM.FINAL_LOGIT_SOFTCAPPING)) if key in ids.defaults]
    fields.update(sliding_window=None, attention_logit_softcap=None, final_logit_softcap=None)
    for key, field, suffix in optional:
        default = ids.defaults.get(key)  # None and absent: no such setting (the sliding window: required)
        fields[field] = m.integer(suffix, default) if field == "sliding_window" else m.number(suffix, default)
        if default is not None and not m.has(suffix):
            assumed.add(field)
            notes.append(f"{m.key(suffix)} is absent: llama.cpp's default {default} is used")
    if ids.local_rope is not None:
        # llama.cpp hard-codes the local layers' RoPE; the stored base and scaling belong to the global layers.
        fields.update(rope_local_theta=ids.local_rope[0], rope_local_scaling_factor=ids.local_rope[1])
        assumed.update({"rope_local_theta", "rope_local_scaling_factor"})
    else:  # one RoPE everywhere
        fields.update(rope_local_theta=None, rope_local_scaling_factor=factor)
    fields.update(query_pre_attn_scalar=qps, layer_types=layer_types)

    tok = Meta(header, path, arch)
    assumed.update(f for f, key in (("bos_token_id", K.Tokenizer.BOS_ID), ("eos_token_id", K.Tokenizer.EOS_ID),
                                    ("pad_token_id", K.Tokenizer.PAD_ID)) if key not in header.metadata)
    try:
        spec = GemmaSpec(
            family=row.key,
            vocab_size=embed.shape[0],
            hidden_size=hidden,
            num_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=m.integer(K.LLM.FEED_FORWARD_LENGTH),
            tied_embeddings=not any(t.name == _tables()[1]["lm_head"] for t in header.tensors),
            rope_theta=rope_base,
            rope_scaling_factor=factor,
            rms_norm_eps=eps,
            max_position_embeddings=m.integer(K.LLM.CONTEXT_LENGTH),
            dtype=_declared_dtype(header.tensors),
            bos_token_id=tok.integer(K.Tokenizer.BOS_ID, 2, positive=False),
            eos_token_id=tok.integer(K.Tokenizer.EOS_ID, 1, positive=False),
            pad_token_id=tok.integer(K.Tokenizer.PAD_ID, 0, positive=False),
            **fields,
        )
    except (InputError, UnsupportedError):
        raise
    except Exception as e:  # SpecError: the metadata contradicts itself
        raise InputError(path, f"inconsistent metadata: {e}") from None
    return spec, notes, frozenset(assumed)


def _declared_dtype(tensors: list[TensorInfo]) -> str:
    """The dtype the weights compute in: their stored float type, or float32 once anything is quantized."""
    kinds = {t.type_name for t in tensors if len(t.shape) > 1}
    if len(kinds) == 1 and next(iter(kinds)) in FLOAT_TYPES:
        return FLOAT_TYPES[next(iter(kinds))]
    return "float32"


# ----------------------------------------------------------------------------- tensors
@dataclass(frozen=True)
class QuantizedTensorRef(TensorRef):
    """A GGUF-quantized tensor: `dtype` is the GGML type name (Q8_0, Q4_K, ...), `nbytes` the stored bytes,
    `load()` float32 values; `blocks(max_bytes)` yields the stored blocks as they are; `dequantize_rows(r0, r1,
    out)` writes the float32 values of rows [r0, r1) (rows of the last axis) into `out`, so that a converter
    streams a dequantized tensor through its reused buffers without holding it whole."""

    blocks: Callable[[int], Any] | None = None
    dequantize_rows: Callable[[int, int, np.ndarray], None] | None = None


# llama.cpp applies a Gemma norm as x * stored, so it stores 1 + w where the family's layer computes (1 + w):
# canonical w is zero-centred. Both ways in float32; a signalling NaN stays NaN, without a RuntimeWarning.
def from_llama_cpp_norm(stored: np.ndarray) -> np.ndarray:
    """w from llama.cpp's stored 1 + w (the reader)."""
    with np.errstate(invalid="ignore"):
        return stored - np.float32(1)


def to_llama_cpp_norm(w: np.ndarray) -> np.ndarray:
    """1 + w as llama.cpp stores a Gemma norm weight (the writer)."""
    with np.errstate(invalid="ignore"):
        return w + np.float32(1)


def _tensor_ref(path: str, canonical: str, role: str, info: TensorInfo) -> TensorRef:
    origin = f"{path}:{info.name}"
    if role in NORM_ROLES:
        # llama.cpp stores Gemma norms as 1 + w (q/k norms included); canonical w is zero-centred.
        return TensorRef(name=canonical, shape=info.shape, dtype="float32", nbytes=info.nbytes, origin=origin,
                         loader=lambda: from_llama_cpp_norm(load_float32(path, info)))
    chunks = lambda size: iter_bytes(path, info.start, info.nbytes, size)  # noqa: E731 - raw stored bytes
    if info.type_name in FLOAT_TYPES:  # stored row-major [out, in]: the canonical layout, byte for byte
        return TensorRef(name=canonical, shape=info.shape, dtype=FLOAT_TYPES[info.type_name], nbytes=info.nbytes,
                         origin=origin, loader=lambda: load_float(path, info),
                         span=(path, info.start, info.nbytes))
    # Quantized: `load()` gives float32 values. The stored blocks are not values in canonical layout, so they
    # are not `chunks`; GGUF -> GGUF copies reach them through `blocks`.
    return QuantizedTensorRef(name=canonical, shape=info.shape, dtype=info.type_name, nbytes=info.nbytes,
                              origin=origin, loader=lambda: dequantize(path, info), blocks=chunks,
                              dequantize_rows=lambda r0, r1, out: dequantize_rows(path, info, r0, r1, out))


# ----------------------------------------------------------------------------- quantization summary
# (group, its roles) in the order the summary lists them, from the role table
QUANT_GROUPS: tuple[tuple[str, frozenset[str]], ...] = tuple(  # the roles this format names, by their row's group
    (g, frozenset(k for k in ROLE_TENSOR_MEMBERS if group_of(k) == g)) for g in GROUPS)


def quantization_stats(tensors: list[tuple[str, str, int, int]], file_type: str | None = None) -> dict[str, Any]:
    """Storage types and bits per weight per tensor group, from (role, GGML type, parameters, stored bytes)
    per tensor: {"file_type", "bits_per_weight", "groups": [{"group", "types": {type: tensors}, "parameters",
    "bytes", "bits_per_weight"}]}."""
    group_by_role = {role: g for g, roles in QUANT_GROUPS for role in roles}
    order = [g for g, _ in QUANT_GROUPS] + ["other"]
    acc: dict[str, dict[str, Any]] = {}
    for role, type_name, numel, nbytes in tensors:
        a = acc.setdefault(group_by_role.get(role, "other"), {"types": {}, "parameters": 0, "bytes": 0})
        a["types"][type_name] = a["types"].get(type_name, 0) + 1
        a["parameters"] += numel
        a["bytes"] += nbytes
    groups = [{"group": g, "types": dict(sorted(acc[g]["types"].items())), "parameters": acc[g]["parameters"],
               "bytes": acc[g]["bytes"], "bits_per_weight": round(8 * acc[g]["bytes"] / acc[g]["parameters"], 3)}
              for g in sorted(acc, key=order.index)]
    params = sum(a["parameters"] for a in acc.values())
    size = sum(a["bytes"] for a in acc.values())
    return {"file_type": file_type, "bits_per_weight": round(8 * size / params, 3) if params else None,
            "groups": groups}


# ----------------------------------------------------------------------------- reading
def _mapping(row: Family | None) -> Any:
    """The formats module that maps the row's architecture (GGUFIds.mapping), or None for this module's table."""
    import importlib

    if row is None or row.gguf is None or row.gguf.mapping is None:
        return None
    return importlib.import_module(f"{__package__}.{row.gguf.mapping}")


def read(path: str) -> Checkpoint:
    header = read_header(path)
    mapped_by = _mapping(by_gguf_arch(header.metadata.get("general.architecture")))
    if mapped_by is not None:  # an architecture with a table of its own (gemma3n)
        return mapped_by.read(path, header)
    spec, notes, assumed = spec_from_metadata(header, path)
    tensors: dict[str, TensorRef] = {}
    ignored: dict[str, tuple[tuple[int, ...], str]] = {}
    encoder = not FAMILY_TABLE[spec.family].rules.lm_head
    heads = {g: c for c, g in head_names().items()} if encoder else {}
    head_tensors: dict[str, TensorRef] = {}
    for info in header.tensors:
        canonical = canonical_of(info.name)
        if info.name in heads:
            if info.type_name in NON_WEIGHT_TYPES or len(info.shape) != 2:
                raise InputError(path, f"tensor {info.name!r} ({info.type_name}, shape {list(info.shape)}) is no "
                                       f"dense head weight")
            head_tensors[heads[info.name]] = _tensor_ref(path, heads[info.name], "head", info)
            continue
        if canonical is None:
            ignored[info.name] = (info.shape, info.type_name)
            continue
        if info.type_name in NON_WEIGHT_TYPES:
            raise InputError(path, f"tensor {info.name!r} is stored as {info.type_name}; Gemma weights are "
                                   f"floating point or quantized")
        role = parse_canonical(canonical)[0]  # type: ignore[index]
        tensors[canonical] = _tensor_ref(path, canonical, role, info)
    if ignored:
        names = ", ".join(list(ignored)[:3]) + (f" (and {len(ignored) - 3} more)" if len(ignored) > 3 else "")
        notes.append(f"{len(ignored)} tensors that are not Gemma decoder weights were ignored: {names}")
    check_against_spec(spec, tensors, path, path)
    ordered = {n: tensors[n] for n in expected_tensors(spec)}
    norms = sum(1 for n in ordered if parse_canonical(n)[0] in NORM_ROLES)  # type: ignore[index]
    if norms:
        notes.append(f"{norms} norm weights are stored as 1 + w (llama.cpp's convention); read back as w "
                     f"(w - 1 in float32)")
    tokenizer = embedded_tokenizer(header, path, spec, notes)
    file_type_name, config = file_type_and_config(header)
    stored = {canonical_of(t.name): t for t in header.tensors}
    quantization = quantization_stats([(parse_canonical(n)[0], stored[n].type_name,  # type: ignore[index]
                                        stored[n].numel, stored[n].nbytes) for n in ordered], file_type_name)
    head = embedding_head(header, spec, head_tensors, path, notes) if encoder else None
    return Checkpoint(spec=spec, tensors=ordered, source=path, format="gguf", tokenizer=tokenizer, notes=notes,
                      ignored=ignored, config=config, files=[path], assumed=assumed, quantization=quantization,
                      embedding_head=head, head_tensors={n: head_tensors[n] for n in sorted(head_tensors)})


def _check_expressible(spec: GemmaSpec, options: "WriteOptions") -> Family:
    """GGUF (as llama.cpp reads it) leaves several Gemma settings implicit. Refuse what it would get wrong,
    unless --force, which writes the file and says what llama.cpp will do instead. Returns the family's row."""
    row = FAMILY_TABLE.get(spec.family)
    if row is None or row.gguf is None:
        why = row.refusals.get("gguf") if row is not None else None  # the family's own reason, if any
        raise UnsupportedError(f"{spec.family} checkpoints cannot be written as a Gemma GGUF"
                               + (f": {why}" if why else ""))
    ids, r = row.gguf, row.rules
    problems: list[str] = []
    if (spec.norm_placement, spec.qk_norm, spec.norm_offset, spec.scale_embeddings, spec.activation) != \
            (r.norm_placement, r.qk_norm, r.norm_offset, r.scale_embeddings, r.activation) \
            or spec.norm_kind != "rmsnorm":
        raise UnsupportedError(f"this {spec.family} checkpoint deviates from its family's layout (norms, "
                               f"activation or embedding scale): llama.cpp's {spec.family} graph cannot run it")
    qps, why = llama_cpp_query_scalar(ids.arch, spec.num_layers, spec.hidden_size, spec.num_attention_heads,
                                      spec.head_dim)
    if spec.query_pre_attn_scalar != qps:
        if ids.big_model_layers is not None:
            problems.append(f"query_pre_attn_scalar is {spec.query_pre_attn_scalar}, but GGUF cannot store it and "
                            f"llama.cpp will use {qps} ({why})")
        else:
            problems.append(f"query_pre_attn_scalar {spec.query_pre_attn_scalar} != head_dim: llama.cpp's "
                            f"{_title(row)} uses head_dim")
    if tuple(spec.layer_types) != llama_cpp_layer_types(ids.arch, spec.num_layers):
        problems.append("the sliding-window layout differs from the one llama.cpp hard-codes for "
                        f"{spec.family}")
    caps = (("attn_logit_softcapping", spec.attention_logit_softcap, "attention-logit soft cap"),
            ("final_logit_softcapping", spec.final_logit_softcap, "final-logit soft cap"))
    unread = [what for key, value, what in caps if key not in ids.defaults and value is not None]
    if not row.windowed and spec.sliding_window:
        unread.append("sliding window")
    if unread:
        problems.append(f"llama.cpp's {_title(row)} has no " + " and no ".join(unread))
    forced = [(ids.defaults[key], value) for key, value, _ in caps if ids.defaults.get(key) is not None]
    if any(value is None for _, value in forced):
        problems.append(f"llama.cpp always soft-caps {_title(row)} ({' / '.join(f'{d:g}' for d, _ in forced)} when "
                        f"unset); this checkpoint has no cap")
    if ids.local_rope is not None:
        base, scaling = ids.local_rope
        if (spec.local_rope_theta, spec.rope_local_scaling_factor) != (base, scaling):
            problems.append(f"llama.cpp hard-codes {_title(row)}'s local RoPE (base {base:g}, "
                            f"{'no scaling' if scaling == 1 else f'scaling {scaling:g}'}); this checkpoint has base "
                            f"{spec.local_rope_theta}, scaling {spec.rope_local_scaling_factor}")
    elif spec.local_rope_theta != spec.rope_theta or spec.rope_local_scaling_factor != spec.rope_scaling_factor:
        problems.append(f"llama.cpp's {spec.family} uses one RoPE for every layer")
    refuse_unless_forced(problems, options)
    return row


def refuse_unless_forced(problems: list[str], options: "WriteOptions") -> None:
    """What llama.cpp would run differently: refused in one line, or written under --force with a note each."""
    if problems:
        if not options.force:
            raise UnsupportedError("GGUF cannot express this checkpoint faithfully: " + "; ".join(problems)
                                   + " (use --force to write it anyway)")
        options.notes.extend(f"--force: {p}" for p in problems)


@dataclass
class _Planned:
    name: str  # GGUF name
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType
    nbytes: int
    produce: Callable[..., np.ndarray]
    ticks: bool = False  # produce(tick) reports its output bytes as it makes them (quantization takes seconds)


def _quantize(arr: np.ndarray, qtype: Any, tick: Callable[[int], None] | None = None) -> np.ndarray:
    """Quantize a float array with the gguf package's own quantizer, a block of rows at a time; `tick` gets each
    block's output bytes, so that a progress bar moves while a large embedding is quantized."""
    import gguf

    arr = np.ascontiguousarray(arr, dtype=np.float32) if arr.dtype != np.float32 else arr
    rows = arr.reshape(-1, arr.shape[-1])
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    out = np.empty((rows.shape[0], rows.shape[1] // block * type_size), dtype=np.uint8)
    step = max(1, DEQUANT_CHUNK_ELEMENTS // rows.shape[1])
    for r in range(0, rows.shape[0], step):
        with np.errstate(all="ignore"):  # a NaN/inf weight makes a NaN block, not a RuntimeWarning on stderr
            out[r:r + step] = gguf.quants.quantize(rows[r:r + step], qtype)
        if tick is not None:
            tick(out[r:r + step].nbytes)
    return out


def _raw(ref: "QuantizedTensorRef") -> np.ndarray:
    """The stored blocks of a quantized tensor (copied GGUF to GGUF as they are), one tensor held."""
    out = np.empty(ref.nbytes, dtype=np.uint8)
    pos = 0
    for piece in ref.blocks(64 * 1024 * 1024):  # type: ignore[misc]
        out[pos:pos + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        pos += len(piece)
    if pos != ref.nbytes:
        raise InputError(ref.origin or ref.name, f"tensor {ref.name} has {pos} bytes, expected {ref.nbytes}")
    return out


def _plan_tensor(ref: TensorRef, role: str | None, layer: int | None, options: "WriteOptions",
                 notes: set[str], name: str | None = None, vectors_f32: bool = False) -> _Planned:
    """How one tensor is stored: Gemma norms (`role` in NORM_ROLES) as llama.cpp's 1 + w in float32; with
    `vectors_f32` (an architecture whose converter keeps every vector float32, its norms as they are) any vector in
    float32; a GGUF's quantized blocks copied as they are where the output keeps their type; otherwise the source's
    float type (keep) or the one asked for, Q8_0 where the rows are whole blocks."""
    import gguf

    from ..tensorio import cast_array

    Q = gguf.GGMLQuantizationType
    name = name or gguf_name(role, layer)
    shape = tuple(ref.shape)
    numel = math.prod(shape)

    def nbytes(qtype: Any) -> int:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        return numel // block * size

    if role in NORM_ROLES:
        # llama.cpp applies Gemma norms as x * w, so it stores 1 + w, always in float32.
        return _Planned(name, shape, Q.F32, nbytes(Q.F32),
                        lambda: to_llama_cpp_norm(ref.load().astype(np.float32)))
    if vectors_f32 and len(shape) == 1:
        return _Planned(name, shape, Q.F32, nbytes(Q.F32), lambda: ref.load().astype(np.float32))
    want = options.dtype
    src_quant = isinstance(ref, QuantizedTensorRef) and ref.blocks is not None and ref.dtype in Q.__members__
    if want == "keep":
        if ref.dtype in GGML_OF_FLOAT:
            qtype = Q[GGML_OF_FLOAT[ref.dtype]]
            return _Planned(name, shape, qtype, nbytes(qtype), lambda: cast_array(ref.load(), ref.dtype))
        if src_quant:  # GGUF -> GGUF: the quantized blocks are copied as they are
            qtype = Q[ref.dtype]
            return _Planned(name, shape, qtype, nbytes(qtype), lambda: _raw(ref))
        notes.add(f"{ref.dtype} tensors have no GGUF equivalent: written as float32")
        return _Planned(name, shape, Q.F32, nbytes(Q.F32), lambda: ref.load().astype(np.float32))
    if want in GGML_OF_FLOAT:
        qtype = Q[GGML_OF_FLOAT[want]]
        return _Planned(name, shape, qtype, nbytes(qtype), lambda: cast_array(ref.load(), want))
    if want == "q8_0":
        if ref.dtype == "Q8_0" and src_quant:
            return _Planned(name, shape, Q.Q8_0, nbytes(Q.Q8_0), lambda: _raw(ref))
        block = gguf.GGML_QUANT_SIZES[Q.Q8_0][0]
        if shape[-1] % block:
            # llama.cpp's converter does the same: a row that is not a whole number of blocks stays F16.
            notes.add(f"tensors with rows not a multiple of {block} values stay float16 (Q8_0 needs whole blocks)")
            return _Planned(name, shape, Q.F16, nbytes(Q.F16), lambda: cast_array(ref.load(), "float16"))
        return _Planned(name, shape, Q.Q8_0, nbytes(Q.Q8_0), lambda tick: _quantize(ref.load(), Q.Q8_0, tick),
                        ticks=True)
    raise UnsupportedError(f"--dtype {want} is not supported for GGUF")


def _file_type(plans: list[_Planned], ckpt: Checkpoint, options: "WriteOptions") -> int:
    import gguf

    F = gguf.LlamaFileType
    by_type: dict[str, int] = {}
    for p in plans:
        if len(p.shape) > 1:
            by_type[p.qtype.name] = by_type.get(p.qtype.name, 0) + p.nbytes
    if not by_type:
        return int(F.ALL_F32)
    main = max(by_type, key=by_type.__getitem__)
    known = {"F32": F.ALL_F32, "F16": F.MOSTLY_F16, "BF16": F.MOSTLY_BF16, "Q8_0": F.MOSTLY_Q8_0,
             "Q4_0": F.MOSTLY_Q4_0, "Q4_1": F.MOSTLY_Q4_1, "Q5_0": F.MOSTLY_Q5_0, "Q5_1": F.MOSTLY_Q5_1}
    if options.dtype == "keep" and ckpt.format == "gguf" and isinstance(ckpt.config.get("general.file_type"), int):
        return int(ckpt.config["general.file_type"])  # the same blocks: the source's label still holds
    if len(by_type) == 1 and main in known:
        return int(known[main])
    return int(known.get(main, F.GUESSED))


def planned_nbytes(ckpt: Checkpoint, options: "WriteOptions") -> int:
    """The tensor bytes `write` will write (what its progress counts): each tensor in the type it is planned
    in (Q8_0 blocks, norms in float32, rows Q8_0 cannot split in float16), without producing any."""
    mapped_by = _mapping(FAMILY_TABLE.get(ckpt.spec.family))
    if mapped_by is not None:
        return mapped_by.planned_nbytes(ckpt, options)
    total = 0
    for name, ref in ckpt.tensors.items():
        parsed = parse_canonical(name)
        if parsed is not None:
            total += _plan_tensor(ref, parsed[0], parsed[1], options, set()).nbytes
    for name, ref in head_tensors(ckpt).items():
        total += _plan_tensor(ref, "head", None, options, set(), head_names()[name]).nbytes
    return total


def write(ckpt: Checkpoint, dest: str, options: "WriteOptions", progress: Callable[[int], None]) -> None:
    """Write `ckpt` as one GGUF file: llama.cpp's names and metadata, norms as 1 + w in float32, the tied
    embedding once, the tokenizer from the source's SentencePiece model; tensor data streamed one tensor
    at a time after the header (peak memory: one tensor)."""
    import gguf

    spec = ckpt.spec
    mapped_by = _mapping(FAMILY_TABLE.get(spec.family))
    if mapped_by is not None:  # an architecture with a table of its own (gemma3n)
        return mapped_by.write(ckpt, dest, options, progress)
    row = _check_expressible(spec, options)
    encoder = not row.rules.lm_head
    if encoder:
        problems = head_problems(ckpt.embedding_head, spec.hidden_size)
        if problems and (not options.force or ckpt.embedding_head is None):
            raise UnsupportedError("GGUF cannot express this embedding head faithfully: " + "; ".join(problems)
                                   + ("" if ckpt.embedding_head is None else " (use --force to write it anyway)"))
        options.notes.extend(f"--force: {p}" for p in problems)
    plan_notes: set[str] = set()
    plans = []
    for name, ref in ckpt.tensors.items():
        parsed = parse_canonical(name)
        if parsed is None:
            raise UnsupportedError(f"tensor {name} has no GGUF name")
        plans.append(_plan_tensor(ref, parsed[0], parsed[1], options, plan_notes))
    for name, ref in head_tensors(ckpt).items():
        plans.append(_plan_tensor(ref, "head", None, options, plan_notes, head_names()[name]))
    options.notes.extend(sorted(plan_notes))

    w = gguf.GGUFWriter(path=None, arch=row.gguf.arch)  # type: ignore[union-attr]
    w.add_name(spec.name or os.path.basename(os.path.normpath(ckpt.source)))
    w.add_vocab_size(spec.vocab_size)  # llama.cpp counts the tokens; transformers needs this without a tokenizer
    w.add_context_length(spec.max_position_embeddings)
    w.add_embedding_length(spec.hidden_size)
    w.add_block_count(spec.num_layers)
    w.add_feed_forward_length(spec.intermediate_size)
    w.add_head_count(spec.num_attention_heads)
    w.add_head_count_kv(spec.num_key_value_heads)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_layer_norm_rms_eps(spec.rms_norm_eps)
    w.add_rope_freq_base(spec.rope_theta)  # with a hard-coded local RoPE (Gemma 3): the global layers' base
    if spec.rope_scaling_factor != 1.0:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(spec.rope_scaling_factor)
    if row.windowed and spec.sliding_window:
        w.add_sliding_window(spec.sliding_window)
    if spec.attention_logit_softcap is not None:
        w.add_attn_logit_softcapping(spec.attention_logit_softcap)
    if spec.final_logit_softcap is not None:
        w.add_final_logit_softcapping(spec.final_logit_softcap)
    if encoder:  # as llama.cpp's converter writes an EmbeddingGemma directory
        assert ckpt.embedding_head is not None
        add_head_metadata(w, ckpt.embedding_head)
    w.add_file_type(_file_type(plans, ckpt, options))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(w, ckpt, options.notes)
    write_file(w, plans, dest, progress)


def write_file(w: Any, plans: list[_Planned], dest: str, progress: Callable[[int], None]) -> None:
    """The GGUF file of a writer whose metadata is added: tensor infos, header, metadata, then each planned tensor,
    produced one at a time (reported as it is made where the plan says so, else when written)."""
    from pathlib import Path

    for p in plans:
        # The dtype argument only matters for uint8 (it would mean a byte shape); the type is raw_dtype.
        w.add_tensor_info(p.name, p.shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.qtype)
    w.write_header_to_file(path=Path(dest))
    try:
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for p in plans:
            reported = [0]

            def tick(n: int) -> None:
                reported[0] += n
                progress(n)

            arr = np.ascontiguousarray(p.produce(tick) if p.ticks else p.produce())
            if arr.nbytes != p.nbytes:  # pragma: no cover - a planning bug, not an input problem
                raise UnsupportedError(f"{p.name}: produced {arr.nbytes} bytes, planned {p.nbytes}")
            w.write_tensor_data(arr)
            progress(arr.nbytes - reported[0])  # the rest: all of it when nothing was reported while producing
            del arr
    finally:
        w.close()


# ----------------------------------------------------------------------------- the format contract (common.FormatInfo)
from . import gguf_header  # noqa: E402
from .common import FormatInfo  # noqa: E402

FORMAT = FormatInfo(name="gguf", title="GGUF", description="a .gguf file", stores_quantization=True,
                    native_runtime=None, magic=gguf_header.MAGIC, file_suffixes=(".gguf",))
