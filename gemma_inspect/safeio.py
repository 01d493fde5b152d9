"""Strict reading of the files a checkpoint names: regular files only (never a FIFO or a device), JSON read within
bounds on its size, its number of values and its numbers, and names that stay inside their directory.

A leaf: every reader (the formats, the tokenizer, manifests, the hub) uses it, and it imports only `errors`.
"""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any

from .errors import InputError

MAX_JSON_BYTES = 100 * 1024 * 1024
# Python builds a 56-byte object for each `[]` of a `[[],[],...]` file: 30 MB of such JSON took 750 MB. The
# values a text can hold are bounded by its commas and brackets (counted at memory speed, those inside
# strings too, which only errs on the safe side), so a file with more than this many is refused unparsed.
# Configs and indexes hold thousands; a 100,000-tensor index about 200,000.
MAX_JSON_VALUES = 1_000_000


def regular_file(path: str) -> int:
    """The size of `path`, which must be a regular file (symlinks followed): reading a FIFO blocks forever,
    and a device such as /dev/zero never ends."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(path, "missing") from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket")
        raise InputError(path, f"is {kind}, not a regular file")
    return st.st_size


def json_values_bound(raw: bytes) -> int:
    """An upper bound on the number of values a JSON text holds, from its commas and brackets."""
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{")


def loads_bounded(raw: bytes, path: str, what: str, max_values: int = MAX_JSON_VALUES, **kwargs: Any) -> Any:
    """json.loads of `raw` (UTF-8), refusing texts that would build more than `max_values` values and nesting
    that exhausts the recursion limit (InputErrors naming `path`); UnicodeDecodeError and JSONDecodeError
    are the caller's to word."""
    if json_values_bound(raw) > max_values:
        raise InputError(path, f"{what} holds more than the {max_values:,} JSON values this tool accepts")
    try:
        return json.loads(raw.decode("utf-8"), **kwargs)
    except RecursionError:
        raise InputError(path, "not valid JSON: nested too deeply") from None
    except ValueError as e:
        if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)):
            raise
        # Python refuses to parse an integer of more than 4,300 digits (int_max_str_digits).
        raise InputError(path, f"{what} holds a number this tool cannot read ({str(e).split(':')[0]})") from None


# The largest integer a JSON file read with read_json may hold, in digits. Real files hold ids, sizes and
# tokenizer_config's model_max_length (1e30, 31 digits); beyond this a number is an attack on the parser,
# the arithmetic or the error message (a 5,000-digit integer cannot even be printed).
MAX_INT_DIGITS = 64


def _strict_int(path: str) -> Any:
    def parse(text: str) -> int:
        digits = len(text) - text.startswith("-")
        if digits > MAX_INT_DIGITS:
            raise InputError(path, f"holds an integer of {digits} digits (at most {MAX_INT_DIGITS} are accepted)")
        return int(text)
    return parse


def _finite_float(path: str) -> Any:
    def parse(text: str) -> float:
        f = float(text)
        if not math.isfinite(f):  # 1e999: as infinite as `Infinity`, and as impossible to write back as JSON
            raise InputError(path, f"holds the number {text[:40]}, which overflows to infinity")
        return f
    return parse


def _no_constant(path: str) -> Any:
    def parse(name: str) -> Any:
        raise InputError(path, f"not valid JSON: {name} is not a JSON number (RFC 8259)")
    return parse


def read_bounded(f: Any, n: int, path: str, what: str, max_values: int) -> bytes:
    """Up to `n` bytes of the open file `f`, read 4 MB at a time and refused as soon as they could hold more than
    `max_values` JSON values: a crafted file is turned away before it costs more memory than a real one."""
    parts, bound, left = [], 0, n
    while left:
        piece = f.read(min(4 << 20, left))
        if not piece:
            break
        bound += json_values_bound(piece)
        if bound > max_values:
            raise InputError(path, f"{what} holds more than the {max_values:,} JSON values this tool accepts")
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


def read_json_bytes(path: str, what: str = "JSON", max_bytes: int = MAX_JSON_BYTES,
                    max_values: int = MAX_JSON_VALUES) -> bytes:
    """The bytes of a JSON file - a regular file, at most `max_bytes`, refused early when it could hold more than
    `max_values` values - not yet parsed (for a library that parses it itself); problems are InputErrors."""
    try:
        size = regular_file(path)
        if size > max_bytes:
            raise InputError(path, f"{what} is {size} bytes, over the {max_bytes // 2**20} MB limit")
        with open(path, "rb") as f:
            raw = read_bounded(f, max_bytes + 1, path, what, max_values)  # it can grow between stat and read
        if len(raw) > max_bytes:
            raise InputError(path, f"{what} is over the {max_bytes // 2**20} MB limit")
    except InputError as e:
        if e.problem == "missing":
            raise InputError(path, f"missing ({what} expected here)") from None
        raise
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    return raw


def read_json(path: str, what: str = "JSON", max_bytes: int = MAX_JSON_BYTES,
              max_values: int = MAX_JSON_VALUES) -> Any:
    """Parse a JSON file; any problem is an InputError naming the file."""
    raw = read_json_bytes(path, what, max_bytes, max_values)
    try:
        return loads_bounded(raw, path, what, max_values, parse_int=_strict_int(path),
                             parse_float=_finite_float(path), parse_constant=_no_constant(path))
    except UnicodeDecodeError:
        raise InputError(path, f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def read_json_object(path: str, what: str = "JSON") -> dict[str, Any]:
    obj = read_json(path, what)
    if not isinstance(obj, dict):
        raise InputError(path, f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def read_weight_map(index_path: str, what: str, keys: str) -> dict[Any, Any]:
    """The non-empty `weight_map` object of a shard index (HF's model.safetensors.index.json, keras-hub's
    model.weights.json); `keys` says what its keys are, for the message."""
    wm = read_json_object(index_path, what).get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise InputError(index_path, f"has no weight_map (a {keys} -> shard file object)")
    return wm


def safe_child(directory: str, relname: Any, referrer: str) -> str:
    """`directory/relname`, refusing names that are absolute, climb out with `..`, or resolve (through
    symlinks) to a place outside `directory`. `referrer` is the file that named it, for the message."""
    if not isinstance(relname, str) or not relname or "\x00" in relname:
        raise InputError(referrer, f"invalid file name {relname!r}")
    if os.path.isabs(relname) or relname.startswith(("/", "\\")) or ":" in relname[:3]:
        raise InputError(referrer, f"refers to {relname!r}, an absolute path outside the checkpoint directory")
    parts = relname.replace("\\", "/").split("/")
    if ".." in parts:
        raise InputError(referrer, f"refers to {relname!r}, which leaves the checkpoint directory")
    full = os.path.join(directory, relname)
    real = _escapes(directory, full)
    if real is not None:
        raise InputError(referrer, f"refers to {relname!r}, which resolves outside the checkpoint "
                                   f"directory (symlink to {real})")
    return full


def _escapes(directory: str, full: str) -> str | None:
    """Where `full` really is when (through symlinks) that is outside `directory`; None when it is inside."""
    real_dir = os.path.realpath(directory)
    real = os.path.realpath(full)
    allowed = [real_dir]
    if os.path.basename(os.path.dirname(real_dir)) == "snapshots":
        # Hugging Face hub cache: <repo>/snapshots/<rev>/<file> is a symlink to <repo>/blobs/<hash>,
        # which stays inside the cached repository (the directory snapshot_download returns).
        allowed.append(os.path.join(os.path.dirname(os.path.dirname(real_dir)), "blobs"))
    return None if any(os.path.commonpath([a, real]) == a for a in allowed) else real


def check_member(directory: str, name: str) -> None:
    """A file a reader opens by its fixed name (config.json, model.safetensors, tokenizer.model, ...), when
    present, must be a regular file inside `directory` (the Hugging Face cache's links to its blobs count
    as inside): never a link to elsewhere, a FIFO or a device."""
    full = os.path.join(directory, name)
    if not os.path.lexists(full):
        return
    real = _escapes(directory, full)
    if real is not None:
        raise InputError(full, f"is a symlink to {real}, outside the checkpoint directory")
    regular_file(full)
