"""Streaming conversion between formats: read one tensor, transform, write, drop.

Each format module writes from the canonical Checkpoint with `write(ckpt, dest, options, progress)`;
this module owns what they share: dtype casting, shard planning, and the atomic output (everything is
written into a temporary sibling of DEST and renamed at the very end, so a failure or a kill never leaves
a DEST that looks complete).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np

from .checkpoint import FLOAT_DTYPES, Checkpoint, TensorRef
from .errors import InputError, OutputError, UnsupportedError
from .formats import FORMATS as TARGETS  # every format is written as well as read
from .manifest import DEFAULT_HASH, HASH_NAMES, SIBLING_SUFFIX, Follower, manifest_path

DTYPES = ("keep", "float32", "bfloat16", "float16", "q8_0")
FLOAT_ONLY = {"hf": "HF", "keras": "Keras", "gemma-pytorch": "gemma_pytorch"}  # formats that store no quantization
# The bands tensors are streamed in, and the size of each reused buffer: one FFN kernel of Gemma 2B in bfloat16 is
# transposed in one kernel call. Measured on the 2-core test VM against 32 MB buffers (bands, the source read
# once per band): 4.0 s re-laying-out against 4.6-5.9 s; peak RSS 0.41 GB against 0.37 (torch's 0.28 included).
CHUNK_BYTES = 64 * 1024 * 1024

Progress = Callable[[int], None]  # called with the number of bytes just written

# Seconds spent in each stage of the conversion in progress, summed over the threads that do it (read and
# transform: the producer thread; write: the writer, kernel copies included; hash: the manifest's; import: torch,
# imported by the producer on the first re-layout). The stages overlap in time, so they do not add up to the wall
# time; convert() reports them so a slow machine explains itself (benchmarks/convert.py prints them).
STAGES = ("read", "transform", "write", "hash", "import")
_stage_times: dict[str, float] = dict.fromkeys(STAGES, 0.0)


def add_stage(stage: str, seconds: float) -> None:
    _stage_times[stage] = _stage_times.get(stage, 0.0) + seconds


@dataclass
class WriteOptions:
    dtype: str = "keep"  # keep = bit-exact; otherwise every floating tensor is cast explicitly
    max_shard_size: int | None = None  # bytes; None = the target format's default
    force: bool = False  # convert even what the target can only approximate (with a warning note)
    notes: list[str] = field(default_factory=list)  # writers append what the user should know
    manifest: bool = True  # write the output's manifest (file sizes and hashes, tensors); see manifest.py
    hash: str = DEFAULT_HASH  # the manifest's hash: blake3 (fast everywhere) or sha256 (what the HF hub publishes)
    # Set by convert() while a manifest is being built: a writer that fills a file out of order (HDF5: metadata
    # first, then the datasets at their offsets) calls final(path, n) once bytes [0, n) of it will not change,
    # so that the file is hashed while it is written rather than read again afterwards.
    final: Callable[[str, int], None] | None = None

    def target_dtype(self, ref: TensorRef) -> str:
        return ref.dtype if self.dtype == "keep" else self.dtype

    def float_dtype(self, ref: TensorRef) -> str:
        """The dtype a format that stores floats only (FLOAT_ONLY) writes `ref` in: the cast asked for, or its own
        float dtype; a quantized tensor's dequantized values are stored exactly in float32 unless cast."""
        want = self.target_dtype(ref)
        return want if want in FLOAT_DTYPES else "float32"


def parse_size(text: str | int | None) -> int | None:
    """'5GB' -> 5_000_000_000, '500MB', '2GiB', '100KB', plain integers are bytes."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise InputError(None, f"invalid size {text!r}; use e.g. 5GB, 500MB, 2GiB")
    value, unit = float(m.group(1)), (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
            "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    n = int(value * mult)
    if n <= 0:
        raise InputError(None, f"size {text!r} must be positive")
    return n


def cast_array(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Cast a float array to `dtype` (float32/bfloat16/float16) with round-to-nearest-even."""
    from .formats.safetensors_io import numpy_dtype

    target = numpy_dtype(dtype)
    if arr.dtype == target:
        return arr
    with np.errstate(all="ignore"):  # NaN/inf (and overflow to inf) are cast as they are, without warnings
        if arr.dtype != np.float32 and target != np.float32:
            arr = arr.astype(np.float32)  # bf16 <-> f16 goes through f32, exactly
        return arr.astype(target)


@dataclass(frozen=True)
class Span:
    """Raw bytes [offset, offset + nbytes) of a file, to be copied as they are by the kernel."""

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


def aligned_empty(nbytes: int, align: int = 4096) -> np.ndarray:
    """An uninitialised uint8 buffer whose data starts on a page boundary (numpy aligns to 16 bytes only; the
    copy kernels are measurably faster on aligned rows)."""
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + nbytes]


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


def _typed(buf: np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return buf[:n].view(dtype).reshape(shape)


def _streamable(ref: TensorRef, dtype: str, layout: Any) -> tuple[str, int, Any] | None:
    """(file, offset, re-layout) when `ref`'s bytes can be streamed from a file band by band into `dtype` and
    `layout` (a Layout from the canonical one, or None); None when the tensor has to be loaded whole."""
    from .arrays import Layout

    if ref.dtype not in FLOAT_DTYPES or not (dtype == ref.dtype or dtype in FLOAT_DTYPES):
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

    Unchanged bytes that lie in a file are a `Span` for the kernel to copy. Otherwise, when the stored bytes lie
    in a file, the tensor is streamed band by band through reused buffers (read into scratch, cast, re-laid-out
    into a pool buffer that the writer writes and hands back), and never held whole: the embedding of a 2B model
    is 1 GB in bfloat16. Tensors without such bytes (compressed HDF5, pickles, quantized GGUF) are loaded whole."""
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
    if layout is None and ref.chunks is not None and ref.dtype in FLOAT_DTYPES and dtype in FLOAT_DTYPES:
        from .formats.safetensors_io import numpy_dtype

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


def _stream(ref: TensorRef, dtype: str, source: tuple[str, int, Any], buffers: Buffers,
            chunk: int) -> Iterator[Pooled]:
    """Stream a tensor from its bytes in a file through the buffers: cast, and re-laid-out by `source`'s Layout
    (None: unchanged), in bands of at most `chunk` bytes. A permutation that keeps the leading axis (per-head
    kernels) goes band by band over that axis; a 2-D transpose is one kernel call when it fits in a chunk, and
    otherwise goes by bands of output rows, each gathered from the source's rows a band at a time."""
    from .arrays import cast_into, permute, transpose2d
    from .formats.safetensors_io import numpy_dtype

    path, offset, layout = source
    if layout is not None and "torch" not in sys.modules:
        start = time.perf_counter()
        import torch  # noqa: F401 - the layout kernels' library, imported once

        add_stage("import", time.perf_counter() - start)
    sdt, ddt = numpy_dtype(ref.dtype), numpy_dtype(dtype)
    width = max(sdt.itemsize, ddt.itemsize)
    cast = sdt != ddt
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
            rows = max(1, chunk // max(1, inner * width))
            for r0 in range(0, view[0], rows):
                band = (min(rows, view[0] - r0), *view[1:])
                src = _typed(scratch.get("read", band[0] * inner * sdt.itemsize), sdt, band)
                _read_into(fd, path, offset + r0 * inner * sdt.itemsize, src.reshape(-1).view(np.uint8))
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
            src = _typed(scratch.get("read", rows * cols * sdt.itemsize), sdt, view)
            _read_into(fd, path, offset, src.reshape(-1).view(np.uint8))
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
        out_rows = max(1, chunk // (rows * width))
        in_rows = max(1, (chunk // 4) // (cols * sdt.itemsize))
        for c0 in range(0, cols, out_rows):
            c1 = min(cols, c0 + out_rows)
            gathered = _typed(scratch.get("band", rows * (c1 - c0) * ddt.itemsize), ddt, (rows, c1 - c0))
            for r0 in range(0, rows, in_rows):
                r1 = min(rows, r0 + in_rows)
                src = _typed(scratch.get("read", (r1 - r0) * cols * sdt.itemsize), sdt, (r1 - r0, cols))
                _read_into(fd, path, offset + r0 * cols * sdt.itemsize, src.reshape(-1).view(np.uint8))
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


# copy_file_range is refused across filesystems (EXDEV) on older kernels, and by some filesystems.
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.ETXTBSY}
SPAN_STEP = 256 * 1024 * 1024


def write_pieces(f: BinaryIO, pieces: Iterable[Piece], progress: Progress | None = None) -> int:
    """Write pieces at the current position of `f` (opened for binary writing); returns the bytes written.
    A `Span` is copied file to file by the kernel (os.copy_file_range): on the ext4 test machine 2.37 GB
    in 1.1 s, against 2-6 s through read() and write(). A `Pooled` buffer goes back to its pool once written."""
    total = 0
    for piece in pieces:
        start = time.perf_counter()
        if isinstance(piece, Span):
            n = _copy_span(f, piece, progress)
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
        add_stage("write", time.perf_counter() - start)
        total += n
    return total


def _copy_span(f: BinaryIO, span: Span, progress: Progress | None) -> int:
    f.flush()
    start = f.tell()
    done = 0
    with open(span.path, "rb") as src:
        kernel = hasattr(os, "copy_file_range")
        while done < span.nbytes:
            want = min(SPAN_STEP, span.nbytes - done)
            if kernel:
                try:
                    n = os.copy_file_range(src.fileno(), f.fileno(), want, span.offset + done, start + done)
                except OSError as e:
                    if e.errno not in _NO_KERNEL_COPY:
                        raise
                    kernel = False
                    continue
            else:
                src.seek(span.offset + done)
                data = src.read(min(want, CHUNK_BYTES))
                f.seek(start + done)
                f.write(data)
                n = len(data)
            if n == 0:
                raise InputError(span.path, f"file ends {span.nbytes - done} bytes before the end of a tensor")
            done += n
            if progress is not None:
                progress(n)
    f.seek(start + span.nbytes)
    return span.nbytes


def prefetched(jobs: Iterable[tuple[str, TensorRef, str, Any]], depth: int = 2,
               chunk: int | None = None, pool: int = 1) -> Iterator[tuple[str, Iterable[Piece]]]:
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


def plan_shards(sizes: Iterable[tuple[str, int]], max_shard: int | None) -> list[list[str]]:
    """Greedy, in order: start a new shard when the next tensor would overflow the current one."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, n in sizes:
        if max_shard and shards[-1] and used + n > max_shard:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += n
    return shards


def target_nbytes(ref: TensorRef, dtype: str) -> int:
    from .formats.safetensors_io import ITEMSIZE

    return ref.numel * ITEMSIZE[dtype]


# ----------------------------------------------------------------------------- atomic output
# A temporary sibling's name says who writes it - `.DEST.partial-<host tag>-<pid>-<random>`, given atomically by
# mkdtemp - so that a later convert to the same DEST can tell the leftovers of a killed run (SIGKILL, a power
# cut: no `finally` runs) from the work of a conversion still running.
def host_tag() -> str:
    import hashlib

    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _partial_name(base: str) -> str:
    """DEST's name as it appears in its temporary siblings' names: shortened (a prefix and a hash of the whole
    name) when it is long, so that `.NAME.partial-<host>-<pid>-<random>` stays within the 255-byte limit."""
    if len(base.encode("utf-8", "surrogateescape")) <= 120:
        return base
    import hashlib

    short = base
    while len(short.encode("utf-8", "surrogateescape")) > 80:
        short = short[:-1]
    return f"{short}~{hashlib.sha1(base.encode('utf-8', 'surrogateescape')).hexdigest()[:12]}"


def check_name_length(dest: str, manifest: bool) -> None:
    """DEST's own name, and `DEST.manifest.json` beside it, must fit the file system's name limit: found out only at
    the final rename, a name that is too long would fail a finished conversion (or leave DEST without its manifest)."""
    parent = os.path.dirname(os.path.abspath(dest)) or "."
    base = os.path.basename(os.path.abspath(dest))
    try:
        limit = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    size = len(base.encode("utf-8", "surrogateescape"))
    if size > limit:
        raise OutputError(f"{dest}: the name is {size} bytes, over the file system's limit of {limit}")
    if manifest and size + len(SIBLING_SUFFIX) > limit:
        raise OutputError(f"{dest}: the name is {size} bytes: with {SIBLING_SUFFIX} added (the manifest beside a "
                          f"single-file output) it is over the file system's limit of {limit}; choose a shorter "
                          f"name or pass --no-manifest")


def _temporary_sibling(dest: str) -> str:
    parent = os.path.dirname(os.path.abspath(dest)) or "."
    if not os.path.isdir(parent):
        raise OutputError(f"{dest}: parent directory {parent} does not exist")
    remove_stale_partials(dest)
    name = _partial_name(os.path.basename(os.path.abspath(dest)))
    try:
        return tempfile.mkdtemp(prefix=f".{name}.partial-{host_tag()}-{os.getpid()}-", dir=parent)
    except OSError as e:
        raise OutputError(f"{dest}: cannot create a temporary directory beside it in {parent} "
                          f"({e.strerror or e})") from None


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _inside(path: str, directory: str) -> bool:
    """Whether `path` is `directory` or below it (both real, absolute paths)."""
    try:
        return os.path.commonpath([path, directory]) == directory
    except ValueError:  # different drives
        return False


def check_output(dest: str, ckpts: Iterable[Checkpoint], what: str = "DEST") -> None:
    """Refuse an output path whose writing would destroy or change an input: `dest` (as written, or where its
    symlinks lead) is an input or one of its files, holds one (replacing DEST removes it), or lies inside an
    input directory. Real paths are compared, so a symlinked spelling of the source is the source."""
    for ckpt in ckpts:
        if not ckpt.is_card:
            _check_output(dest, ckpt, what)


def check_dest(dest: str, ckpt: Checkpoint) -> None:
    """`check_output` for convert's DEST, and the other paths convert removes: `DEST.manifest.json` and the
    leftovers of killed conversions to DEST."""
    _check_output(dest, ckpt, "DEST")
    parent = _real(os.path.dirname(os.path.abspath(dest)) or ".")
    base = os.path.basename(os.path.abspath(dest))
    sources = _sources(ckpt)
    removed = os.path.join(parent, base) + SIBLING_SUFFIX
    for src in sources:
        if _inside(src, removed):
            raise OutputError(f"{dest}: --force would remove {removed}, which is (or holds) the source")
    prefix = f".{_partial_name(base)}.partial-"
    for src in sources:
        if _inside(src, parent) and src != parent:
            top = os.path.relpath(src, parent).split(os.sep)[0]
            if top.startswith(prefix):
                raise OutputError(f"{dest}: the source {src} lies in {os.path.join(parent, top)}, a temporary "
                                  f"sibling of DEST that convert may remove")


def _sources(ckpt: Checkpoint) -> list[str]:
    """The real paths of a checkpoint's source and of each of its files."""
    return sorted({_real(ckpt.source), *(_real(p) for p in ckpt.files)})


def _check_output(dest: str, ckpt: Checkpoint, what: str) -> None:
    root = _real(ckpt.source)
    sources = _sources(ckpt)
    source_dirs = [p for p in sources if os.path.isdir(p)]
    parent = _real(os.path.dirname(os.path.abspath(dest)) or ".")
    base = os.path.basename(os.path.abspath(dest))
    lexical = os.path.join(parent, base)  # what --force removes and the rename replaces (a symlink itself)
    for where in dict.fromkeys((lexical, _real(dest))):
        link = " (through a symlink)" if where != lexical else ""
        for src in sources:
            if src == where:
                what_src = "the source" if src == root else f"{src}, a file of the source"
                raise OutputError(f"{dest}: {what} is {what_src}{link}; writing it would destroy the source")
            if _inside(src, where):
                raise OutputError(f"{dest}: {what} contains the source {src}{link}; replacing it would destroy "
                                  f"the source")
        for d in source_dirs:
            if _inside(where, d):
                raise OutputError(f"{dest}: {what} is inside the source directory {d}; choose a place outside it")


def remove_stale_partials(dest: str) -> list[str]:
    """Remove the `.DEST.partial-*` siblings left by conversions to `dest` that were killed: those made on this
    machine by a process that is gone. Returns what was removed. A sibling whose owner is alive, on another
    machine, or unknown (not named by this version) is left alone."""
    parent = os.path.dirname(os.path.abspath(dest)) or "."
    prefix = f".{_partial_name(os.path.basename(os.path.abspath(dest)))}.partial-{host_tag()}-"
    removed = []
    for entry in os.listdir(parent):
        path = os.path.join(parent, entry)
        if not entry.startswith(prefix) or os.path.islink(path) or not os.path.isdir(path):
            continue
        pid = entry[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) > 0 and not _alive(int(pid)):
            _remove(path)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _write_failure(e: OSError, dest: str) -> OutputError:
    """One line that says why writing failed. numpy's short writes carry no errno ("4096 requested and 1460
    written"): a full disk or the file size limit is the likely cause, and is said when it can be seen."""
    if e.errno:
        reason = os.strerror(e.errno)
    else:
        reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        parent = os.path.dirname(os.path.abspath(dest)) or "."
        try:
            full = shutil.disk_usage(parent).free < 1024 * 1024
        except OSError:
            full = False
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            limited = soft != resource.RLIM_INFINITY
        except ImportError:  # not on Windows
            soft, limited = None, False
        if full:
            reason = f"{os.strerror(errno.ENOSPC)}: {reason}"
        elif limited:
            reason = f"{os.strerror(errno.EFBIG)} (file size limit {soft} bytes): {reason}"
    return OutputError(f"{dest}: cannot write ({reason})")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


class _InterruptToException:
    """SIGTERM (like SIGINT) becomes KeyboardInterrupt while writing, so the temporary output is removed. `hit`
    records that a signal came: raised from inside a library call, the KeyboardInterrupt can surface as another
    exception (numpy's fromfile turned one into "TypeError: expected str, bytes or os.PathLike object")."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.hit = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_InterruptToException":
        try:
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not in the main thread
            pass
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        self.hit = True
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


_MALLOC_TUNED = False


def _reuse_freed_memory() -> None:
    """Ask glibc to serve the per-tensor buffers (tens of MB each) from one reusable heap.

    By default every allocation over 32 MB is a fresh mmap, returned to the kernel on free, so each
    tensor's buffers are page-faulted and zeroed again: a quarter of a conversion's time on a 2B model.
    One arena, no mmap below 1 GB and no trimming keep freed buffers for the next tensor; peak RSS
    stays bounded by the few tensors in flight. Elsewhere than glibc this is a no-op."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
        libc.mallopt(m_arena_max, 1)
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        pass


def convert(source: Checkpoint | str, dest: str, to: str, options: WriteOptions | None = None,
            progress: Progress | None = None) -> dict[str, Any]:
    """Convert `source` (a Checkpoint or a path) into `dest` in format `to`. Returns a report dict:
    {"source", "dest", "format", "dtype", "tensors", "bytes_written", "notes"}."""
    from .formats import load, module

    # The writers report into options.notes and convert() sets options.final: a run works on its own copy, so a
    # WriteOptions reused for several conversions never carries one run's notes into the next report.
    options = dataclasses.replace(options or WriteOptions(), notes=[], final=None)
    if to not in TARGETS:
        raise InputError(None, f"unknown target format {to!r}; choose from {', '.join(TARGETS)}")
    if options.dtype not in DTYPES:
        raise InputError(None, f"unknown dtype {options.dtype!r}; choose from {', '.join(DTYPES)}")
    if options.hash not in HASH_NAMES:
        raise InputError(None, f"unknown hash {options.hash!r}; choose from {', '.join(HASH_NAMES)}")
    ckpt = load(source) if isinstance(source, str) else source
    if ckpt.is_card:
        raise InputError(ckpt.source, "a built-in card has no tensors to convert")
    check_dest(dest, ckpt)  # first: --force would not make such a DEST acceptable
    if os.path.lexists(dest) and not options.force:
        raise OutputError(f"{dest}: already exists (use --force to replace it)")
    check_name_length(dest, options.manifest)
    if to in FLOAT_ONLY:
        if options.dtype == "q8_0":
            raise UnsupportedError(f"--dtype q8_0 is a GGUF quantization; choose one of "
                                   f"{', '.join(d for d in DTYPES if d != 'q8_0')} for {FLOAT_ONLY[to]}")
        if options.dtype == "keep" and ckpt.is_quantized:
            options.notes.append("quantized tensors were dequantized and are stored as float32")
    writer = module(to)
    written = [0]

    def counted(n: int) -> None:
        written[0] += n
        if progress is not None:
            progress(n)

    _reuse_freed_memory()
    _stage_times.update(dict.fromkeys(STAGES, 0.0))
    tmp = _temporary_sibling(dest)
    target = os.path.join(tmp, os.path.basename(dest))
    manifest_file = None
    interrupt = _InterruptToException()
    try:
        with interrupt:
            follower = Follower(target, options.hash) if options.manifest else None
            options.final = follower.final if follower is not None else None
            try:
                writer.write(ckpt, target, options, counted)
            except BaseException:
                if follower is not None:
                    follower.finish(ok=False)
                raise
            if follower is not None:
                manifest_file = _write_manifest(target, to, ckpt.source, follower.finish(), options.hash)
            sibling = dest + SIBLING_SUFFIX
            if os.path.lexists(sibling) and options.force:  # the manifest of the output being replaced
                _remove(sibling)
            if os.path.lexists(dest):  # --force: replace only once the new output is complete
                _remove(dest)
            os.replace(target, dest)
            if manifest_file is not None and not os.path.isdir(dest):
                os.replace(manifest_file, sibling)  # a single-file output keeps its manifest beside it
    except BaseException as e:
        if interrupt.hit and not isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt from None  # the signal, whatever shape it surfaced in
        if isinstance(e, OSError):
            raise _write_failure(e, dest) from None
        if isinstance(e, OutputError):  # a writer's message names the file inside the temporary sibling
            raise OutputError(str(e).replace(target, dest)) from None
        raise
    finally:
        _remove(tmp)
    notes = list(options.notes)
    vision = [n for n in ckpt.ignored if "vision" in n or "multi_modal_projector" in n]
    if vision:
        notes.insert(0, f"multimodal source: only the text decoder was converted ({len(vision)} vision tower "
                        f"and projector tensors left out)")
    manifest = None
    if manifest_file is not None:
        manifest = manifest_path(dest)
        notes.append(f"manifest: {manifest} (every file's size and {HASH_NAMES[options.hash]}, every tensor); "
                     f"check the output against it with `gemma-inspect diff {dest} --manifest`")
    return {"source": ckpt.source, "dest": dest, "format": to, "dtype": options.dtype,
            "tensors": len(ckpt.tensors), "bytes_written": written[0], "notes": notes,
            "source_format": ckpt.format, "source_notes": list(ckpt.notes), "manifest": manifest,
            "stages": {k: round(_stage_times.get(k, 0.0), 3) for k in STAGES}}


def _write_manifest(target: str, to: str, source: str, streamed: dict[str, tuple[int, str]],
                    algorithm: str) -> str:
    """Write the manifest of the finished output `target` (inside a directory output, or beside a single
    file, both still in the temporary sibling); returns its path."""
    from .manifest import build

    path = manifest_path(target)
    obj = build(target, to, source, streamed, algorithm)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    return path
