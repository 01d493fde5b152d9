"""Manifests: what `convert` wrote - every file's size and hash, every tensor's canonical name, shape and dtype
as the output reads back - kept with the output, and the check of an output against it (`diff DEST --manifest`).

The hash is BLAKE3 by default: SIMD and tree-structured, it runs at several GB/s on one core of any x86-64 or Arm
CPU, where SHA-256 runs at 250-290 MB/s on CPUs without SHA extensions and would set the pace of a conversion.
SHA-256 stays available (`convert --hash sha256`) to compare with published hashes (the Hugging Face hub lists
each file's SHA-256). A manifest records its algorithm; `diff --manifest` checks whichever one it names,
manifests of version 1 (SHA-256, written before BLAKE3 became the default) included.

A directory output holds its manifest as `gemma-inspect-manifest.json`; a single-file output (`.gguf`, `.ckpt`)
has it beside it as `DEST.manifest.json`. The hashes are computed from the files themselves (those written front
to back while they are written, the others when they are finished), so they cover the bytes on disk, including
those the kernel copied without them passing through Python.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import InputError
# The hashing itself is the byte pipeline's (tensorio.hashing); re-exported for the callers of this module.
from .tensorio.hashing import (APPENDED, DEFAULT_HASH, HASH_BLOCK, HASH_NAMES, HASHES, Follower,  # noqa: F401
                               hash_files, hash_of, new_hash)

MANIFEST_NAME = "gemma-inspect-manifest.json"
SIBLING_SUFFIX = ".manifest.json"
KIND = "gemma-inspect manifest"
VERSION = 2  # 2: the algorithm is named ("hash") and each file's digest is keyed by it; 1: SHA-256 only
VERSIONS = (1, 2)
FILE_STATUSES = ("equal", "different", "missing_a", "missing_b")


def manifest_path(dest: str, is_dir: bool | None = None) -> str:
    """Where the manifest of the output `dest` lives: inside a directory, beside a single file."""
    if is_dir is None:
        is_dir = os.path.isdir(dest)
    return os.path.join(dest, MANIFEST_NAME) if is_dir else dest + SIBLING_SUFFIX


def _files_of(root: str) -> list[str]:
    """Relative paths of the regular files of a directory output (its manifest excluded), sorted."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            full = os.path.join(d, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if rel != MANIFEST_NAME:
                out.append(rel)
    return sorted(out)


def build(output: str, fmt: str, source: str, streamed: dict[str, tuple[int, str]] | None = None,
          algorithm: str = DEFAULT_HASH) -> dict[str, Any]:
    """The manifest of a finished output (a directory or a file): its files, and its tensors as our reader
    reads them back (which also proves the output readable). `streamed` holds the (size, digest) of files
    already hashed with `algorithm` while they were written (tensorio.output, Follower); the others are hashed
    now, in parallel."""
    from . import __version__
    from .formats import module

    streamed = {os.path.abspath(p): d for p, d in (streamed or {}).items()}
    is_dir = os.path.isdir(output)
    root = os.path.abspath(output if is_dir else os.path.dirname(os.path.abspath(output)))
    names = _files_of(output) if is_dir else [os.path.basename(output)]
    paths = [os.path.join(root, n) for n in names]
    streamed = {p: d for p, d in streamed.items() if os.path.isfile(p) and os.path.getsize(p) == d[0]}
    todo = [p for p in paths if p not in streamed]
    hashed = dict(zip(todo, hash_files(todo, algorithm)))
    written = module(fmt).read(output)
    return {
        "kind": KIND,
        "version": VERSION,
        "created_by": f"gemma-inspect {__version__}",
        "format": fmt,
        "source": source,
        "hash": algorithm,
        "files": [{"name": n, "size": os.path.getsize(p), algorithm: streamed[p][1] if p in streamed else hashed[p]}
                  for n, p in zip(names, paths)],
        "tensors": [{"name": r.name, "shape": list(r.shape), "dtype": r.dtype}
                    for r in (*written.tensors.values(), *written.head_tensors.values())],
    }


def is_manifest(path: str) -> bool:
    """Whether `path` is a manifest file (by name, then by its `kind`)."""
    if not (os.path.basename(path) == MANIFEST_NAME or path.endswith(SIBLING_SUFFIX)) or not os.path.isfile(path):
        return False
    try:
        return read(path)["kind"] == KIND
    except InputError:
        return False


def read(path: str) -> dict[str, Any]:
    """A manifest file, validated: an InputError names the file and what is wrong with it. Its "hash" is the
    algorithm of its digests (a version 1 manifest's is SHA-256)."""
    from .safeio import read_json_object

    m = read_json_object(path, "manifest")
    if m.get("kind") != KIND:
        raise InputError(path, f"not a gemma-inspect manifest (kind {m.get('kind')!r})")
    if m.get("version") not in VERSIONS:
        raise InputError(path, f"manifest version {m.get('version')!r} is not one of {', '.join(map(str, VERSIONS))}")
    if m["version"] == 1:
        m["hash"] = "sha256"
    algorithm = m.get("hash")
    if algorithm not in HASHES:
        raise InputError(path, f"manifest hash {algorithm!r} is not one of {', '.join(HASHES)}")
    files = m.get("files")
    if not isinstance(files, list) or not all(
            isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("size"), int)
            and not isinstance(f.get("size"), bool) and isinstance(f.get(algorithm), str)
            and len(f[algorithm]) == 64 for f in files):
        raise InputError(path, f"manifest 'files' must list objects with a name, a size and a {algorithm}")
    tensors = m.get("tensors")
    if not isinstance(tensors, list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("shape"), list)
            and isinstance(t.get("dtype"), str) for t in tensors):
        raise InputError(path, "manifest 'tensors' must list objects with a name, a shape and a dtype")
    return m


def check(dest: str, manifest: str | None = None) -> dict[str, Any]:
    """Check the output `dest` against its manifest (default: where convert wrote it). The JSON object of
    `diff DEST --manifest`: {"identical", "a": {"source", "format"}, "manifest", "hash", "counts", "files": [{"name",
    "status", "size", "digest", "expected_size", "expected_digest"}], "tensors": [{"name", "status", "shape_a",
    "shape_b", "dtype_a", "dtype_b"}], "error"}. Statuses follow `diff`: missing_a is listed by the manifest but
    absent from DEST, missing_b present in DEST but not in the manifest. "hash" is the manifest's algorithm, which
    the digests are computed with."""
    from .safeio import safe_child

    if not os.path.lexists(dest):
        raise InputError(dest, "no such file or directory")
    is_dir = os.path.isdir(dest)
    mpath = manifest or manifest_path(dest, is_dir)
    if not os.path.lexists(mpath):
        raise InputError(mpath, "missing: no manifest here (convert writes one; or pass --manifest FILE)")
    m = read(mpath)
    algorithm = m["hash"]
    root = dest if is_dir else os.path.dirname(os.path.abspath(dest))
    _check_names(m["files"], mpath, None if is_dir else os.path.basename(os.path.abspath(dest)))
    listed = {f["name"]: f for f in m["files"]}
    present = _files_of(dest) if is_dir else [os.path.basename(dest)]
    rows: list[dict[str, Any]] = []
    to_hash: list[tuple[dict[str, Any], str]] = []
    for name in sorted(set(listed) | set(present)):
        want = listed.get(name)
        row: dict[str, Any] = {"name": name, "status": None, "size": None, "digest": None,
                               "expected_size": want["size"] if want else None,
                               "expected_digest": want[algorithm] if want else None}
        rows.append(row)
        if want is None:
            row["status"] = "missing_b"
            continue
        full = safe_child(root, name, mpath)  # a manifest must not make us read outside the output
        if not os.path.isfile(full) or (is_dir and name not in present):
            row["status"] = "missing_a"
            continue
        row["size"] = os.path.getsize(full)
        if row["size"] != want["size"]:
            row["status"] = "different"
            continue
        to_hash.append((row, full))
    for (row, _full), digest in zip(to_hash, hash_files([full for _row, full in to_hash], algorithm)):
        row["digest"] = digest
        row["status"] = "equal" if digest == row["expected_digest"].lower() else "different"
    tensors, error = _tensor_rows(dest, m)
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in FILE_STATUSES}
    identical = (counts["equal"] == len(rows) and error is None
                 and all(t["status"] == "equal" for t in tensors))
    return {"identical": identical, "a": {"source": dest, "format": m["format"]}, "manifest": mpath,
            "hash": algorithm, "counts": counts, "files": rows, "tensors": tensors, "error": error}


def _check_names(files: list[dict[str, Any]], mpath: str, single: str | None) -> None:
    """A manifest may list only the output's own files, each once, by its plain relative name: `single` itself
    beside a single-file output; paths below the output directory, without `.`/`..` parts, empty parts or
    backslashes, otherwise. Anything else would make `diff --manifest` size, hash and print files that are
    not the output's (a sibling secret.txt), or hash one file under many aliases (./x.gguf, ././x.gguf)."""
    seen: set[str] = set()
    for f in files:
        name = f["name"]
        parts = name.split("/")
        if single is not None and name != single:
            raise InputError(mpath, f"lists {name!r}, which is not the output's own file {single!r}")
        if not name or "\\" in name or "\x00" in name or any(p in ("", ".", "..") for p in parts):
            raise InputError(mpath, f"lists {name!r}, which is not a plain relative path inside the output")
        if name in seen:
            raise InputError(mpath, f"lists {name!r} twice")
        seen.add(name)


def _tensor_rows(dest: str, m: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """The manifest's tensor table against DEST as our reader reads it now (headers only)."""
    from .errors import GemmaInspectError
    from .formats import load

    try:
        got = load(dest)
    except GemmaInspectError as e:  # the file check already says which file is wrong; this says why it fails
        return [], str(e)
    have = {r.name: r for r in (*got.tensors.values(), *got.head_tensors.values())}
    want = {t["name"]: t for t in m["tensors"]}
    rows = []
    for name in list(want) + [n for n in have if n not in want]:
        w, h = want.get(name), have.get(name)
        row = {"name": name, "shape_a": list(h.shape) if h else None, "shape_b": w["shape"] if w else None,
               "dtype_a": h.dtype if h else None, "dtype_b": w["dtype"] if w else None}
        if h is None:
            row["status"] = "missing_a"
        elif w is None:
            row["status"] = "missing_b"
        elif row["shape_a"] != row["shape_b"]:
            row["status"] = "shape_mismatch"
        else:
            row["status"] = "equal" if row["dtype_a"] == row["dtype_b"] else "different"
        rows.append(row)
    return rows, None
