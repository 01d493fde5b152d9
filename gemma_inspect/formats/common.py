"""Helpers every format module shares: strict JSON reading and paths that must stay inside a directory."""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import InputError

MAX_JSON_BYTES = 100 * 1024 * 1024


def read_json(path: str, what: str = "JSON") -> Any:
    """Parse a JSON file; any problem is an InputError naming the file."""
    try:
        size = os.path.getsize(path)
        if size > MAX_JSON_BYTES:
            raise InputError(path, f"{what} is {size} bytes, over the {MAX_JSON_BYTES // 2**20} MB limit")
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise InputError(path, f"missing ({what} expected here)") from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(path, f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise InputError(path, "not valid JSON: nested too deeply") from None


def read_json_object(path: str, what: str = "JSON") -> dict[str, Any]:
    obj = read_json(path, what)
    if not isinstance(obj, dict):
        raise InputError(path, f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def safe_child(directory: str, relname: Any, referrer: str) -> str:
    """`directory/relname`, refusing names that are absolute, climb out with `..`, or resolve (through
    symlinks) to a place outside `directory`. `referrer` is the file that named it, for the message."""
    if not isinstance(relname, str) or not relname:
        raise InputError(referrer, f"invalid file name {relname!r}")
    if os.path.isabs(relname) or relname.startswith(("/", "\\")) or ":" in relname[:3]:
        raise InputError(referrer, f"refers to {relname!r}, an absolute path outside the checkpoint directory")
    parts = relname.replace("\\", "/").split("/")
    if ".." in parts:
        raise InputError(referrer, f"refers to {relname!r}, which leaves the checkpoint directory")
    full = os.path.join(directory, relname)
    real_dir = os.path.realpath(directory)
    real = os.path.realpath(full)
    allowed = [real_dir]
    if os.path.basename(os.path.dirname(real_dir)) == "snapshots":
        # Hugging Face hub cache: <repo>/snapshots/<rev>/<file> is a symlink to <repo>/blobs/<hash>,
        # which stays inside the cached repository (the directory snapshot_download returns).
        allowed.append(os.path.join(os.path.dirname(os.path.dirname(real_dir)), "blobs"))
    if not any(os.path.commonpath([a, real]) == a for a in allowed):
        raise InputError(referrer, f"refers to {relname!r}, which resolves outside the checkpoint "
                                   f"directory (symlink to {real})")
    return full


# More layers than any decoder has: a corrupt config, which must not make a reader build per-layer
# tables of that length (10**9 layers would take gigabytes before a single tensor is compared).
MAX_LAYERS = 1000


def require_int(cfg: dict[str, Any], key: str, path: str, default: Any = None, maximum: int | None = None) -> int:
    v = cfg.get(key, default)
    if v is None:
        raise InputError(path, f"config has no {key!r}")
    if isinstance(v, bool) or not isinstance(v, int):
        if not (isinstance(v, float) and v.is_integer()):
            raise InputError(path, f"config {key!r} must be an integer, got {v!r}")
        v = int(v)
    if v <= 0:
        raise InputError(path, f"config {key!r} must be positive, got {v}")
    if maximum is not None and v > maximum:
        raise InputError(path, f"config {key!r} is {v}, more than the {maximum} this tool accepts")
    return v


def opt_float(cfg: dict[str, Any], key: str, path: str, default: Any = None) -> float | None:
    v = cfg.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(path, f"config {key!r} must be a number, got {v!r}")
    return float(v)
