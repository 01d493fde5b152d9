"""Helpers every format module shares: reading config values strictly, and the format contract (`FormatInfo`).

Reading files safely (regular files, bounded JSON, names inside a directory) is `safeio`'s, re-exported here.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import InputError
from ..safeio import (MAX_INT_DIGITS, MAX_JSON_BYTES, MAX_JSON_VALUES, check_member, json_values_bound,  # noqa: F401
                      loads_bounded, read_bounded, read_json, read_json_bytes, read_json_object, regular_file,
                      read_weight_map, safe_child)


def most_common(values: list[str]) -> str | None:
    """The value that occurs most often (the first of them on a tie, so the answer never depends on hashing);
    None for no values. Readers take the checkpoint's dtype from its tensors this way."""
    if not values:
        return None
    counts = collections.Counter(values)
    return max(counts, key=counts.__getitem__)


# More layers than any decoder has: a corrupt config, which must not make a reader build per-layer
# tables of that length (10**9 layers would take gigabytes before a single tensor is compared).
MAX_LAYERS = 1000


_SHOW = None


def show(value: Any) -> str:
    """A config value for an error message: repr() cut short in length and nesting depth, so that a deeply
    nested or huge value gives a short line (plain repr() of 900 nested lists exhausts the recursion limit)."""
    global _SHOW
    if _SHOW is None:
        import reprlib

        _SHOW = reprlib.Repr()
        _SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong = 3, 80, 80, 40
        _SHOW.maxlist = _SHOW.maxdict = _SHOW.maxtuple = _SHOW.maxset = 6
    try:
        return _SHOW.repr(value)
    except (RecursionError, ValueError):
        return f"<a {type(value).__name__}>"


def require_int(cfg: dict[str, Any], key: str, path: str, default: Any = None, maximum: int | None = None) -> int:
    v = cfg.get(key, default)
    if v is None:
        raise InputError(path, f"config has no {key!r}")
    if isinstance(v, bool) or not isinstance(v, int):
        if not (isinstance(v, float) and v.is_integer()):
            raise InputError(path, f"config {key!r} must be an integer, got {show(v)}")
        v = int(v)
    if v <= 0:
        raise InputError(path, f"config {key!r} must be positive, got {show(v)}")
    if maximum is not None and v > maximum:
        raise InputError(path, f"config {key!r} is {show(v)}, more than the {maximum} this tool accepts")
    return v


def opt_float(cfg: dict[str, Any], key: str, path: str, default: Any = None) -> float | None:
    v = cfg.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(path, f"config {key!r} must be a number, got {show(v)}")
    try:
        f = float(v)
    except OverflowError:  # an integer beyond float's range
        f = math.inf
    if not math.isfinite(f):
        raise InputError(path, f"config {key!r} must be a finite number, got {show(v)}")
    return f


# ----------------------------------------------------------------------------- the format contract
@dataclass(frozen=True)
class FormatInfo:
    """What a format is, as data: each format module declares one as `FORMAT` (at its end), and detection, the
    files a directory's readers open, `convert`'s refusals and the runtime `auto` picks derive from them.

    A directory of this format holds `member_files` (read by fixed name; each must be a regular file inside the
    directory), of which `weight_files` hold or index the weights and `ambiguous` pairs are a single weights file
    and a shard index that must not both be there; entries ending with `weight_suffixes` hold weights too. Its
    config.json is recognised by `config_sniff` (described by `config_hint` in messages); a format without one
    is recognised by its weights. A single file is recognised by its `magic` bytes or, without magic, by
    `file_suffixes`; files ending with `loose_suffixes` belong in a directory."""

    name: str  # as the CLI spells it: "hf", "keras", "gguf", "gemma-pytorch"
    title: str  # as messages name it
    description: str  # what a user passes, for "expected ..." messages
    stores_quantization: bool  # whether tensors are written quantized (else floats only: --dtype q8_0 is refused)
    native_runtime: str | None  # the runtime `auto` runs it on; None: the reference runtime
    member_files: tuple[str, ...] = ()
    weight_files: tuple[str, ...] = ()
    ambiguous: tuple[tuple[str, str], ...] = ()
    weight_suffixes: tuple[str, ...] = ()
    config_sniff: Callable[[dict[str, Any]], bool] | None = None
    config_hint: str = ""
    magic: bytes | None = None
    file_suffixes: tuple[str, ...] = ()
    loose_suffixes: tuple[str, ...] = ()

    def holds_weights(self, entries: list[str]) -> bool:
        """Whether a directory's entries include this format's weights (by name or by suffix)."""
        return any(e in self.weight_files or (self.weight_suffixes and e.endswith(self.weight_suffixes))
                   for e in entries)
