"""Streaming conversion between formats: read one tensor, transform, write, drop.

Each format module writes from the canonical Checkpoint with `write(ckpt, dest, options, progress)`;
what the writers share (dtype casting, the byte pipeline, shard plans) is `tensorio`'s. This module owns the
conversion itself and its atomic output: everything is written into a temporary sibling of DEST and renamed at
the very end, so a failure or a kill never leaves a DEST that looks complete.
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
import tempfile
from typing import Any, Iterable

from .checkpoint import Checkpoint
from .dtypes import CONVERT_DTYPES as DTYPES
from .dtypes import KEEP, QUANT_DTYPES
from .errors import InputError, OutputError, UnsupportedError
from .formats import FORMATS as TARGETS  # every format is written as well as read
from .manifest import HASH_NAMES, SIBLING_SUFFIX, Follower, manifest_path
# Re-exported: the byte pipeline and WriteOptions moved to tensorio; callers of convert keep their imports.
from .tensorio import (STAGES, BufferPool, Buffers, Pooled, Progress, Span, WriteOptions, cast_array,  # noqa: F401
                       plan_shards, prefetched, target_nbytes, tensor_pieces, write_pieces)
from .tensorio.options import IO_MODES
from .tensorio.output import output_session
from .tensorio.stages import reset_stages, stage_times


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
    from .formats import info, infos, load, module

    # The writers report into options.notes: a run works on its own copy, so a WriteOptions reused for several
    # conversions never carries one run's notes into the next report.
    options = dataclasses.replace(options or WriteOptions(), notes=[])
    if to not in TARGETS:
        raise InputError(None, f"unknown target format {to!r}; choose from {', '.join(TARGETS)}")
    if options.dtype not in DTYPES:
        raise InputError(None, f"unknown dtype {options.dtype!r}; choose from {', '.join(DTYPES)}")
    if options.hash not in HASH_NAMES:
        raise InputError(None, f"unknown hash {options.hash!r}; choose from {', '.join(HASH_NAMES)}")
    if options.io not in IO_MODES:
        raise InputError(None, f"unknown io mode {options.io!r}; choose from {', '.join(IO_MODES)}")
    ckpt = load(source) if isinstance(source, str) else source
    if ckpt.is_card:
        raise InputError(ckpt.source, "a built-in card has no tensors to convert")
    ckpt.require("convert")
    ckpt.require_writer(to)
    check_dest(dest, ckpt)  # first: --force would not make such a DEST acceptable
    if os.path.lexists(dest) and not options.force:
        raise OutputError(f"{dest}: already exists (use --force to replace it)")
    check_name_length(dest, options.manifest)
    target_info = info(to)
    if not target_info.stores_quantization:
        if options.dtype in QUANT_DTYPES:
            quantizers = " or ".join(i.title for i in infos().values() if i.stores_quantization)
            raise UnsupportedError(f"--dtype {options.dtype} is a {quantizers} quantization; choose one of "
                                   f"{', '.join(d for d in DTYPES if d not in QUANT_DTYPES)} for {target_info.title}")
        if options.dtype == KEEP and ckpt.is_quantized:
            options.notes.append("quantized tensors were dequantized and are stored as float32")
    writer = module(to)
    written = [0]

    def counted(n: int) -> None:
        written[0] += n
        if progress is not None:
            progress(n)

    _reuse_freed_memory()
    reset_stages()
    tmp = _temporary_sibling(dest)
    target = os.path.join(tmp, os.path.basename(dest))
    manifest_file = None
    interrupt = _InterruptToException()
    try:
        with interrupt, output_session(options.io, options.hash if options.manifest else None) as session:
            follower = Follower(target, options.hash, skip=session.claimed) if options.manifest else None
            try:
                writer.write(ckpt, target, options, counted)
            except BaseException:
                if follower is not None:
                    follower.finish(ok=False)
                raise
            io = session.summary()
            if follower is not None:
                streamed = {**follower.finish(), **session.digests}
                manifest_file = _write_manifest(target, to, ckpt.source, streamed, options.hash)
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
    if io["fallback"] and io["direct_bytes"] + io["staged_bytes"]:  # O_DIRECT given up midway
        notes.append(f"written past the page cache until {io['fallback']}; the rest through it")
    elif io["fallback"] and options.io == "direct":  # asked for and not had (auto says so in the JSON only)
        notes.append(f"written through the page cache: {io['fallback']}")
    vision = [n for n in ckpt.ignored if "vision" in n or "audio" in n or "multi_modal_projector" in n]
    if vision:
        what = "vision/audio encoder and embedder" if any("audio" in n for n in vision) else \
            "vision tower and projector"  # Gemma 3n's presets hold both encoders
        notes.insert(0, f"multimodal source: only the text decoder was converted ({len(vision)} {what} tensors "
                        f"left out)")
    manifest = None
    if manifest_file is not None:
        manifest = manifest_path(dest)
        notes.append(f"manifest: {manifest} (every file's size and {HASH_NAMES[options.hash]}, every tensor); "
                     f"check the output against it with `gemma-inspect diff {dest} --manifest`")
    return {"source": ckpt.source, "dest": dest, "format": to, "dtype": options.dtype,
            "tensors": len(ckpt.tensors) + len(ckpt.head_tensors), "bytes_written": written[0], "notes": notes,
            "source_format": ckpt.format, "source_notes": list(ckpt.notes), "manifest": manifest,
            "stages": stage_times(), "io": io}


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
