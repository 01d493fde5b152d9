"""GGUF (llama.cpp, ollama): one file holding metadata, the tokenizer vocabulary and every tensor.

Reading parses the header with a strict parser of our own (the `gguf` package's GGUFReader needs ~20 s
for a 262k-token vocabulary, and a crafted count must fail fast, not loop); tensor types, sizes and
dequantization come from the `gguf` package. Tensors are read lazily: F32/F16/BF16 keep their stored
dtype, quantized types are dequantized to float32 with `gguf.quants.dequantize`, and norm weights come
back zero-centred (llama.cpp stores 1 + w). The embedded vocabulary is rebuilt as a SentencePiece model
on first use. Writing lays out metadata and tensor infos with `gguf.GGUFWriter`, then writes the data
one tensor at a time.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from functools import cached_property
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..checkpoint import (NORM_ROLES, Checkpoint, TensorRef, canonical_name, check_against_spec, compile_names,
                          expected_tensors, fill_name, match_name, parse_canonical)
from ..errors import InputError, UnsupportedError
from ..spec import FULL, SLIDING, GemmaSpec, gemma2_layer_types, gemma3_layer_types
from ..tokenizer import Tokenizer
from .common import MAX_LAYERS
from .safetensors_io import iter_bytes

if TYPE_CHECKING:  # pragma: no cover
    from ..tensorio import WriteOptions

ARCHITECTURES = ("gemma", "gemma2", "gemma3")  # general.architecture; the same words as our families
MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# Tensors, metadata keys, nested arrays: a Gemma 3 27B GGUF has ~800 tensors and ~40 keys. A crafted count must
# not make us loop for hours or build a Python object per entry first (a TensorInfo is ~500 bytes).
MAX_COUNT = 100_000
# Metadata and tensor infos together: a 262k-token vocabulary with scores and types takes ~7 MB.
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 4  # arrays of arrays
DEQUANT_CHUNK_ELEMENTS = 4 * 1024 * 1024  # dequantize this many values at a time

# ----------------------------------------------------------------------------- names
# canonical role -> GGUF tensor name, as llama.cpp names them for MODEL_ARCH.GEMMA/GEMMA2/GEMMA3
# (gguf.constants.TENSOR_NAMES + ".weight"). The pre-FFN norm is `ffn_norm` in every Gemma arch; the trap
# is on the HF side, where Gemma 1 calls that norm `post_attention_layernorm` (canonical names already
# resolved it). Gemma 2/3's post-attention norm is `post_attention_norm`, the post-FFN norm `post_ffw_norm`.
GGUF_NAMES: dict[str, str] = {
    "embed": "token_embd.weight",
    "final_norm": "output_norm.weight",
    "lm_head": "output.weight",
    "attn_norm": "blk.{i}.attn_norm.weight",
    "post_attn_norm": "blk.{i}.post_attention_norm.weight",
    "ffn_norm": "blk.{i}.ffn_norm.weight",
    "post_ffn_norm": "blk.{i}.post_ffw_norm.weight",
    "q": "blk.{i}.attn_q.weight",
    "k": "blk.{i}.attn_k.weight",
    "v": "blk.{i}.attn_v.weight",
    "o": "blk.{i}.attn_output.weight",
    "q_norm": "blk.{i}.attn_q_norm.weight",
    "k_norm": "blk.{i}.attn_k_norm.weight",
    "gate": "blk.{i}.ffn_gate.weight",
    "up": "blk.{i}.ffn_up.weight",
    "down": "blk.{i}.ffn_down.weight",
}
# The reverse, derived: GGUF name -> (role, layer).
_GGUF_PATTERNS = compile_names(GGUF_NAMES)


def gguf_name(role: str, layer: int | None = None) -> str:
    return fill_name(GGUF_NAMES[role], layer)


def parse_gguf_name(name: str) -> tuple[str, int | None] | None:
    return match_name(_GGUF_PATTERNS, name)


def canonical_of(name: str) -> str | None:
    parsed = parse_gguf_name(name)
    return None if parsed is None else canonical_name(*parsed)


# Stored float types keep their dtype; every other weight type is a quantization, dequantized to float32.
FLOAT_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
GGML_OF_FLOAT = {v: k for k, v in FLOAT_TYPES.items()}
NON_WEIGHT_TYPES = ("I8", "I16", "I32", "I64", "F64")

# ----------------------------------------------------------------------------- llama.cpp's implicit values
# GGUF does not store query_pre_attn_scalar. llama.cpp (llama_model::load_hparams) recognises the 27B models
# by their layer count and scales queries by 1/sqrt(d/H) there, by 1/sqrt(head_dim) everywhere else.
LLAMA_CPP_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
# llama.cpp hard-codes the sliding-window layout (set_swa_pattern) and Gemma 3's local RoPE.
LLAMA_CPP_GEMMA3_LOCAL_ROPE_BASE = 10000.0
LLAMA_CPP_GEMMA2_DEFAULTS = {"sliding_window": 4096, "attn_logit_softcapping": 50.0,
                             "final_logit_softcapping": 30.0}


def llama_cpp_query_scalar(family: str, num_layers: int, hidden: int, heads: int,
                           head_dim: int) -> tuple[int, str]:
    """(query_pre_attn_scalar llama.cpp uses, why) for a Gemma GGUF of this shape."""
    if LLAMA_CPP_27B_LAYERS.get(family) == num_layers:
        return hidden // heads, (f"{num_layers} layers mark the 27B model, which scales queries by "
                                 f"hidden_size/num_heads = {hidden}/{heads}")
    return head_dim, "head_dim"


def llama_cpp_layer_types(family: str, num_layers: int) -> tuple[str, ...]:
    if family == "gemma2":
        return gemma2_layer_types(num_layers)
    if family == "gemma3":
        return gemma3_layer_types(num_layers)
    return (FULL,) * num_layers


# ----------------------------------------------------------------------------- header parsing
@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first): GGUF lists dims innermost first
    type_name: str  # GGML type name: F32, Q8_0, ...
    type_id: int
    start: int  # absolute offset of the data in the file
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Header:
    version: int
    metadata: dict[str, Any]
    value_types: dict[str, str]  # key -> GGUF value type name (UINT32, STRING, ARRAY[STRING], ...)
    tensors: list[TensorInfo]
    alignment: int
    data_start: int
    file_size: int


_SCALARS = {  # GGUFValueType id -> (name, struct format)
    0: ("UINT8", "<B"), 1: ("INT8", "<b"), 2: ("UINT16", "<H"), 3: ("INT16", "<h"), 4: ("UINT32", "<I"),
    5: ("INT32", "<i"), 6: ("FLOAT32", "<f"), 7: ("BOOL", "<B"), 10: ("UINT64", "<Q"), 11: ("INT64", "<q"),
    12: ("FLOAT64", "<d"),
}
_STRING, _ARRAY = 8, 9
_NUMPY_OF_SCALAR = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
                    10: "<u8", 11: "<i8", 12: "<f8"}


class _Cursor:
    """Reads little-endian values from the mapped header; every read is bounds-checked."""

    def __init__(self, buf: Any, size: int, path: str):
        # Reads stop at the header limit as they stop at the end of the file.
        self.buf, self.size, self.path, self.pos = buf, min(size, MAX_HEADER_BYTES), path, 0
        self.file_size = size
        self.nested = 0  # arrays inside arrays made so far

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            if self.size < self.file_size and n >= 0:
                raise InputError(self.path, f"{what} at byte {self.pos} runs past the {MAX_HEADER_BYTES // 2**20} MB "
                                            f"limit of a GGUF header (metadata and tensor infos)")
            raise InputError(self.path, f"truncated: {what} at byte {self.pos} needs {n} bytes but the file "
                                        f"has {max(self.size - self.pos, 0)} left")

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def raw_string(self, what: str) -> bytes:
        n = self.unpack("<Q", f"length of {what}")
        self.need(n, what)
        b = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return b

    def string(self, what: str) -> str:
        b = self.raw_string(what)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(self.path, f"{what} is not valid UTF-8 ({b[:40]!r})") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> tuple[Any, str]:
        if vtype in _SCALARS:
            name, fmt = _SCALARS[vtype]
            v = self.unpack(fmt, what)
            return (bool(v) if vtype == 7 else v), name
        if vtype == _STRING:
            return self.string(what), "STRING"
        if vtype == _ARRAY:
            if depth >= MAX_NESTING:
                raise InputError(self.path, f"{what}: arrays nested deeper than {MAX_NESTING}")
            itype = self.unpack("<I", f"element type of {what}")
            count = self.unpack("<Q", f"element count of {what}")
            if itype in _SCALARS:
                dt = np.dtype(_NUMPY_OF_SCALAR[itype])
                self.need(count * dt.itemsize, f"{count} elements of {what}")
                arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
                self.pos += count * dt.itemsize
                return (arr.astype(bool) if itype == 7 else arr), f"ARRAY[{_SCALARS[itype][0]}]"
            if itype == _STRING:
                self.need(count * 8, f"{count} strings of {what}")  # each has at least its 8-byte length
                return self._strings(count, what), "ARRAY[STRING]"
            if itype == _ARRAY:
                self.need(count * 12, f"{count} arrays of {what}")
                self.nested += count
                if self.nested > MAX_COUNT:
                    raise InputError(self.path, f"{what}: more than {MAX_COUNT} nested arrays")
                return [self.value(_ARRAY, f"{what}[{j}]", depth + 1)[0] for j in range(count)], "ARRAY[ARRAY]"
            raise InputError(self.path, f"{what}: unknown array element type {itype}")
        raise InputError(self.path, f"{what}: unknown value type {vtype}")

    def _strings(self, count: int, what: str) -> "StringArray":
        # Only the lengths are walked here (bounds-checked); decoding waits until the strings are used.
        buf, start, pos, size = self.buf, self.pos, self.pos, self.size
        unpack_from = struct.unpack_from
        for j in range(count):
            if pos + 8 > size:
                self.pos = pos
                self.need(8, f"length of {what}[{j}]")
            (n,) = unpack_from("<Q", buf, pos)
            pos += 8 + n
            if pos > size:
                self.pos = pos - n
                self.need(n, f"{what}[{j}]")
        self.pos = pos
        return StringArray(bytes(buf[start:pos]), count, self.path, what)


class StringArray(Sequence):
    """A GGUF array of strings kept as its bytes and decoded on first use: a 262k-token vocabulary takes a
    quarter of a second to decode, which a header-only `summary` should not pay."""

    def __init__(self, raw: bytes, count: int, path: str, what: str):
        self._raw, self._count, self._path, self._what = raw, count, path, what
        self._items: list[str] | None = None

    def _decoded(self) -> list[str]:
        if self._items is None:
            raw, pos, items = self._raw, 0, []
            unpack_from = struct.unpack_from
            for j in range(self._count):
                (n,) = unpack_from("<Q", raw, pos)
                try:
                    items.append(str(raw[pos + 8:pos + 8 + n], "utf-8"))
                except UnicodeDecodeError:
                    raise InputError(self._path, f"{self._what}[{j}] is not valid UTF-8") from None
                pos += 8 + n
            self._items = items
        return self._items

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i: Any) -> Any:
        return self._decoded()[i]

    def __iter__(self) -> Any:
        return iter(self._decoded())

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, tuple, StringArray)) else NotImplemented

    def __repr__(self) -> str:
        return f"<{self._count} strings>"


def read_header(path: str) -> Header:
    """Parse and validate a GGUF header: magic, version, metadata, tensor infos, data layout. No tensor data
    is read; every count, length and offset is checked against the file before it is used."""
    import gguf

    try:
        size = os.path.getsize(path)
        f = open(path, "rb")
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    with f:
        if size < 24:
            raise InputError(path, f"not a GGUF file: {size} bytes, too short for a header")
        magic = f.read(4)
        if magic != MAGIC:
            raise InputError(path, f"not a GGUF file: starts with {magic!r}, expected the magic b'GGUF'")
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise InputError(path, f"cannot map the file: {e}") from None
    try:
        return _parse(buf, size, path, gguf)
    finally:
        buf.close()


def _parse(buf: Any, size: int, path: str, gguf: Any) -> Header:
    cur = _Cursor(buf, size, path)
    cur.pos = 4
    version = cur.unpack("<I", "version")
    if version not in VERSIONS:
        if struct.unpack(">I", struct.pack("<I", version))[0] in VERSIONS:  # the version reads byte-swapped
            raise UnsupportedError(f"{path}: big-endian GGUF files are not supported")
        raise InputError(path, f"unsupported GGUF version {version} (supported: {', '.join(map(str, VERSIONS))})")
    n_tensors = cur.unpack("<Q", "tensor count")
    n_kv = cur.unpack("<Q", "metadata key count")
    for count, what in ((n_tensors, "tensor count"), (n_kv, "metadata key count")):
        if count > MAX_COUNT:
            raise InputError(path, f"{what} {count} is over the limit of {MAX_COUNT}")
    metadata: dict[str, Any] = {}
    value_types: dict[str, str] = {}
    for j in range(n_kv):
        key = cur.string(f"metadata key {j}")
        vtype = cur.unpack("<I", f"value type of {key!r}")
        value, tname = cur.value(vtype, f"metadata {key!r}")
        if key in metadata:
            raise InputError(path, f"metadata key {key!r} appears twice")
        metadata[key] = value
        value_types[key] = tname
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if "general.alignment" in metadata and value_types["general.alignment"] != "UINT32":
        raise InputError(path, f"general.alignment must be a UINT32, got {value_types['general.alignment']}")
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise InputError(path, f"general.alignment {alignment} is not a positive power of two")

    known_types = {int(t): t.name for t in gguf.GGMLQuantizationType}
    raw: list[tuple[str, tuple[int, ...], int, int]] = []
    names: set[str] = set()
    for j in range(n_tensors):
        name = cur.string(f"name of tensor {j}")
        n_dims = cur.unpack("<I", f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise InputError(path, f"tensor {name!r} has {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})")
        dims = [cur.unpack("<Q", f"dimension {d} of tensor {name!r}") for d in range(n_dims)]
        type_id = cur.unpack("<I", f"type of tensor {name!r}")
        offset = cur.unpack("<Q", f"offset of tensor {name!r}")
        if name in names:
            raise InputError(path, f"tensor {name!r} appears twice")
        names.add(name)
        if type_id not in known_types or gguf.GGMLQuantizationType(type_id) not in gguf.GGML_QUANT_SIZES:
            raise InputError(path, f"tensor {name!r} has unknown GGML type {type_id}")
        if any(d == 0 or d >= 2**40 for d in dims):
            raise InputError(path, f"tensor {name!r} has invalid dimensions {dims}")
        raw.append((name, tuple(reversed(dims)), type_id, offset))
    data_start = cur.pos + (-cur.pos % alignment)

    tensors: list[TensorInfo] = []
    for name, shape, type_id, offset in raw:
        type_name = known_types[type_id]
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
        if shape[-1] % block:
            raise InputError(path, f"tensor {name!r}: row length {shape[-1]} is not a multiple of the "
                                   f"{type_name} block size {block}")
        nbytes = math.prod(shape) // block * type_size
        if offset % alignment:
            raise InputError(path, f"tensor {name!r}: data offset {offset} is not aligned to {alignment} bytes")
        start = data_start + offset
        if start + nbytes > size:
            raise InputError(path, f"truncated: tensor {name!r} needs bytes {start}..{start + nbytes} but the "
                                   f"file has {size} bytes")
        tensors.append(TensorInfo(name, shape, type_name, type_id, start, nbytes))
    spans = sorted((t.start, t.start + t.nbytes, t.name) for t in tensors)
    for (_b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise InputError(path, f"tensors {n0!r} and {n1!r} overlap in the data section")
    return Header(version, metadata, value_types, tensors, alignment, data_start, size)


# ----------------------------------------------------------------------------- metadata -> spec
class _Meta:
    """Typed access to the metadata of one file, with messages that name the file and the key."""

    def __init__(self, header: Header, path: str, arch: str):
        self.md, self.types, self.path, self.arch = header.metadata, header.value_types, path, arch

    def key(self, suffix: str) -> str:
        return suffix.format(arch=self.arch)

    def has(self, suffix: str) -> bool:
        return self.key(suffix) in self.md

    def integer(self, suffix: str, default: Any = None, positive: bool = True) -> Any:
        key = self.key(suffix)
        if key not in self.md:
            if default is None:
                raise InputError(self.path, f"metadata {key!r} is missing")
            return default
        v = self.md[key]
        if isinstance(v, np.ndarray):  # per-layer values: Gemma's are all equal
            if v.size == 0 or v.dtype.kind not in "iu" or (v != v.flat[0]).any():
                raise UnsupportedError(f"{self.path}: metadata {key!r} varies per layer ({v[:8].tolist()}...); "
                                       f"Gemma uses one value for every layer")
            v = v.flat[0]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise InputError(self.path, f"metadata {key!r} must be an integer, got {self.types[key]} {v!r}")
        if positive and v <= 0:
            raise InputError(self.path, f"metadata {key!r} must be positive, got {v}")
        return int(v)

    def number(self, suffix: str, default: Any = None) -> Any:
        key = self.key(suffix)
        if key not in self.md:
            return default
        v = self.md[key]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise InputError(self.path, f"metadata {key!r} must be a number, got {self.types[key]} {v!r}")
        if not math.isfinite(v):
            raise InputError(self.path, f"metadata {key!r} must be finite, got {v}")
        if self.types[key] == "FLOAT32":  # 1e-6 is stored as 9.99999997e-07: take float32's shortest decimal
            return float(str(np.float32(v)))
        return float(v)

    def text(self, suffix: str, default: Any = None) -> Any:
        key = self.key(suffix)
        if key not in self.md:
            return default
        v = self.md[key]
        if not isinstance(v, str):
            raise InputError(self.path, f"metadata {key!r} must be a string, got {self.types[key]}")
        return v

    def flag(self, suffix: str, default: bool) -> bool:
        key = self.key(suffix)
        if key not in self.md:
            return default
        v = self.md[key]
        if not isinstance(v, bool):
            raise InputError(self.path, f"metadata {key!r} must be a BOOL, got {self.types[key]}")
        return v


def spec_from_metadata(header: Header, path: str) -> tuple[GemmaSpec, list[str], frozenset[str]]:
    """GemmaSpec from the metadata (and the embedding's shape), filling in what GGUF leaves implicit exactly
    as llama.cpp does. Returns (spec, notes, the spec fields the file does not store)."""
    import gguf

    K = gguf.Keys
    arch = header.metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise InputError(path, "metadata 'general.architecture' is missing or not a string")
    if arch not in ARCHITECTURES:
        raise UnsupportedError(f"{path}: GGUF architecture {arch!r} is not a Gemma; supported: "
                               f"{', '.join(ARCHITECTURES)}")
    m = _Meta(header, path, arch)
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
    embed = next((t for t in header.tensors if t.name == GGUF_NAMES["embed"]), None)
    if embed is None:
        raise InputError(path, f"no {GGUF_NAMES['embed']} tensor")
    if len(embed.shape) != 2 or embed.shape[1] != hidden:
        raise InputError(path, f"{embed.name} has shape {list(embed.shape)} but embedding_length is {hidden}")
    if m.has(K.LLM.VOCAB_SIZE) and m.integer(K.LLM.VOCAB_SIZE) != embed.shape[0]:
        raise InputError(path, f"metadata {m.key(K.LLM.VOCAB_SIZE)!r} is {m.integer(K.LLM.VOCAB_SIZE)} but "
                               f"{embed.name} has {embed.shape[0]} rows")

    # RoPE: one base (llama.cpp's default 10000), optional linear scaling.
    rope_base = m.number(K.Rope.FREQ_BASE, 10000.0)
    if not m.has(K.Rope.FREQ_BASE):
        assumed.add("rope_theta")
        if arch == "gemma3":
            notes.append("rope.freq_base is absent: llama.cpp uses 10000 for the global layers (Gemma 3 trains 1e6)")
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

    fields: dict[str, Any] = {}
    if arch == "gemma":
        fields.update(norm_placement="pre", qk_norm=False, query_pre_attn_scalar=head_dim,
                      rope_local_theta=None, rope_local_scaling_factor=factor)
    else:
        qps, why = llama_cpp_query_scalar(arch, n_layers, hidden, heads, head_dim)
        notes.append(f"query_pre_attn_scalar is not stored in GGUF; inferred as llama.cpp does: {qps} ({why})")
        assumed.add("query_pre_attn_scalar")
        pattern_key = m.key(K.Attention.SLIDING_WINDOW_PATTERN)
        layer_types = llama_cpp_layer_types(arch, n_layers)
        if pattern_key not in header.metadata:
            assumed.add("layer_types")  # llama.cpp hard-codes the layout per architecture
        else:  # newer files may spell the layout out
            pat = header.metadata[pattern_key]
            if isinstance(pat, np.ndarray) and pat.dtype == bool and pat.size == n_layers:
                layer_types = tuple(SLIDING if s else FULL for s in pat.tolist())
            elif isinstance(pat, int) and not isinstance(pat, bool) and pat > 0:
                layer_types = gemma3_layer_types(n_layers, pat)
            else:
                raise InputError(path, f"metadata {pattern_key!r} must be a positive integer or "
                                       f"{n_layers} booleans")
        if arch == "gemma2":
            sliding = m.integer(K.Attention.SLIDING_WINDOW, LLAMA_CPP_GEMMA2_DEFAULTS["sliding_window"])
            attn_cap = m.number(K.LLM.ATTN_LOGIT_SOFTCAPPING, LLAMA_CPP_GEMMA2_DEFAULTS["attn_logit_softcapping"])
            final_cap = m.number(K.LLM.FINAL_LOGIT_SOFTCAPPING, LLAMA_CPP_GEMMA2_DEFAULTS["final_logit_softcapping"])
            for key, field, suffix in (("sliding_window", "sliding_window", K.Attention.SLIDING_WINDOW),
                                       ("attn_logit_softcapping", "attention_logit_softcap",
                                        K.LLM.ATTN_LOGIT_SOFTCAPPING),
                                       ("final_logit_softcapping", "final_logit_softcap",
                                        K.LLM.FINAL_LOGIT_SOFTCAPPING)):
                if not m.has(suffix):
                    assumed.add(field)
                    notes.append(f"{m.key(suffix)} is absent: llama.cpp's default "
                                 f"{LLAMA_CPP_GEMMA2_DEFAULTS[key]} is used")
            # Gemma 2 uses one RoPE everywhere.
            fields.update(rope_local_theta=None, rope_local_scaling_factor=factor)
        else:
            sliding = m.integer(K.Attention.SLIDING_WINDOW)
            attn_cap = None
            final_cap = m.number(K.LLM.FINAL_LOGIT_SOFTCAPPING, None)
            # llama.cpp hard-codes Gemma 3's local layers: base 10000, no scaling; the stored base and
            # scaling belong to the global layers.
            fields.update(rope_local_theta=LLAMA_CPP_GEMMA3_LOCAL_ROPE_BASE, rope_local_scaling_factor=1.0)
            assumed.update({"rope_local_theta", "rope_local_scaling_factor"})
        fields.update(norm_placement="pre+post", qk_norm=arch == "gemma3", query_pre_attn_scalar=qps,
                      sliding_window=sliding, layer_types=layer_types, attention_logit_softcap=attn_cap,
                      final_logit_softcap=final_cap)

    tok = _Meta(header, path, arch)
    assumed.update(f for f, key in (("bos_token_id", K.Tokenizer.BOS_ID), ("eos_token_id", K.Tokenizer.EOS_ID),
                                    ("pad_token_id", K.Tokenizer.PAD_ID)) if key not in header.metadata)
    try:
        spec = GemmaSpec(
            family=arch,
            vocab_size=embed.shape[0],
            hidden_size=hidden,
            num_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=m.integer(K.LLM.FEED_FORWARD_LENGTH),
            activation="gelu_tanh",
            tied_embeddings=not any(t.name == GGUF_NAMES["lm_head"] for t in header.tensors),
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
def _read_raw(path: str, start: int, nbytes: int) -> np.ndarray:
    from .safetensors_io import read_at

    return read_at(path, start, nbytes, "uint8", None, "the tensor data")


def _load_float(path: str, info: TensorInfo) -> np.ndarray:
    from .safetensors_io import read_at

    return read_at(path, info.start, info.nbytes, FLOAT_TYPES[info.type_name], info.shape, f"tensor {info.name}")


def _dequantize(path: str, info: TensorInfo) -> np.ndarray:
    """float32 values of a quantized tensor, read and dequantized a block of rows at a time so that only the
    float32 result is ever held whole."""
    import gguf

    qtype = gguf.GGMLQuantizationType(info.type_id)
    row_len = info.shape[-1]
    n_rows = info.numel // row_len
    row_bytes = info.nbytes // n_rows
    out = np.empty((n_rows, row_len), dtype=np.float32)
    step = max(1, DEQUANT_CHUNK_ELEMENTS // row_len)
    try:
        with open(path, "rb") as f:
            for r in range(0, n_rows, step):
                rows = min(step, n_rows - r)
                f.seek(info.start + r * row_bytes)
                raw = np.fromfile(f, dtype=np.uint8, count=rows * row_bytes)
                if raw.size != rows * row_bytes:
                    raise InputError(path, f"file ends inside tensor {info.name}")
                with np.errstate(all="ignore"):  # NaN/inf scales make NaN values, not warnings on stderr
                    out[r:r + rows] = gguf.quants.dequantize(raw.reshape(rows, row_bytes), qtype)
    except NotImplementedError:
        raise UnsupportedError(f"{path}: tensor {info.name} is stored as {info.type_name}, which the installed "
                               f"gguf package cannot dequantize") from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    return out.reshape(info.shape)


def _load_float32(path: str, info: TensorInfo) -> np.ndarray:
    if info.type_name in FLOAT_TYPES:
        return _load_float(path, info).astype(np.float32)
    return _dequantize(path, info)


@dataclass(frozen=True)
class QuantizedTensorRef(TensorRef):
    """A GGUF-quantized tensor: `dtype` is the GGML type name (Q8_0, Q4_K, ...), `nbytes` the stored bytes,
    `load()` float32 values; `blocks(max_bytes)` yields the stored blocks as they are."""

    blocks: Callable[[int], Any] | None = None


def _minus_one(a: np.ndarray, sign: int = 1) -> np.ndarray:
    """a - 1 (the reader) or a + 1 (sign -1, the writer) in float32: llama.cpp's norm offset."""
    with np.errstate(invalid="ignore"):  # a signalling NaN stays NaN, without a RuntimeWarning on stderr
        return a - np.float32(sign)


def _tensor_ref(path: str, canonical: str, role: str, info: TensorInfo) -> TensorRef:
    origin = f"{path}:{info.name}"
    if role in NORM_ROLES:
        # llama.cpp stores Gemma norms as 1 + w (q/k norms included); canonical w is zero-centred.
        return TensorRef(name=canonical, shape=info.shape, dtype="float32", nbytes=info.nbytes, origin=origin,
                         loader=lambda: _minus_one(_load_float32(path, info)))
    chunks = lambda size: iter_bytes(path, info.start, info.nbytes, size)  # noqa: E731 - raw stored bytes
    if info.type_name in FLOAT_TYPES:  # stored row-major [out, in]: the canonical layout, byte for byte
        return TensorRef(name=canonical, shape=info.shape, dtype=FLOAT_TYPES[info.type_name], nbytes=info.nbytes,
                         origin=origin, loader=lambda: _load_float(path, info),
                         span=(path, info.start, info.nbytes))
    # Quantized: `load()` gives float32 values. The stored blocks are not values in canonical layout, so they
    # are not `chunks`; GGUF -> GGUF copies reach them through `blocks`.
    return QuantizedTensorRef(name=canonical, shape=info.shape, dtype=info.type_name, nbytes=info.nbytes,
                              origin=origin, loader=lambda: _dequantize(path, info), blocks=chunks)


# ----------------------------------------------------------------------------- quantization summary
QUANT_GROUPS: tuple[tuple[str, frozenset[str]], ...] = (
    ("embedding", frozenset({"embed"})),
    ("attention", frozenset({"q", "k", "v", "o"})),
    ("feedforward", frozenset({"gate", "up", "down"})),
    ("norms", NORM_ROLES),
    ("output", frozenset({"lm_head"})),
)


def quantization_stats(tensors: list[tuple[str, str, int, int]], file_type: str | None = None) -> dict[str, Any]:
    """Storage types and bits per weight per tensor group, from (role, GGML type, parameters, stored bytes)
    per tensor: {"file_type", "bits_per_weight", "groups": [{"group", "types": {type: tensors}, "parameters",
    "bytes", "bits_per_weight"}]}."""
    group_of = {role: g for g, roles in QUANT_GROUPS for role in roles}
    order = [g for g, _ in QUANT_GROUPS] + ["other"]
    acc: dict[str, dict[str, Any]] = {}
    for role, type_name, numel, nbytes in tensors:
        a = acc.setdefault(group_of.get(role, "other"), {"types": {}, "parameters": 0, "bytes": 0})
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


# ----------------------------------------------------------------------------- tokenizer
class _EmbeddedTokenizer(Tokenizer):
    """The GGUF's vocabulary as a SentencePiece model, built on first use (a 262k vocabulary takes a
    noticeable fraction of a second, which `summary` should not pay)."""

    _builder: Callable[[], bytes] | None = None
    _built: bytes | None = None

    @property  # type: ignore[override]
    def spm_bytes(self) -> bytes | None:
        if self._built is None and self._builder is not None:
            self._built = self._builder()
        return self._built

    @spm_bytes.setter
    def spm_bytes(self, value: bytes | None) -> None:
        self._built = value

    @property
    def has_spm(self) -> bool:
        return self._builder is not None or self._built is not None

    @cached_property
    def _spm(self) -> Any:
        self.spm_bytes  # noqa: B018 - build first, so that a bad vocabulary is reported as itself
        return Tokenizer._spm.func(self)  # type: ignore[attr-defined]


# How llama.cpp's converter (convert_hf_to_gguf.py, _create_vocab_sentencepiece) writes a SentencePiece vocabulary:
# the model's own piece types (normal 1, unknown 2, control 3, user-defined 4, unused 5, byte 6), then every token
# of tokenizer_config.json's added_tokens_decoder retyped: CONTROL when it is marked special (Gemma's <unk>,
# <mask>, <start_of_turn>, <unusedN>, ... all are), USER_DEFINED otherwise with U+2581 written back as a space
# ("\n\n", "  ", "<table>"), score -1000. tokenizer.ggml.unknown_token_id names the unknown token. Rebuilding the
# SentencePiece model undoes that: the unknown token is the one the metadata names; a CONTROL token other than
# bos/eos/pad was a piece SentencePiece matches whole in text (user-defined: Gemma's own model types them so, and
# llama.cpp, parsing special tokens, and transformers match them whole too); user-defined pieces get U+2581 back.
_SPACE_PIECE = "\u2581"


def _sentencepiece_types(tokens: Any, types: np.ndarray, unk: int, special: list[int], notes: list[str]) -> np.ndarray:
    types = types.copy()
    retyped = []
    if types[unk] != 2:
        retyped.append(f"the unknown token (id {unk}, tokenizer.ggml.unknown_token_id) is typed {int(types[unk])}")
    others = np.flatnonzero(types == 2)
    types[others[others != unk]] = 3
    types[unk] = 2
    control = np.flatnonzero(types == 3)
    added = control[~np.isin(control, special)]
    if len(added):
        types[added] = 4
        retyped.append(f"{len(added)} control tokens besides bos/eos/pad (e.g. {tokens[int(added[0])]!r}) become "
                       f"user-defined pieces, matched whole in text as llama.cpp and transformers match them")
    if retyped:
        notes.append("vocabulary read as llama.cpp's converter writes it: " + "; ".join(retyped))
    return types


def _sentencepiece_pieces(tokens: Any, types: np.ndarray) -> list[str]:
    """The pieces, with U+2581 back in user-defined ones (llama.cpp's converter writes it as a space)."""
    pieces = list(tokens)
    for i in np.flatnonzero(types == 4).tolist():
        if " " in pieces[i]:
            pieces[i] = pieces[i].replace(" ", _SPACE_PIECE)
    return pieces


def _embedded_tokenizer(header: Header, path: str, spec: GemmaSpec, notes: list[str]) -> Tokenizer | None:
    import gguf

    K = gguf.Keys.Tokenizer
    md = header.metadata
    model = md.get(K.MODEL)
    tokens = md.get(K.LIST)
    if model is None and tokens is None:
        notes.append("no tokenizer metadata in this GGUF (llama.cpp refuses to load such a file)")
        return None
    if model != "llama":
        notes.append(f"the embedded tokenizer is tokenizer.ggml.model={model!r}, not SentencePiece ('llama'): "
                     f"it is not converted")
        return None
    if not isinstance(tokens, StringArray) or not len(tokens):
        raise InputError(path, f"metadata {K.LIST!r} must be a non-empty array of strings")
    n = len(tokens)
    scores = md.get(K.SCORES)
    types = md.get(K.TOKEN_TYPE)
    for key, arr in ((K.SCORES, scores), (K.TOKEN_TYPE, types)):
        if arr is not None and (not isinstance(arr, np.ndarray) or arr.shape != (n,)):
            raise InputError(path, f"metadata {key!r} must be an array of {n} numbers, one per token")
    if scores is None:
        notes.append("the vocabulary has no scores: merges of the rebuilt SentencePiece model follow id order")
        scores = -np.arange(n, dtype=np.float32)
    meta = _Meta(header, path, "")
    types = None if types is None else np.asarray(types, dtype=np.int32)
    typed_unknown = [] if types is None else np.flatnonzero(types == 2).tolist()
    unk = meta.integer(K.UNK_ID, typed_unknown[0] if len(typed_unknown) == 1 else (3 if n > 3 else 0), positive=False)
    if not 0 <= unk < n:
        raise InputError(path, f"metadata {K.UNK_ID!r} is {unk}, outside the {n}-token vocabulary")
    special = [i for i in (spec.bos_token_id, spec.eos_token_id, spec.pad_token_id) if 0 <= i < n]
    if types is None:
        types = np.full(n, 1, dtype=np.int32)
        types[special] = 3
        types[unk] = 2
    else:
        types = _sentencepiece_types(tokens, types, unk, special, notes)
    add_prefix = meta.flag(K.ADD_PREFIX, True)
    if K.ADD_PREFIX not in md:
        notes.append("tokenizer.ggml.add_space_prefix is absent: llama.cpp's default (true) is used")
    remove_ws = meta.flag(K.REMOVE_EXTRA_WS, False)
    if n != spec.vocab_size:
        notes.append(f"the vocabulary has {n} tokens for {spec.vocab_size} embedding rows")
    ids = (spec.bos_token_id, spec.eos_token_id, spec.pad_token_id)

    def build() -> bytes:
        from ..tokenizer import spm_from_pieces

        try:
            # Gemma's SentencePiece model is BPE; GGUF keeps pieces, scores and types but not the model type.
            return spm_from_pieces(_sentencepiece_pieces(tokens, types), scores.tolist(), types.tolist(),
                                   model_type="bpe",
                                   add_dummy_prefix=add_prefix, remove_extra_whitespaces=remove_ws,
                                   bos_id=ids[0], eos_id=ids[1], pad_id=ids[2])
        except ValueError as e:
            raise InputError(path, f"the embedded vocabulary cannot be rebuilt as a SentencePiece model: {e}") from None

    tok = _EmbeddedTokenizer(source=path)
    tok._builder = build
    return tok


# ----------------------------------------------------------------------------- reading
def read(path: str) -> Checkpoint:
    header = read_header(path)
    spec, notes, assumed = spec_from_metadata(header, path)
    tensors: dict[str, TensorRef] = {}
    ignored: dict[str, tuple[tuple[int, ...], str]] = {}
    for info in header.tensors:
        canonical = canonical_of(info.name)
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
    tokenizer = _embedded_tokenizer(header, path, spec, notes)
    file_type = header.metadata.get("general.file_type")
    file_type_name = None
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        import gguf

        try:
            file_type_name = gguf.LlamaFileType(file_type).name
        except ValueError:
            file_type_name = str(file_type)
    # The metadata, big arrays (the vocabulary) summarised: what the spec came from.
    config = {k: (v if not isinstance(v, (list, np.ndarray, StringArray)) else f"<{header.value_types[k]} of {len(v)}>")
              for k, v in header.metadata.items()}
    stored = {canonical_of(t.name): t for t in header.tensors}
    quantization = quantization_stats([(parse_canonical(n)[0], stored[n].type_name,  # type: ignore[index]
                                        stored[n].numel, stored[n].nbytes) for n in ordered], file_type_name)
    return Checkpoint(spec=spec, tensors=ordered, source=path, format="gguf", tokenizer=tokenizer, notes=notes,
                      ignored=ignored, config=config, files=[path], assumed=assumed, quantization=quantization)


# ----------------------------------------------------------------------------- writing
def _check_expressible(spec: GemmaSpec, options: "WriteOptions") -> None:
    """GGUF (as llama.cpp reads it) leaves several Gemma settings implicit. Refuse what it would get wrong,
    unless --force, which writes the file and says what llama.cpp will do instead."""
    if spec.family not in ARCHITECTURES:
        raise UnsupportedError(f"{spec.family} checkpoints cannot be written as a Gemma GGUF")
    problems: list[str] = []
    family_layout = ("pre" if spec.family == "gemma" else "pre+post", spec.family == "gemma3")
    if (spec.norm_placement, spec.qk_norm) != family_layout or spec.norm_offset != 1 \
            or not spec.scale_embeddings or spec.activation != "gelu_tanh" or spec.norm_kind != "rmsnorm":
        raise UnsupportedError(f"this {spec.family} checkpoint deviates from its family's layout (norms, "
                               f"activation or embedding scale): llama.cpp's {spec.family} graph cannot run it")
    qps, why = llama_cpp_query_scalar(spec.family, spec.num_layers, spec.hidden_size, spec.num_attention_heads,
                                      spec.head_dim)
    if spec.family != "gemma" and spec.query_pre_attn_scalar != qps:
        problems.append(f"query_pre_attn_scalar is {spec.query_pre_attn_scalar}, but GGUF cannot store it and "
                        f"llama.cpp will use {qps} ({why})")
    if spec.family == "gemma" and spec.query_pre_attn_scalar != spec.head_dim:
        problems.append(f"query_pre_attn_scalar {spec.query_pre_attn_scalar} != head_dim: llama.cpp's Gemma 1 "
                        f"uses head_dim")
    if tuple(spec.layer_types) != llama_cpp_layer_types(spec.family, spec.num_layers):
        problems.append("the sliding-window layout differs from the one llama.cpp hard-codes for "
                        f"{spec.family}")
    if spec.family == "gemma":
        if spec.attention_logit_softcap or spec.final_logit_softcap or spec.sliding_window:
            problems.append("Gemma 1 in llama.cpp has no soft caps and no sliding window")
    if spec.family == "gemma2" and (spec.attention_logit_softcap is None or spec.final_logit_softcap is None):
        problems.append("llama.cpp always soft-caps Gemma 2 (50 / 30 when unset); this checkpoint has no cap")
    if spec.family == "gemma3":
        if spec.attention_logit_softcap is not None:
            problems.append("llama.cpp's Gemma 3 has no attention-logit soft cap")
        if spec.local_rope_theta != LLAMA_CPP_GEMMA3_LOCAL_ROPE_BASE or spec.rope_local_scaling_factor != 1.0:
            problems.append(f"llama.cpp hard-codes Gemma 3's local RoPE (base 10000, no scaling); this "
                            f"checkpoint has base {spec.local_rope_theta}, scaling {spec.rope_local_scaling_factor}")
    elif spec.local_rope_theta != spec.rope_theta or spec.rope_local_scaling_factor != spec.rope_scaling_factor:
        problems.append(f"llama.cpp's {spec.family} uses one RoPE for every layer")
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


def _plan_tensor(ref: TensorRef, role: str, layer: int | None, options: "WriteOptions",
                 notes: set[str]) -> _Planned:
    import gguf

    from ..tensorio import cast_array

    Q = gguf.GGMLQuantizationType
    name = gguf_name(role, layer)
    shape = tuple(ref.shape)
    numel = math.prod(shape)

    def nbytes(qtype: Any) -> int:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        return numel // block * size

    if role in NORM_ROLES:
        # llama.cpp applies Gemma norms as x * w, so it stores 1 + w, always in float32.
        return _Planned(name, shape, Q.F32, nbytes(Q.F32),
                        lambda: _minus_one(ref.load().astype(np.float32), -1))
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


def _add_tokenizer(w: Any, ckpt: Checkpoint, notes: list[str]) -> None:
    """tokenizer.ggml.* from the source's SentencePiece model: pieces, scores and types as they are (llama.cpp's
    SentencePiece tokenizer works from exactly these), padded with unused tokens up to the embedding rows."""
    import gguf

    from ..tokenizer import PIECE_UNUSED, PIECE_USER_DEFINED, spm_pieces

    spec = ckpt.spec
    tok = ckpt.tokenizer
    if tok is None:
        notes.append("the source has no tokenizer: the GGUF has no tokenizer metadata, and llama.cpp will refuse "
                     "to load it (it needs tokenizer.ggml.model, tokens, scores and token types)")
        return
    model_bytes, rebuilt = tok.spm_or_rebuilt()
    if rebuilt:
        notes.append("rebuilt the SentencePiece vocabulary from tokenizer.json (ids checked equal on the "
                     "parity texts)")
    if model_bytes is None:
        notes.append("the source tokenizer has no SentencePiece model and none could be rebuilt from "
                     "tokenizer.json: the GGUF has no tokenizer metadata, and llama.cpp will refuse to load it")
        return
    try:
        info = spm_pieces(model_bytes)
    except ValueError as e:
        raise InputError(tok.spm_path or tok.source, str(e)) from None
    pieces, scores, types = info["pieces"], info["scores"], info["types"]
    if info["precompiled_charsmap"] or info["model_type"] != "bpe":
        notes.append(f"the SentencePiece model is {info['model_type']} with the {info['normalizer']!r} normalizer; "
                     f"GGUF keeps neither its model type nor its normalization rules, and llama.cpp tokenizes with "
                     f"score-ranked merges on unnormalized text: ids can differ from SentencePiece's")
    if len(pieces) > spec.vocab_size:
        raise UnsupportedError(f"the tokenizer has {len(pieces)} pieces but the embedding only {spec.vocab_size} "
                               f"rows: llama.cpp cannot load such a GGUF")
    if len(pieces) < spec.vocab_size:
        # As llama.cpp's converter does: one unused token per extra embedding row, so the counts agree.
        extra = spec.vocab_size - len(pieces)
        pieces = pieces + [f"[PAD{i}]" for i in range(len(pieces), spec.vocab_size)]
        scores = scores + [-1000.0] * extra
        types = types + [PIECE_UNUSED] * extra
        notes.append(f"the vocabulary has {len(pieces) - extra} pieces for {spec.vocab_size} embedding rows: "
                     f"{extra} unused [PAD] tokens added")
    # As llama.cpp's converter writes user-defined pieces: U+2581 as a space, since llama.cpp matches them in the
    # raw text (the reader turns them back, see _sentencepiece_pieces).
    pieces = [p.replace(_SPACE_PIECE, " ") if t == PIECE_USER_DEFINED else p for p, t in zip(pieces, types)]
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    unk = next((i for i, t in enumerate(types) if t == 2), None)
    if unk is None:
        raise InputError(tok.spm_path or tok.source, "the SentencePiece model has no unknown piece (type 2)")
    w.add_bos_token_id(spec.bos_token_id)
    w.add_eos_token_id(spec.eos_token_id)
    w.add_unk_token_id(unk)
    w.add_pad_token_id(spec.pad_token_id)
    eot = tok.token_to_id("<end_of_turn>")
    if eot is not None:
        w.add_uint32(gguf.Keys.Tokenizer.EOT_ID, eot)
    w.add_add_bos_token(True)  # Gemma always starts with <bos>
    w.add_add_eos_token(False)
    w.add_add_space_prefix(bool(info["add_dummy_prefix"]))
    if info["remove_extra_whitespaces"]:
        w.add_bool(gguf.Keys.Tokenizer.REMOVE_EXTRA_WS, True)


def planned_nbytes(ckpt: Checkpoint, options: "WriteOptions") -> int:
    """The tensor bytes `write` will write (what its progress counts): each tensor in the type it is planned
    in (Q8_0 blocks, norms in float32, rows Q8_0 cannot split in float16), without producing any."""
    total = 0
    for name, ref in ckpt.tensors.items():
        parsed = parse_canonical(name)
        if parsed is not None:
            total += _plan_tensor(ref, parsed[0], parsed[1], options, set()).nbytes
    return total


def write(ckpt: Checkpoint, dest: str, options: "WriteOptions", progress: Callable[[int], None]) -> None:
    """Write `ckpt` as one GGUF file: llama.cpp's names and metadata, norms as 1 + w in float32, the tied
    embedding once, the tokenizer from the source's SentencePiece model; tensor data streamed one tensor
    at a time after the header (peak memory: one tensor)."""
    import gguf

    from pathlib import Path

    spec = ckpt.spec
    _check_expressible(spec, options)
    plan_notes: set[str] = set()
    plans = []
    for name, ref in ckpt.tensors.items():
        parsed = parse_canonical(name)
        if parsed is None:
            raise UnsupportedError(f"tensor {name} has no GGUF name")
        plans.append(_plan_tensor(ref, parsed[0], parsed[1], options, plan_notes))
    options.notes.extend(sorted(plan_notes))

    w = gguf.GGUFWriter(path=None, arch=spec.family)
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
    w.add_rope_freq_base(spec.rope_theta)  # Gemma 3: the global layers' base; local is hard-coded 10000
    if spec.rope_scaling_factor != 1.0:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(spec.rope_scaling_factor)
    if spec.family in ("gemma2", "gemma3") and spec.sliding_window:
        w.add_sliding_window(spec.sliding_window)
    if spec.attention_logit_softcap is not None:
        w.add_attn_logit_softcapping(spec.attention_logit_softcap)
    if spec.final_logit_softcap is not None:
        w.add_final_logit_softcapping(spec.final_logit_softcap)
    w.add_file_type(_file_type(plans, ckpt, options))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(w, ckpt, options.notes)
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
from .common import FormatInfo  # noqa: E402

FORMAT = FormatInfo(name="gguf", title="GGUF", description="a .gguf file", stores_quantization=True,
                    native_runtime=None, magic=MAGIC, file_suffixes=(".gguf",))
