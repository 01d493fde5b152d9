"""The GGUF container: a strict parser of the header, and raw reads and dequantization of tensor data.

The header (magic, version, metadata, tensor infos, data layout) is parsed by a parser of our own: the `gguf`
package's GGUFReader needs ~20 s for a 262k-token vocabulary, and a crafted count must fail fast, not loop.
Every count, length and offset is checked against the file (and the limits below) before it is used. Tensor
types, sizes and dequantization come from the `gguf` package. Nothing here knows about Gemma: the mapping of
names and metadata to a checkpoint is gguf.py's.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, UnsupportedError

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

# Stored float types keep their dtype; every other weight type is a quantization, dequantized to float32.
FLOAT_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
GGML_OF_FLOAT = {v: k for k, v in FLOAT_TYPES.items()}
NON_WEIGHT_TYPES = ("I8", "I16", "I32", "I64", "F64")


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


# ----------------------------------------------------------------------------- typed metadata
class Meta:
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


# ----------------------------------------------------------------------------- tensors
def decoder_basics(header: Header, path: str, arch: str) -> tuple[Meta, dict[str, TensorInfo], TensorInfo, int, int]:
    """What every architecture's metadata reader starts from: the metadata reader, the tensors by name, the token
    embedding (which must exist), the block count (bounded) and the embedding width."""
    import gguf

    from .common import MAX_LAYERS

    K = gguf.Keys
    m = Meta(header, path, arch)
    tensors = {t.name: t for t in header.tensors}
    embed = tensors.get("token_embd.weight")
    if embed is None:
        raise InputError(path, "no token_embd.weight tensor")
    n = m.integer(K.LLM.BLOCK_COUNT)
    if n > MAX_LAYERS:
        raise InputError(path, f"metadata {m.key(K.LLM.BLOCK_COUNT)!r} is {n}, more than the {MAX_LAYERS} this tool "
                               f"accepts")
    return m, tensors, embed, n, m.integer(K.LLM.EMBEDDING_LENGTH)


def read_raw(path: str, start: int, nbytes: int) -> np.ndarray:
    from .safetensors_io import read_at

    return read_at(path, start, nbytes, "uint8", None, "the tensor data")


def load_float(path: str, info: TensorInfo) -> np.ndarray:
    from .safetensors_io import read_at

    return read_at(path, info.start, info.nbytes, FLOAT_TYPES[info.type_name], info.shape, f"tensor {info.name}")


def dequantize_rows(path: str, info: TensorInfo, r0: int, r1: int, out: np.ndarray) -> None:
    """Dequantize rows [r0, r1) of a quantized tensor (rows of its last axis) into `out`, a float32 array of
    (r1 - r0) x row length, a block of rows at a time: what a converter streams through its reused buffers."""
    import gguf

    qtype = gguf.GGMLQuantizationType(info.type_id)
    row_len = info.shape[-1]
    row_bytes = info.nbytes // (info.numel // row_len)
    step = max(1, DEQUANT_CHUNK_ELEMENTS // row_len)
    out = out.reshape(r1 - r0, row_len)
    try:
        with open(path, "rb") as f:
            for r in range(r0, r1, step):
                rows = min(step, r1 - r)
                f.seek(info.start + r * row_bytes)
                raw = np.fromfile(f, dtype=np.uint8, count=rows * row_bytes)
                if raw.size != rows * row_bytes:
                    raise InputError(path, f"file ends inside tensor {info.name}")
                with np.errstate(all="ignore"):  # NaN/inf scales make NaN values, not warnings on stderr
                    out[r - r0:r - r0 + rows] = gguf.quants.dequantize(raw.reshape(rows, row_bytes), qtype)
    except NotImplementedError:
        raise UnsupportedError(f"{path}: tensor {info.name} is stored as {info.type_name}, which the installed "
                               f"gguf package cannot dequantize") from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None


def dequantize(path: str, info: TensorInfo) -> np.ndarray:
    """float32 values of a quantized tensor, read and dequantized a block of rows at a time so that only the
    float32 result is ever held whole."""
    n_rows = info.numel // info.shape[-1]
    out = np.empty((n_rows, info.shape[-1]), dtype=np.float32)
    dequantize_rows(path, info, 0, n_rows, out)
    return out.reshape(info.shape)


def load_float32(path: str, info: TensorInfo) -> np.ndarray:
    if info.type_name in FLOAT_TYPES:
        return load_float(path, info).astype(np.float32)
    return dequantize(path, info)


def file_type_and_config(header: Header) -> tuple[str | None, dict[str, Any]]:
    """general.file_type's name (llama.cpp's LlamaFileType; the number where it has no name), and the metadata with
    its big arrays (the vocabulary) summarised: what the spec came from."""
    file_type = header.metadata.get("general.file_type")
    file_type_name = None
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        import gguf

        try:
            file_type_name = gguf.LlamaFileType(file_type).name
        except ValueError:
            file_type_name = str(file_type)
    config = {k: (v if not isinstance(v, (list, np.ndarray, StringArray)) else f"<{header.value_types[k]} of {len(v)}>")
              for k, v in header.metadata.items()}
    return file_type_name, config
