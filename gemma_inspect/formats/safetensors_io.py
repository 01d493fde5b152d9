"""A strict safetensors header reader and a streaming writer (no torch, bounded memory).

The reader validates everything a hostile file could lie about (header length, JSON, dtypes, shapes,
offsets inside the data and not overlapping) before a single tensor byte is read. The writer lays out
the header from names, dtypes and shapes first, then accepts tensor bytes one tensor at a time.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from ..dtypes import DTYPE_BYTES, numpy_dtype  # noqa: F401 - numpy_dtype re-exported for the readers
from ..errors import InputError, OutputError
from ..safeio import loads_bounded, read_bounded, regular_file
from ..tensorio import iter_bytes, write_pieces  # noqa: F401 - iter_bytes re-exported for the readers
from ..tensorio.output import DIRECT_MIN, PAGE, open_output

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
# Tensors in one file: a Gemma 3 27B checkpoint holds about 1,250 in all its shards. The JSON of a header is
# bounded before it is parsed (an entry is an object, two arrays and about a dozen items), so a crafted
# 100 MB header cannot make Python build gigabytes of objects first.
MAX_TENSORS = 100_000
MAX_HEADER_VALUES = 12 * MAX_TENSORS  # 8 commas and brackets for an entry of a 2-D tensor

# safetensors dtype code <-> our dtype name
ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
             "I8": "int8", "U8": "uint8", "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool"}
ST_CODES = {v: k for k, v in ST_DTYPES.items()}
ITEMSIZE = DTYPE_BYTES  # bytes per element of each dtype name


@dataclass(frozen=True)
class StEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    nbytes: int


def read_header(path: str) -> tuple[dict[str, StEntry], dict[str, str]]:
    """Parse and validate a safetensors header. Returns (entries by name, __metadata__)."""
    size = regular_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise InputError(path, f"not a safetensors file: {size} bytes, too short for a header")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > MAX_HEADER_BYTES:
                raise InputError(path, f"safetensors header length {hlen} exceeds the "
                                       f"{MAX_HEADER_BYTES // (1024 * 1024)} MB limit")
            if 8 + hlen > size:
                raise InputError(path, f"safetensors header length {hlen} is longer than the file "
                                       f"({size} bytes): truncated or not a safetensors file")
            raw = read_bounded(f, hlen, path, "safetensors header", MAX_HEADER_VALUES)
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    try:
        header = loads_bounded(raw, path, "safetensors header", MAX_HEADER_VALUES, object_pairs_hook=_unique)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"safetensors header is not valid JSON ({e.__class__.__name__}: "
                               f"{str(e).splitlines()[0][:80]})") from None
    except _Duplicate as e:
        raise InputError(path, f"safetensors header names {e.args[0]!r} twice") from None
    if not isinstance(header, dict):
        raise InputError(path, "safetensors header is not a JSON object")
    if len(header) > MAX_TENSORS:
        raise InputError(path, f"safetensors header lists {len(header)} tensors (limit {MAX_TENSORS})")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise InputError(path, "safetensors __metadata__ is not a JSON object")
    data_start = 8 + hlen
    data_size = size - data_start
    entries: dict[str, StEntry] = {}
    for name, info in header.items():
        if not isinstance(info, dict):
            raise InputError(path, f"tensor {name!r}: header entry is not an object")
        code = info.get("dtype")
        if not isinstance(code, str) or code not in ST_DTYPES:
            raise InputError(path, f"tensor {name!r}: unknown dtype {code!r}")
        shape = info.get("shape")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**40 for s in shape)):
            raise InputError(path, f"tensor {name!r}: invalid shape {shape!r}")
        offs = info.get("data_offsets")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise InputError(path, f"tensor {name!r}: invalid data_offsets {offs!r}")
        begin, end = offs
        dtype = ST_DTYPES[code]
        numel = 1
        for s in shape:
            numel *= s
        if not 0 <= begin <= end:
            raise InputError(path, f"tensor {name!r}: data_offsets {offs} are not increasing")
        if end > data_size:
            raise InputError(path, f"tensor {name!r}: data_offsets {offs} point beyond the data "
                                   f"({data_size} bytes): truncated file")
        if end - begin != numel * ITEMSIZE[dtype]:
            raise InputError(path, f"tensor {name!r}: {end - begin} bytes for shape {shape} of {dtype} "
                                   f"(expected {numel * ITEMSIZE[dtype]})")
        entries[name] = StEntry(name, dtype, tuple(shape), data_start + begin, end - begin)
    spans = sorted((e.start, e.start + e.nbytes, e.name) for e in entries.values() if e.nbytes)
    for (b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise InputError(path, f"tensors {n0!r} and {n1!r} overlap in the data section")
    # As the safetensors library requires: the tensors tile the data section exactly. A header length off by
    # a few bytes would otherwise shift every tensor's bytes without a word.
    covered = data_start
    for b, e, n in spans:
        if b != covered:
            raise InputError(path, f"bytes {covered - data_start}..{b - data_start} of the data section belong to "
                                   f"no tensor (before {n!r}): wrong header length or offsets")
        covered = e
    if covered != size:
        raise InputError(path, f"the tensors end at byte {covered - data_start} of the data section, which has "
                               f"{data_size} bytes: wrong header length or offsets")
    return entries, {str(k): str(v) for k, v in metadata.items()}


class _Duplicate(Exception):
    pass


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object that names no key twice (json.loads would silently keep the last)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        raise _Duplicate(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return out


def read_at(path: str, start: int, nbytes: int, dtype: str, shape: tuple[int, ...] | None, what: str) -> np.ndarray:
    """Bytes [start, start + nbytes) of a file as an array of `dtype` (a dtype name) and `shape` (None: flat), a
    fresh copy; an unreadable or short file (truncated since its header was read) is an InputError naming
    `what` was being read."""
    dt = numpy_dtype(dtype)
    count = nbytes // dt.itemsize
    # safetensors (and the raw spans of H5 datasets read here) are little-endian whatever the host: read as such,
    # and swapped to native order on a big-endian host.
    stored = dt.newbyteorder("<") if dt.byteorder not in ("|",) and dt.kind != "V" else dt
    try:
        arr = np.fromfile(path, dtype=stored, count=count, offset=start)
    except OSError as e:
        raise InputError(path, f"cannot read {what}: {e.strerror or e}") from None
    if arr.size != count:
        raise InputError(path, f"file ends inside {what}")
    if not arr.dtype.isnative:
        arr = arr.astype(dt)
    return arr if shape is None else arr.reshape(shape)


def read_array(path: str, entry: StEntry) -> np.ndarray:
    """One tensor's bytes as a numpy array of its shape (a fresh copy, no mmap kept)."""
    return read_at(path, entry.start, entry.nbytes, entry.dtype, entry.shape, f"tensor {entry.name}")


class SafetensorsWriter:
    """Streaming writer: `add()` each tensor's bytes in the order given to the constructor."""

    def __init__(self, path: str, layout: Iterable[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.path = path
        self._order: list[tuple[str, int]] = []
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        offset = 0
        for name, dtype, shape in layout:
            n = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[dtype]
            header[name] = {"dtype": ST_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
            self._order.append((name, n))
            offset += n
        self.data_bytes = offset
        raw = json.dumps(header, separators=(",", ":")).encode()
        # The data starts 8-byte aligned, as the reference writer pads it; a file big enough to be written past
        # the page cache (tensorio.output) starts its data on a page, so that its tensors go to the device
        # straight from the pipeline's buffers (the padding is spaces: JSON whitespace, as the reference pads).
        align = PAGE if offset >= DIRECT_MIN else 8
        raw += b" " * (-(8 + len(raw)) % align)
        self._f: Any = open_output(path, "wb", size_hint=offset + 8 + len(raw))
        self._f.write(struct.pack("<Q", len(raw)))
        self._f.write(raw)
        self._next = 0

    def add(self, name: str, pieces: Iterable[Any], progress: Callable[[int], None] | None = None) -> int:
        """Write the next planned tensor from `pieces` (bytes, memoryviews or tensorio.Span); returns its bytes."""
        if self._next >= len(self._order):
            raise OutputError(f"{self.path}: tensor {name} written after the last planned tensor")
        want_name, want = self._order[self._next]
        if name != want_name:
            raise OutputError(f"{self.path}: expected tensor {want_name} next, got {name}")
        try:
            got = write_pieces(self._f, pieces, progress)
        except OSError as e:
            raise OutputError(f"{self.path}: cannot write: {e.strerror or e}") from None
        if got != want:
            raise OutputError(f"{self.path}: tensor {name} has {got} bytes, planned {want}")
        self._next += 1
        return got

    def close(self) -> None:
        if self._f.closed:
            return
        missing = len(self._order) - self._next
        self._f.close()
        if missing:
            raise OutputError(f"{self.path}: closed with {missing} planned tensors unwritten")

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._f.__exit__(*exc)  # abandoned: descriptors closed, nothing hashed
