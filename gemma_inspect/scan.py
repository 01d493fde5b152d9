"""NaN and infinity in tensor values: counted a chunk at a time, for `diff` (which reads every value anyway) and for
anything else that wants to lint a checkpoint's values (`nonfinite`).

A NaN or an infinity in a weight is not a broken file - the bytes are what they are, and converting copies them
faithfully - but it is almost always a broken model, so the commands that read values say so. `summary` reads
headers only and cannot.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

# The exponent bits of each float type: all set means infinity (mantissa 0) or NaN (mantissa not 0).
_LAYOUT = {"float32": (np.uint32, 0x7F800000, 0x007FFFFF), "float16": (np.uint16, 0x7C00, 0x03FF),
           "bfloat16": (np.uint16, 0x7F80, 0x007F), "float64": (np.uint64, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF)}
SCAN_CHUNK = 32 * 1024 * 1024


def count_bits(raw: Any, dtype: str) -> tuple[int, int]:
    """(NaNs, infinities) among the values of `dtype` stored in the bytes `raw`, from their bit patterns
    (bfloat16 included, with no conversion). Other dtypes (integers, quantized blocks) count (0, 0)."""
    if dtype not in _LAYOUT:
        return 0, 0
    utype, exponent, mantissa = _LAYOUT[dtype]
    bits = np.frombuffer(raw, dtype=utype)
    special = (bits & utype(exponent)) == utype(exponent)
    if not special.any():
        return 0, 0
    nan = int(np.count_nonzero(special & ((bits & utype(mantissa)) != 0)))
    return nan, int(np.count_nonzero(special)) - nan


def count_array(arr: np.ndarray) -> tuple[int, int]:
    """(NaNs, infinities) in a float array of any dtype (bfloat16 as ml_dtypes.bfloat16)."""
    name = arr.dtype.name  # ml_dtypes' bfloat16 is named "bfloat16" too
    if name in _LAYOUT:
        return count_bits(np.ascontiguousarray(arr).reshape(-1).view(np.uint8), name)
    if arr.dtype.kind != "f":
        return 0, 0
    with np.errstate(all="ignore"):
        nan = int(np.isnan(arr).sum())
        return nan, int(np.isinf(arr).sum())


def count_tensor(ref: Any) -> tuple[int, int]:
    """(NaNs, infinities) of one TensorRef: its raw chunks when it offers them, else its loaded values (a
    quantized tensor's dequantized values)."""
    if ref.chunks is not None and ref.dtype in _LAYOUT:
        nan = inf = 0
        itemsize = np.dtype(_LAYOUT[ref.dtype][0]).itemsize
        for piece in ref.chunks((SCAN_CHUNK // itemsize) * itemsize):
            n, i = count_bits(piece, ref.dtype)
            nan, inf = nan + n, inf + i
        return nan, inf
    return count_array(ref.load())


def nonfinite(ckpt: Any, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """[{"name", "nan", "inf", "numel"}] for every tensor of a checkpoint that holds NaN or infinite values."""
    out = []
    for name, ref in ckpt.tensors.items():
        nan, inf = count_tensor(ref)
        if nan or inf:
            out.append({"name": name, "nan": nan, "inf": inf, "numel": ref.numel})
        if progress is not None:
            progress(name)
    return out


def findings(found: list[dict[str, Any]], limit: int = 3) -> str:
    """How many tensors hold NaN/inf values and which (the first `limit` of them)."""
    names = ", ".join(f"{f['name']} ({f['nan']} NaN, {f['inf']} inf)" for f in found[:limit])
    more = f" and {len(found) - limit} more" if len(found) > limit else ""
    return f"{len(found)} tensors hold NaN or infinite values: {names}{more}"


def describe(found: list[dict[str, Any]], where: str) -> str:
    """One line for a warning: where, how many tensors hold NaN/inf values and which."""
    return f"{where}: {findings(found)}"
