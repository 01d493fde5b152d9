"""Layout kernels: transposes, per-head axis swaps and casts, bit-exact for every element size (bfloat16 included).

Every re-layout is one library kernel call: torch's CPU copy of a transposed 2-D tensor into a contiguous one
(ATen's blocked transpose, `copy_` with a transposed source) moves the values as integers of the same width, so
the result is bit-identical to numpy's `np.ascontiguousarray(a.T)`; measured side by side on a [2048, 16384]
bfloat16 FFN kernel (`benchmarks/kernels.py`) it is about 4x faster than numpy's strided copy and than the
tile-by-tile transpose this module used to hand-write. Casts stay numpy's (ml_dtypes' bfloat16, round to
nearest even), written into the caller's buffer. torch is imported on first use only: `summary` never loads it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

_INT = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def _as_int(a: np.ndarray) -> np.ndarray:
    """The same bytes seen as signed integers of the element's width (what the kernels move)."""
    if a.dtype.itemsize not in _INT:
        raise ValueError(f"no integer type of {a.dtype.itemsize} bytes for dtype {a.dtype}")
    if any(s < 0 for s in a.strides):
        a = np.ascontiguousarray(a)
    return a.view(_INT[a.dtype.itemsize]) if a.dtype != _INT[a.dtype.itemsize] else a


def _torch(a: np.ndarray):  # noqa: ANN202 - torch stays an import on first use
    import torch

    with warnings.catch_warnings():  # a read-only source (a memory map) is only ever read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(_as_int(a))


def permute(a: np.ndarray, perm: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
    """`a.transpose(perm)` copied into `out` (C-contiguous, `a`'s dtype and the permuted shape; allocated when
    None), with torch's copy kernels. A 2-D transpose is one call; a permutation that keeps the leading axis
    (per-head kernels: (N, d, D) -> (N, D, d)) is one 2-D transpose per leading index."""
    shape = tuple(a.shape[p] for p in perm)
    if out is None:
        out = np.empty(shape, dtype=a.dtype)
    elif out.shape != shape or out.dtype.itemsize != a.dtype.itemsize or not out.flags.c_contiguous:
        raise ValueError(f"permute: out has shape {out.shape} ({out.dtype}), expected contiguous {shape} ({a.dtype})")
    if a.size == 0:
        return out
    src, dst = _torch(a), _torch(out)
    if len(perm) == 3 and perm[0] == 0 and tuple(perm[1:]) == (2, 1):
        for i in range(a.shape[0]):  # each head is a whole 2-D transpose: ATen's fast path
            dst[i].copy_(src[i].t())
    else:
        dst.copy_(src.permute(*perm))
    return out


def transpose2d(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`a.T` as a C-contiguous array (into `out` when given), bit-identical to numpy's."""
    if a.ndim != 2:
        raise ValueError(f"transpose2d needs a matrix, got shape {a.shape}")
    return permute(a, (1, 0), out)


def transpose_last2(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Swap the last two axes of a 3-D array (per-head kernels)."""
    return permute(a, (0, 2, 1), out)


def cast_into(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`src.astype(out.dtype)` written into `out` (same shape): numpy's cast, round to nearest even; NaN and inf
    (and overflow to inf) cast as they are, without warnings. bfloat16 <-> float16 goes through float32, exactly,
    a slice at a time."""
    if src.dtype == out.dtype:
        np.copyto(out, src)
        return out
    with np.errstate(all="ignore"):
        if src.dtype != np.float32 and out.dtype != np.float32:
            flat_src, flat_out = src.reshape(-1), out.reshape(-1)
            step = 1 << 20
            for i in range(0, flat_src.size, step):
                flat_out[i:i + step] = flat_src[i:i + step].astype(np.float32)
        else:
            np.copyto(out, src, casting="unsafe")
    return out


@dataclass(frozen=True)
class Layout:
    """A re-layout: the source seen as `view`, its axes permuted by `perm`, the result seen as `shape`.

    Keras' per-head and [in, out] kernels against the canonical [out, in] layout are all of this form:
    (N, d, D) -> [N*D, d] is view (N, d, D), perm (0, 2, 1); a dense [in, out] -> [out, in] is perm (1, 0)."""

    view: tuple[int, ...]
    perm: tuple[int, ...]
    shape: tuple[int, ...]

    def apply(self, a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        flat = None if out is None else out.reshape(tuple(self.view[p] for p in self.perm))
        return permute(a.reshape(self.view), self.perm, flat).reshape(self.shape)


def aligned_empty(nbytes: int, align: int = 4096) -> np.ndarray:
    """An uninitialised uint8 buffer whose data starts on a page boundary (numpy aligns to 16 bytes only; the
    copy kernels are measurably faster on aligned rows)."""
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + nbytes]
