"""Hashing a conversion's output files: BLAKE3 by default (several GB/s on one core, see manifest.py), SHA-256 to
compare with published hashes. Files our own writers write are hashed from their buffers while written
(tensorio.output); those another library writes front to back are followed while they are written (`Follower`);
the others are hashed afterwards, several files in parallel threads."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from ..errors import InputError
from .stages import add_stage

HASH_NAMES = {"blake3": "BLAKE3", "sha256": "SHA-256"}  # each hash, as notes name it
HASHES = tuple(HASH_NAMES)
DEFAULT_HASH = "blake3"
HASH_BLOCK = 8 * 1024 * 1024


def new_hash(algorithm: str) -> Any:
    """A hash object (update, hexdigest) of `algorithm`, one of HASHES."""
    if algorithm == "blake3":
        from blake3 import blake3

        return blake3()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise InputError(None, f"unknown hash {algorithm!r}; choose from {', '.join(HASHES)}")


def hash_range(fd: int, h: Any, start: int, end: int) -> None:
    """Feed bytes [start, end) of the open file `fd` to `h`, from read-only memory maps of the page cache (a
    window of HASH_BLOCK bytes at a time, unmapped after use): no copy into a buffer, which took a third of the
    hash's CPU time reading 2.37 GB back on the test VM, and at most one window mapped (resident) at a time."""
    import mmap

    gran = mmap.ALLOCATIONGRANULARITY
    pos = start
    while pos < end:
        base = pos - pos % gran
        length = min(end, base + HASH_BLOCK) - base
        try:
            m = mmap.mmap(fd, length, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED, offset=base)
        except (OSError, ValueError, TypeError):  # no mmap here (or no prot/flags): read instead
            while pos < end:
                data = os.pread(fd, min(HASH_BLOCK, end - pos), pos)
                if not data:
                    raise InputError(None, f"file descriptor {fd} ended at {pos} of {end} bytes while hashed")
                h.update(data)
                pos += len(data)
            return
        try:
            view = memoryview(m)
            try:
                h.update(view[pos - base:])
            finally:
                view.release()
        finally:
            m.close()
        pos = base + length


def hash_of(path: str, algorithm: str = DEFAULT_HASH) -> str:
    """The hex digest of a file, hashed from memory maps (both hashes release the GIL while they work: files
    hash in parallel threads)."""
    h = new_hash(algorithm)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        hash_range(f.fileno(), h, 0, os.fstat(f.fileno()).st_size)
    add_stage("hash", time.perf_counter() - start)
    return h.hexdigest()


def hash_files(paths: list[str], algorithm: str = DEFAULT_HASH) -> list[str]:
    """The hex digests of several files, hashed in parallel threads."""
    from concurrent.futures import ThreadPoolExecutor

    if len(paths) <= 1:
        return [hash_of(p, algorithm) for p in paths]
    with ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: hash_of(p, algorithm), paths))


# Files written front to back: hashed while they are written (Follower) when another library writes them. An HDF5
# file is not one of them (h5py rewrites its superblock and headers), nor are the small JSON files.
APPENDED = (".safetensors", ".gguf", ".ckpt")


class Follower:
    """Hashes the output files that another library writes front to back (GGUF through gguf-py, a .ckpt through
    torch's zip writer) while it writes them, in a thread that maps each one from where it left off to its current
    end (the page cache, read-only) and waits when it has caught up. Hashing then overlaps converting, without
    copying the bytes. Files in `skip` (absolute paths: those tensorio.output writes, and hashes from its own
    buffers) are left alone. Call `finish()` when the writer has returned (or failed): it hashes what is left and
    returns {path: (size, hex digest)} for the followed files."""

    def __init__(self, output: str, algorithm: str = DEFAULT_HASH, skip: Any = ()):
        import threading

        new_hash(algorithm)  # an unknown name fails here, before anything is written
        self.algorithm = algorithm
        self.output = output
        self.skip = skip
        self.done = threading.Event()
        self.stop = threading.Event()
        self.digests: dict[str, tuple[int, str]] = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gemma-inspect-follow", daemon=True)
        self._thread.start()

    def _candidates(self) -> list[str]:
        if os.path.isdir(self.output):
            found = [os.path.join(self.output, e) for e in os.listdir(self.output) if e.endswith(APPENDED)]
        else:
            found = [self.output] if self.output.endswith(APPENDED) and os.path.isfile(self.output) else []
        return sorted(p for p in found if os.path.abspath(p) not in self.skip)

    def _run(self) -> None:
        states: dict[str, tuple[Any, Any, int]] = {}  # path -> (file, hash, bytes hashed)
        try:
            while not self.stop.is_set():
                finished = self.done.is_set()  # read before the last pass: nothing is written after it is set
                progressed = False
                for path in self._candidates():
                    if path not in states:
                        states[path] = (open(path, "rb", buffering=0), new_hash(self.algorithm), 0)
                    f, h, n = states[path]
                    start = time.perf_counter()
                    end = os.fstat(f.fileno()).st_size
                    if end > n:
                        hash_range(f.fileno(), h, n, end)
                        n = end
                        progressed = True
                    add_stage("hash", time.perf_counter() - start)
                    states[path] = (f, h, n)
                if finished:
                    break
                if not progressed:
                    time.sleep(0.002)
            for path, (f, h, n) in states.items():
                self.digests[path] = (n, h.hexdigest())
        except BaseException as e:  # noqa: B036 - handed to finish(), which falls back to hashing afterwards
            self.error = e
        finally:
            for f, _h, _n in states.values():
                f.close()

    def finish(self, ok: bool = True) -> dict[str, tuple[int, str]]:
        (self.done if ok else self.stop).set()
        self._thread.join()
        if not ok or self.error is not None:
            return {}
        # A file that does not end where the hashing ended was not written front to back: hash it again.
        return {p: d for p, d in self.digests.items() if os.path.getsize(p) == d[0]}
