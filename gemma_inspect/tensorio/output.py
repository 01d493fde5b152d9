"""Output files written from our own buffers: past the page cache where the filesystem allows it (O_DIRECT), and
hashed in file order from the same buffers while they are written.

Why. A buffered write() copies every byte into a fresh page-cache page. In a VM whose free memory goes back to the
host (free page reporting: the test VMs, and many cloud machines), the first touch of such a page is a fault on the
host: write() of 2.35 GB from a reused buffer took 0.66-0.70 s of CPU when the kernel reused pages freed a moment
before, and 6.8 s when it did not, while O_DIRECT writes took 0.05-0.11 s of CPU and 0.7-1.1 s of wall time for the
same bytes (the disk's speed; the README's Performance section has the measurements).
Bytes written past the page cache are not in memory to be hashed afterwards, so the hash is fed from the buffers,
in a helper thread while the device writes them.

How. Whole pages at page-aligned file offsets go to the device straight from the caller's buffer when it is
page-aligned too (the pipeline's pool buffers are), or through one reused, page-aligned staging buffer (a copy)
when it is not. The partial pages at either end of a run of bytes go through the page cache (a normal write), so
each page of the file is written one way or the other, never both. Where O_DIRECT is refused (not Linux, tmpfs on
old kernels, some network filesystems) every byte is written normally and is still hashed from the buffers.

`output_session()` (one per conversion) sets the policy (`io`: auto, direct, buffered), the hash and the staging
buffer; writers open their files with `open_output()`. Outside a session a file is written normally, unhashed."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import time
from typing import Any, Iterator

import numpy as np

from ..arrays import aligned_empty
from .hashing import new_hash
from .options import IO_MODES
from .stages import add_stage

PAGE = 4096
STAGE_BYTES = 8 * 1024 * 1024  # the staging buffer: a copy of unaligned bytes, written to the device when full
DIRECT_MIN = 16 * 1024 * 1024  # io=auto: files planned smaller than this are written through the page cache
HASH_INLINE = 1024 * 1024  # pieces smaller than this are hashed in the calling thread


class OutputSession:
    """What the files of one conversion are written with: the io policy, the hash (None: not hashed), the staging
    buffer and the hashing thread they share, and what each file's writing came to."""

    def __init__(self, io: str = "auto", algorithm: str | None = None):
        if io not in IO_MODES:
            raise ValueError(f"unknown io mode {io!r}; choose from {', '.join(IO_MODES)}")
        if algorithm is not None:
            new_hash(algorithm)  # an unknown name fails here, before anything is written
        self.io, self.algorithm = io, algorithm
        self.digests: dict[str, tuple[int, str]] = {}  # absolute path -> (size, hex digest), hashed while written
        self.claimed: set[str] = set()  # absolute paths of the files written through open_output
        self.bytes = {"direct": 0, "staged": 0, "buffered": 0}  # how the bytes went: see summary()
        self.fallback: str | None = None  # why O_DIRECT was given up, when it was
        self._stage: np.ndarray | None = None
        self._pool: Any = None

    def stage(self) -> np.ndarray:
        if self._stage is None:
            self._stage = aligned_empty(STAGE_BYTES, PAGE)
        return self._stage

    def hasher(self) -> Any:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gemma-inspect-hash")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._stage = None

    def summary(self) -> dict[str, Any]:
        """The io report of a conversion: mode asked for, bytes written to the device straight from the buffers
        (direct), through the staging copy (staged) and through the page cache (buffered), and why direct writing
        was given up, if it was."""
        return {"mode": self.io, **{f"{k}_bytes": v for k, v in self.bytes.items()}, "fallback": self.fallback}


# The session of the conversion running in this thread (a context variable: two conversions in two threads keep
# theirs apart; writers open their files in the thread that called convert).
_session: contextvars.ContextVar[OutputSession | None] = contextvars.ContextVar("gemma_inspect_output", default=None)


@contextlib.contextmanager
def output_session(io: str = "auto", algorithm: str | None = None) -> Iterator[OutputSession]:
    """The session the files opened with open_output() meanwhile (in this thread) belong to."""
    session = OutputSession(io, algorithm)
    token = _session.set(session)
    try:
        yield session
    finally:
        session.close()
        _session.reset(token)


def open_output(path: str, mode: str = "wb", size_hint: int | None = None) -> OutputFile:
    """Open `path` for writing: "wb" creates (or truncates) it, "r+b" writes into an existing file. `size_hint`:
    the bytes the writer will write (io=auto writes files below DIRECT_MIN through the page cache)."""
    return OutputFile(path, mode, _session.get(), size_hint)


def _pwrite_at(fd: int, data: Any, pos: int) -> int:
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, pos)
    os.lseek(fd, pos, os.SEEK_SET)  # pragma: no cover - Windows: each descriptor is used by one thread
    return os.write(fd, data)  # pragma: no cover


def _pread_at(fd: int, n: int, pos: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, n, pos)
    os.lseek(fd, pos, os.SEEK_SET)  # pragma: no cover
    return os.read(fd, n)  # pragma: no cover


def _address(view: memoryview) -> int:
    return np.frombuffer(view, dtype=np.uint8).ctypes.data if view.nbytes else 0


class OutputFile:
    """A file written with pwrite at a position of its own (write, seek, tell, close), direct where it can be, and
    hashed in file order while written; see the module's docstring. Bytes between and after the writer's writes
    (an HDF5 file's metadata, written before by h5py) are read from the file into the hash; a write before the
    end of what is hashed (out of order) gives the hash up, and the manifest hashes the finished file instead."""

    def __init__(self, path: str, mode: str, session: OutputSession | None, size_hint: int | None):
        if mode not in ("wb", "r+b"):
            raise ValueError(f"unsupported mode {mode!r}")
        self.path = path
        self._session = session
        key = os.path.abspath(path)
        if session is not None:
            session.claimed.add(key)  # before the file exists: the Follower (hashing.py) must leave it alone
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if mode == "wb" else 0) | getattr(os, "O_BINARY", 0)
        self._fd = os.open(path, flags, 0o666)
        self._direct_fd: int | None = None
        io = session.io if session is not None else "buffered"
        if io == "direct" or (io == "auto" and (size_hint is None or size_hint >= DIRECT_MIN)):
            self._direct_fd = self._open_direct(path)
        self._pos = 0
        self._stage_at: int | None = None  # the staging buffer holds the file's bytes [_stage_at, _pos)
        self._h = new_hash(session.algorithm) if session is not None and session.algorithm else None
        self._hashed = 0  # the hash covers the file's bytes [0, _hashed)
        self.closed = False

    def _open_direct(self, path: str) -> int | None:
        flag = getattr(os, "O_DIRECT", 0)
        if not flag:
            self._give_up_direct("this system has no O_DIRECT")
            return None
        try:
            return os.open(path, os.O_WRONLY | flag)
        except OSError as e:
            self._give_up_direct(f"the filesystem refuses O_DIRECT ({e.strerror or e})")
            return None

    def _give_up_direct(self, why: str) -> None:
        if self._session is not None and self._session.fallback is None:
            self._session.fallback = why
        if getattr(self, "_direct_fd", None) is not None:
            os.close(self._direct_fd)  # type: ignore[arg-type]
        self._direct_fd = None

    # ------------------------------------------------------------------ file interface
    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise ValueError("OutputFile.seek takes absolute positions only")
        if pos != self._pos:
            self._flush_stage()
            self._pos = pos
        return pos

    def flush(self) -> None:
        """Bytes are written by the time write() returns, except a staged partial page: kept until the writer
        moves elsewhere or closes (flushing it here would only split the page between two ways of writing)."""

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if view.ndim != 1 or view.format not in ("B", "b", "c"):
            view = view.cast("B")
        n = view.nbytes
        if n == 0:
            return 0
        pending = self._hash(view)
        try:
            self._put(view)
        finally:
            if pending is not None:
                start = time.perf_counter()
                pending.result()  # the hash has read the bytes before the caller may reuse the buffer
                add_stage("hash", time.perf_counter() - start)
        return n

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._flush_stage()
            if self._h is not None and self._session is not None:
                size = os.fstat(self._fd).st_size
                if self._hashed <= size:
                    self._hash_gap(size)
                    self._session.digests[os.path.abspath(self.path)] = (size, self._h.hexdigest())
        finally:
            if self._direct_fd is not None:
                os.close(self._direct_fd)
                self._direct_fd = None
            os.close(self._fd)

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:  # the output is abandoned (convert removes it): release the descriptors, hash nothing
            self._h = None
            with contextlib.suppress(OSError):
                self.close()

    # ------------------------------------------------------------------ hashing
    def _hash(self, view: memoryview) -> Any:
        """Feed `view`, about to be written at the current position, to the hash; a Future when it runs in the
        session's hashing thread (big pieces, overlapping the write), else None."""
        if self._h is None:
            return None
        if self._pos < self._hashed:
            self._h = None  # written out of order: the manifest hashes the finished file
            return None
        self._hash_gap(self._pos)
        self._hashed = self._pos + view.nbytes
        if view.nbytes < HASH_INLINE or self._session is None:
            start = time.perf_counter()
            self._h.update(view)
            add_stage("hash", time.perf_counter() - start)
            return None
        return self._session.hasher().submit(self._h.update, view)

    def _hash_gap(self, upto: int) -> None:
        """Hash the file's bytes [_hashed, upto), which the writer did not write through this object (a header
        written by another library): read from the file (zeros past its end, as a later write there would leave)."""
        if self._h is None or upto <= self._hashed:
            return
        start = time.perf_counter()
        self._flush_stage()  # its bytes are before the gap; any page it shares with the gap must be read whole
        pos = self._hashed
        while pos < upto:
            data = _pread_at(self._fd, min(STAGE_BYTES, upto - pos), pos)
            if not data:
                data = bytes(min(STAGE_BYTES, upto - pos))
            self._h.update(data)
            pos += len(data)
        self._hashed = upto
        add_stage("hash", time.perf_counter() - start)

    # ------------------------------------------------------------------ writing
    def _put(self, view: memoryview) -> None:
        start = time.perf_counter()
        while view.nbytes:
            pos = self._pos
            if self._stage_at is not None:  # staging: the buffer holds [_stage_at, pos)
                same_phase = (_address(view) - pos) % PAGE == 0
                if same_phase and pos % PAGE == 0 and view.nbytes >= PAGE and self._direct_fd is not None:
                    self._flush_stage()  # the stage ends on a page and the rest can go straight from `view`
                    continue
                stage = self._stage_buffer()
                staged = pos - self._stage_at
                room = stage.nbytes - staged
                take = min(view.nbytes, room, (-pos) % PAGE if same_phase and pos % PAGE else room)
                stage[staged:staged + take] = np.frombuffer(view[:take], dtype=np.uint8)
                self._pos += take
                view = view[take:]
                if staged + take == stage.nbytes:
                    self._flush_stage()
                continue
            if self._direct_fd is None:
                self._pwrite(view, pos, "buffered")
                self._pos += view.nbytes
                break
            if pos % PAGE:  # the start of a page whose first bytes are not ours to write: through the page cache
                head = min(view.nbytes, PAGE - pos % PAGE)
                self._pwrite(view[:head], pos, "buffered")
                self._pos += head
                view = view[head:]
                continue
            if _address(view) % PAGE == 0 and view.nbytes >= PAGE:
                k = view.nbytes - view.nbytes % PAGE
                self._pwrite_direct(view[:k], pos, "direct")
                self._pos += k
                view = view[k:]
                continue
            self._stage_at = pos  # an unaligned buffer, or less than a page: copied into the staging buffer
        add_stage("write", time.perf_counter() - start)

    def _stage_buffer(self) -> np.ndarray:
        """The session's staging buffer (reused by all its files), or this file's own outside a session."""
        if self._session is not None:
            return self._session.stage()
        if getattr(self, "_stage", None) is None:
            self._stage = aligned_empty(STAGE_BYTES, PAGE)
        return self._stage

    def _flush_stage(self) -> None:
        """Write the staged bytes: whole pages to the device, a partial last page through the page cache."""
        if self._stage_at is None:
            return
        at, n = self._stage_at, self._pos - self._stage_at
        self._stage_at = None
        stage = self._stage_buffer()
        whole = n - n % PAGE
        if whole:
            self._pwrite_direct(memoryview(stage[:whole]), at, "staged")
        if n > whole:
            self._pwrite(memoryview(stage[whole:n]), at + whole, "buffered")

    def _pwrite_direct(self, view: memoryview, pos: int, kind: str) -> None:
        done = 0
        try:
            while done < view.nbytes and self._direct_fd is not None:
                n = _pwrite_at(self._direct_fd, view[done:], pos + done)
                if n <= 0:
                    raise OSError(errno.EIO, "the device accepted no bytes")
                done += n
                if done % PAGE and done < view.nbytes:  # a short write off a page: the rest through the page cache
                    break
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            self._give_up_direct(f"the filesystem refused a direct write ({e.strerror or e})")
        if self._session is not None:
            self._session.bytes[kind] += done
        if done < view.nbytes:
            self._pwrite(view[done:], pos + done, "buffered")

    def _pwrite(self, view: memoryview, pos: int, kind: str) -> None:
        done = 0
        while done < view.nbytes:
            n = _pwrite_at(self._fd, view[done:], pos + done)
            if n <= 0:
                raise OSError(errno.EIO, f"{self.path}: the filesystem accepted no bytes")
            done += n
        if self._session is not None:
            self._session.bytes[kind] += done
