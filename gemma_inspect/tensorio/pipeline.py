"""The byte pipeline of a conversion: one tensor's bytes, read from where they lie, cast and re-laid-out into reused
buffers by a producer thread, and written by the caller, memory bounded by a few chunks whatever the tensor.

Pieces of bytes are `bytes`/`memoryview`, a `Span` of a file (written from maps of its pages) or a `Pooled`
buffer (handed back to its pool once written). Depends only on `errors`, `dtypes` and `arrays`: every writer can
use it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from ..arrays import Layout, aligned_empty, bits_dtype, cast_into, permute, transpose2d
from ..dtypes import CAST_DTYPES, DTYPE_BYTES, FLOAT_DTYPES, numpy_dtype
from ..errors import InputError
from .stages import add_stage

if TYPE_CHECKING:  # pragma: no cover
    from ..checkpoint import TensorRef

# The bands tensors are streamed in, and the size of each reused buffer: one FFN kernel of Gemma 2B in bfloat16 is
# transposed in one kernel call. Measured on the 2-core test VM against 32 MB buffers (bands, the source read
# once per band): 4.0 s re-laying-out against 4.6-5.9 s. Two pool buffers (prefetched's default): the producer
# re-lays-out the next band while the device writes the last one (O_DIRECT: the writer waits on the disk, not on
# a CPU); on the 2-core AMD VM 1.46-1.74 s against 1.77-1.91 s with one buffer (Keras -> HF, 2.37 GB), 1.55-1.96
# s against 1.76-1.98 s (HF -> Keras), for 70 MB more RSS. (With buffered writes, one buffer had been faster.)
CHUNK_BYTES = 64 * 1024 * 1024

Progress = Callable[[int], None]  # called with the number of bytes just written


def cast_array(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Cast a float array to `dtype` (one of dtypes.CAST_DTYPES) with round-to-nearest-even."""
    target = numpy_dtype(dtype)
    if arr.dtype == target:
        return arr
    with np.errstate(all="ignore"):  # NaN/inf (and overflow to inf) are cast as they are, without warnings
        if arr.dtype != np.float32 and target != np.float32:
            arr = arr.astype(np.float32)  # bf16 <-> f16 goes through f32, exactly
        return arr.astype(target)


@dataclass(frozen=True)
class Span:
    """Raw bytes [offset, offset + nbytes) of a file, to be written as they are, from maps of its pages."""

    path: str
    offset: int
    nbytes: int


class BufferPool:
    """At most `count` reused byte buffers that tensor bytes are read, re-laid-out and cast into, handed from the
    thread that fills them to the one that writes them and back.

    Buffers are allocated on first need and then reused: a fresh buffer costs a page fault per 4 KB page (in a VM,
    copying 256 MB into a new array took 0.83 s, into a reused one 0.03 s), and memory stays bounded by
    `count` chunks whatever the size of the largest tensor. `get` blocks while every buffer is in use."""

    def __init__(self, size: int = CHUNK_BYTES, count: int = 2):
        import queue

        self.size, self.count = size, max(1, count)
        self._free: queue.Queue = queue.Queue()
        self._made = 0
        self.allocated_bytes = 0  # everything this pool ever held at once (buffers are replaced, never added)

    def get(self, nbytes: int, stop: Any = None) -> np.ndarray:
        """A buffer (uint8) of at least `nbytes`; waits for one to come back when all are out, and gives up
        (raises _Stopped) once `stop` (a threading.Event) is set."""
        import queue

        buf = None
        try:
            buf = self._free.get_nowait()
        except queue.Empty:
            fresh = self._made < self.count
            self._made += fresh  # a new buffer, below
            while buf is None and not fresh:
                try:
                    buf = self._free.get(timeout=0.1)
                except queue.Empty:
                    if stop is not None and stop.is_set():
                        raise _Stopped from None
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                self.allocated_bytes -= buf.nbytes
            buf = aligned_empty(max(nbytes, self.size))
            self.allocated_bytes += buf.nbytes
        return buf

    def put(self, buf: np.ndarray) -> None:
        self._free.put(buf)


class Scratch:
    """Named buffers private to one thread, grown as needed and reused (the producer's read and cast space)."""

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, nbytes: int) -> np.ndarray:
        buf = self._bufs.get(name)
        if buf is None or buf.nbytes < nbytes:
            self._bufs.pop(name, None)
            buf = self._bufs[name] = aligned_empty(nbytes)
        return buf

    @property
    def allocated_bytes(self) -> int:
        return sum(b.nbytes for b in self._bufs.values())


class _Stopped(Exception):
    pass


class Pooled:
    """Bytes held in a pool's buffer: written, then handed back (`release`)."""

    __slots__ = ("view", "_pool", "_buf")

    def __init__(self, pool: BufferPool, buf: np.ndarray, nbytes: int):
        self.view = memoryview(buf)[:nbytes]
        self._pool: BufferPool | None = pool
        self._buf = buf

    @property
    def nbytes(self) -> int:
        return self.view.nbytes

    def release(self) -> None:
        if self._pool is not None:
            self.view.release()
            self._pool.put(self._buf)
            self._pool = None


Piece = bytes | memoryview | Span | Pooled


class Buffers:
    """What one conversion streams through: the pool shared with the writer and the producer's scratch."""

    def __init__(self, chunk: int = CHUNK_BYTES, count: int = 2, stop: Any = None):
        self.chunk = chunk
        self.pool = BufferPool(chunk, count)
        self.scratch = Scratch()
        self.stop = stop

    def out(self, nbytes: int) -> np.ndarray:
        return self.pool.get(nbytes, self.stop)

    @property
    def allocated_bytes(self) -> int:
        return self.pool.allocated_bytes + self.scratch.allocated_bytes


def _read_into(fd: int, path: str, offset: int, dst: np.ndarray) -> None:
    """Fill `dst` (a uint8 buffer) with the file's bytes from `offset`; a short file is an InputError."""
    start = time.perf_counter()
    view = memoryview(dst)
    done = 0
    while done < view.nbytes:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise InputError(path, f"file ends {view.nbytes - done} bytes before the end of a tensor")
        done += n
    add_stage("read", time.perf_counter() - start)


def _source_bytes(fd: int, path: str, offset: int, nbytes: int, scratch: Scratch) -> np.ndarray:
    """The file's bytes [offset, offset + nbytes) as a read-only uint8 array: a shared read-only memory map of
    the page cache (populated at once; unmapped when the array is dropped), which the kernels read without the
    bytes being copied into a buffer first; where a file cannot be mapped, read into the scratch buffer."""
    import mmap

    start = time.perf_counter()
    size = os.fstat(fd).st_size
    if offset + nbytes > size:
        raise InputError(path, f"file ends {offset + nbytes - max(size, offset)} bytes before the end of a tensor")
    if nbytes == 0:
        return np.empty(0, dtype=np.uint8)
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        m = mmap.mmap(fd, offset + nbytes - base, prot=mmap.PROT_READ,
                      flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), offset=base)
    except (OSError, ValueError, TypeError):  # no mmap here (or no prot/flags): read into the scratch buffer
        buf = scratch.get("read", nbytes)[:nbytes]
        _read_into(fd, path, offset, buf)
        return buf
    add_stage("read", time.perf_counter() - start)
    return np.frombuffer(m, dtype=np.uint8, count=nbytes, offset=offset - base)


def page_rows(rows: int, row_bytes: int, page: int = 4096) -> int:
    """At most `rows` rows of `row_bytes` each, as many as keep a band a whole number of pages where that leaves at
    least one row: bands that follow a page-aligned one then start on a page too, and are written to the device
    straight from their buffer (tensorio.output) instead of through its staging copy."""
    step = page // math.gcd(row_bytes, page) if row_bytes else 1
    return rows - rows % step if rows >= step else rows


def _typed(buf: np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return buf[:n].view(dtype).reshape(shape)


def _streamable(ref: TensorRef, dtype: str, layout: Any) -> tuple[str, int, Any] | None:
    """(file, offset, re-layout) when `ref`'s bytes can be streamed from a file band by band into `dtype` and
    `layout` (a Layout from the canonical one, or None); None when the tensor has to be loaded whole."""
    if ref.dtype not in FLOAT_DTYPES or not (dtype == ref.dtype or dtype in CAST_DTYPES):
        return None
    if ref.stored is not None:  # stored in another layout: re-laid-out on the way
        path, offset, _n, relayout = ref.stored
        return (path, offset, relayout) if layout is None else None  # two re-layouts: loaded whole
    if ref.span is None:
        return None
    if layout is None:
        return ref.span[0], ref.span[1], None
    if isinstance(layout, Layout):
        return ref.span[0], ref.span[1], layout
    return None


def tensor_pieces(ref: TensorRef, dtype: str, layout: Any = None, buffers: Buffers | None = None,
                  chunk: int | None = None) -> Iterator[Piece]:
    """Bytes of one tensor in `dtype` and (after `layout`, an arrays.Layout or a function of the canonical array)
    the target layout.

    Unchanged bytes that lie in a file are a `Span`, written from maps of the file's pages. Otherwise, when the
    stored bytes lie in a file, the tensor is streamed band by band through reused buffers (read into scratch,
    cast, re-laid-out into a pool buffer that the writer writes and hands back), and never held whole: the
    embedding of a 2B model is 1 GB in bfloat16. Tensors without such bytes (compressed HDF5, pickles, quantized
    GGUF) are loaded whole."""
    buffers = buffers or Buffers(chunk or CHUNK_BYTES)
    chunk = chunk or buffers.chunk
    if layout is None and ref.stored is None and dtype == ref.dtype:
        if ref.span is not None:
            yield Span(*ref.span)
            return
        if ref.chunks is not None:
            yield from ref.chunks(chunk)
            return
    source = _streamable(ref, dtype, layout)
    if source is not None:
        yield from _stream(ref, dtype, source, buffers, chunk)
        return
    rows_of = getattr(ref, "dequantize_rows", None)
    if layout is None and rows_of is not None and dtype in CAST_DTYPES:
        yield from _dequantized(ref, rows_of, dtype, buffers, chunk)
        return
    if layout is None and ref.chunks is not None and ref.dtype in FLOAT_DTYPES and dtype in CAST_DTYPES:
        src = numpy_dtype(ref.dtype)
        for piece in ref.chunks((chunk // src.itemsize) * src.itemsize):
            out = cast_array(np.frombuffer(piece, dtype=src), dtype)
            yield memoryview(out.view(np.uint8))
        return
    start = time.perf_counter()
    arr = ref.load()
    add_stage("read", time.perf_counter() - start)
    start = time.perf_counter()
    if layout is not None:
        arr = layout.apply(arr) if hasattr(layout, "apply") else layout(arr)
    arr = np.ascontiguousarray(cast_array(arr, dtype))
    add_stage("transform", time.perf_counter() - start)
    yield memoryview(arr.reshape(-1).view(np.uint8))  # bytes without a copy (bfloat16 has no buffer code)


def _dequantized(ref: TensorRef, rows_of: Callable[[int, int, np.ndarray], None], dtype: str, buffers: Buffers,
                 chunk: int) -> Iterator[Pooled]:
    """A quantized tensor dequantized (and cast) band by band of rows into the pool's buffers: memory is a chunk,
    not the float32 tensor (a 262,144-row embedding is 671 MB in float32 at width 640)."""
    row_len = ref.shape[-1] if ref.shape else 1
    n_rows = ref.numel // max(1, row_len)
    ddt = numpy_dtype(dtype)
    rows = page_rows(max(1, chunk // (row_len * 4)), row_len * ddt.itemsize)
    for r0 in range(0, n_rows, rows):
        r1 = min(n_rows, r0 + rows)
        n = (r1 - r0) * row_len
        out = buffers.out(n * ddt.itemsize)
        start = time.perf_counter()
        if ddt == np.float32:
            rows_of(r0, r1, _typed(out, ddt, (r1 - r0, row_len)))
        else:
            f32 = _typed(buffers.scratch.get("dequant", n * 4), np.dtype(np.float32), (r1 - r0, row_len))
            rows_of(r0, r1, f32)
            cast_into(f32, _typed(out, ddt, (r1 - r0, row_len)))
        add_stage("transform", time.perf_counter() - start)
        yield Pooled(buffers.pool, out, n * ddt.itemsize)


def _stream(ref: TensorRef, dtype: str, source: tuple[str, int, Any], buffers: Buffers,
            chunk: int) -> Iterator[Pooled]:
    """Stream a tensor from its bytes in a file through the buffers: cast, and re-laid-out by `source`'s Layout
    (None: unchanged), in bands of at most `chunk` bytes. A permutation that keeps the leading axis (per-head
    kernels) goes band by band over that axis; a 2-D transpose is one kernel call when it fits in a chunk, and
    otherwise goes by bands of output rows, each gathered from the source's rows a band at a time."""
    path, offset, layout = source
    if layout is not None and "cv2" not in sys.modules:
        start = time.perf_counter()
        import cv2  # noqa: F401 - the layout kernels' library (arrays.py), imported once

        add_stage("import", time.perf_counter() - start)
    cast = ref.dtype != dtype
    if cast:  # numpy's (ml_dtypes') float types: the cast is numpy's
        sdt, ddt = numpy_dtype(ref.dtype), numpy_dtype(dtype)
    else:  # bytes moved as unsigned integers of their width: no float type (and no ml_dtypes import) needed
        sdt = ddt = bits_dtype(DTYPE_BYTES[dtype])
    width = max(sdt.itemsize, ddt.itemsize)
    view = tuple(layout.view) if layout is not None else (ref.numel,)
    perm = tuple(layout.perm) if layout is not None else (0,)
    pool, scratch = buffers.pool, buffers.scratch
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    try:
        if perm[0] == 0:  # identity or per-head: bands of the leading axis, contiguous in and out
            inner = int(np.prod(view[1:], dtype=np.int64))
            rows = page_rows(max(1, chunk // max(1, inner * width)), inner * ddt.itemsize)
            for r0 in range(0, view[0], rows):
                band = (min(rows, view[0] - r0), *view[1:])
                src = _typed(_source_bytes(fd, path, offset + r0 * inner * sdt.itemsize,
                                           band[0] * inner * sdt.itemsize, scratch), sdt, band)
                out = buffers.out(src.size * ddt.itemsize)
                start = time.perf_counter()
                if perm == tuple(range(len(perm))):
                    cast_into(src, _typed(out, ddt, band))
                else:
                    if cast:
                        src = cast_into(src, _typed(scratch.get("cast", src.size * ddt.itemsize), ddt, band))
                    permute(src, perm, _typed(out, ddt, tuple(band[p] for p in perm)))
                add_stage("transform", time.perf_counter() - start)
                yield Pooled(pool, out, src.size * ddt.itemsize)
            return
        if len(view) != 2 or perm != (1, 0):  # pragma: no cover - every Layout we build is one of the two
            raise ValueError(f"cannot stream permutation {perm} of {view}")
        rows, cols = view
        if rows * cols * width <= chunk:  # the whole matrix in one kernel call
            src = _typed(_source_bytes(fd, path, offset, rows * cols * sdt.itemsize, scratch), sdt, view)
            out = buffers.out(src.size * ddt.itemsize)
            start = time.perf_counter()
            if cast:
                src = cast_into(src, _typed(scratch.get("cast", src.size * ddt.itemsize), ddt, view))
            transpose2d(src, _typed(out, ddt, (cols, rows)))
            add_stage("transform", time.perf_counter() - start)
            yield Pooled(pool, out, src.size * ddt.itemsize)
            return
        # Bands of output rows: the band's source columns are gathered (and cast) from the source read a block of
        # rows at a time, then transposed into the pool buffer in one kernel call. The source is read once per
        # band (from the page cache); memory is the band, a block of a quarter chunk, and the pool.
        out_rows = page_rows(max(1, chunk // (rows * width)), rows * ddt.itemsize)
        in_rows = max(1, (chunk // 4) // (cols * sdt.itemsize))
        for c0 in range(0, cols, out_rows):
            c1 = min(cols, c0 + out_rows)
            gathered = _typed(scratch.get("band", rows * (c1 - c0) * ddt.itemsize), ddt, (rows, c1 - c0))
            for r0 in range(0, rows, in_rows):
                r1 = min(rows, r0 + in_rows)
                src = _typed(_source_bytes(fd, path, offset + r0 * cols * sdt.itemsize,
                                           (r1 - r0) * cols * sdt.itemsize, scratch), sdt, (r1 - r0, cols))
                start = time.perf_counter()
                cast_into(src[:, c0:c1], gathered[r0:r1])
                add_stage("transform", time.perf_counter() - start)
            out = buffers.out(gathered.nbytes)
            start = time.perf_counter()
            transpose2d(gathered, _typed(out, ddt, (c1 - c0, rows)))
            add_stage("transform", time.perf_counter() - start)
            yield Pooled(pool, out, gathered.nbytes)
    finally:
        os.close(fd)


def write_pieces(f: Any, pieces: Iterable[Piece], progress: Progress | None = None) -> int:
    """Write pieces at the current position of `f` (an output.OutputFile, or a file opened for binary writing);
    returns the bytes written. A `Pooled` buffer goes back to its pool once written; a `Span` is written from
    read-only memory maps of the source's pages (which an O_DIRECT write reads in place)."""
    from .output import OutputFile

    total = 0
    timed = not isinstance(f, OutputFile)  # an OutputFile times its own writing and hashing
    for piece in pieces:
        start = time.perf_counter()
        if isinstance(piece, Span):
            n = _map_span(f, piece, progress)
        elif isinstance(piece, Pooled):
            try:
                f.write(piece.view)
                n = piece.nbytes
            finally:
                piece.release()
            if progress is not None:
                progress(n)
        else:
            f.write(piece)
            n = len(piece) if isinstance(piece, bytes) else piece.nbytes
            if progress is not None:
                progress(n)
        if timed:
            add_stage("write", time.perf_counter() - start)
        total += n
    return total


MAP_WINDOW = 64 * 1024 * 1024


def _map_span(f: Any, span: Span, progress: Progress | None) -> int:
    """Write a Span's bytes from shared read-only maps of its file, MAP_WINDOW bytes at a time (populated at once,
    unmapped once written)."""
    import mmap

    gran = mmap.ALLOCATIONGRANULARITY
    try:
        fd = os.open(span.path, os.O_RDONLY)
    except OSError as e:
        raise InputError(span.path, f"cannot read: {e.strerror or e}") from None
    try:
        size = os.fstat(fd).st_size
        if span.offset + span.nbytes > size:
            raise InputError(span.path, f"file ends {span.offset + span.nbytes - max(size, span.offset)} bytes "
                                        f"before the end of a tensor")
        pos, end = span.offset, span.offset + span.nbytes
        while pos < end:
            base = pos - pos % gran
            length = min(end, pos + MAP_WINDOW) - base
            m = mmap.mmap(fd, length, prot=mmap.PROT_READ,
                          flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), offset=base)
            view = memoryview(m)
            part = view[pos - base:]
            try:
                f.write(part)
            finally:
                try:
                    part.release()
                    view.release()
                    m.close()
                except BufferError:  # a failed write's traceback still holds a view: the map goes with it
                    pass
            if progress is not None:
                progress(base + length - pos)
            pos = base + length
    finally:
        os.close(fd)
    return span.nbytes


def prefetched(jobs: Iterable[tuple[str, TensorRef, str, Any]], depth: int = 2,
               chunk: int | None = None, pool: int = 2) -> Iterator[tuple[str, Iterable[Piece]]]:
    """(name, pieces) for each (name, ref, dtype, layout) job, in order, the pieces made by a background thread
    while the caller writes the previous ones: reading, casting and re-laying-out overlap writing.

    The bytes travel through one Buffers (`pool` buffers of `chunk` bytes shared with the writer, and the
    thread's scratch, which it reads the next tensor into while the writer writes): memory is bounded by a few
    chunks, not by the largest tensor. The caller must consume each tensor's pieces before asking for the next."""
    import queue
    import threading

    stop = threading.Event()
    buffers = Buffers(chunk or CHUNK_BYTES, pool, stop)
    q: queue.Queue = queue.Queue(maxsize=depth)
    end, done = object(), object()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def produce() -> None:
        try:
            for name, ref, dtype, layout in jobs:
                if stop.is_set():
                    return
                for piece in tensor_pieces(ref, dtype, layout, buffers):
                    put((name, piece))
                put((name, end))
            put(done)
        except _Stopped:
            return
        except BaseException as e:  # noqa: B036 - handed to the consumer, which re-raises it
            try:
                put(e)
            except _Stopped:
                return

    def get() -> Any:
        item = q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def pieces(first: Any) -> Iterator[Piece]:
        item = first
        while True:
            if item[1] is end:
                return
            yield item[1]
            item = get()

    thread = threading.Thread(target=produce, name="gemma-inspect-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = get()
            if item is done:
                return
            yield item[0], pieces(item)
    finally:
        stop.set()
        while thread.is_alive():
            try:
                item = q.get_nowait()
                if isinstance(item, tuple) and isinstance(item[1], Pooled):
                    item[1].release()
            except queue.Empty:
                thread.join(0.05)


def target_nbytes(ref: TensorRef, dtype: str) -> int:
    """The bytes of `ref` written in `dtype` (a dtype name)."""
    return ref.numel * DTYPE_BYTES[dtype]


def iter_bytes(path: str, start: int, nbytes: int, chunk: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The raw bytes [start, start + nbytes) in pieces of at most `chunk` bytes."""
    with open(path, "rb") as f:
        f.seek(start)
        left = nbytes
        while left:
            piece = f.read(min(chunk, left))
            if not piece:
                raise InputError(path, f"file ends {left} bytes before the expected end of a tensor")
            left -= len(piece)
            yield piece
