"""Layout kernels: transposes, per-head axis swaps and casts, bit-exact for every element size (bfloat16 included).

Every re-layout is a library kernel call on the bytes seen as unsigned integers of the element's width (a layout
change moves bits, never values): OpenCV's `cv2.transpose` (opencv-python-headless), a blocked transpose written
for images, whose [rows, cols] matrices of 1-, 2-, 4- and 8-byte (two-channel) elements are exactly our 2-D
kernels. Measured side by side on a [2048, 16384] bfloat16 FFN kernel (`benchmarks/kernels.py`) on the 2-core
test VM it took 42-89 ms against 99-139 ms for torch's `copy_` of a transposed tensor and 223-384 ms for numpy's
strided copy, and `import cv2` costs 24-38 ms where `import torch` costs 1.6-3 s: a conversion no longer imports
torch at all. Casts stay numpy's
(ml_dtypes' bfloat16, round to nearest even), written into the caller's buffer. cv2 is imported on first use
only: `summary` never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
# What cv2 moves each element width as: OpenCV has no 32- or 64-bit unsigned type (the bits move the same as
# int32), and an 8-byte element is a pixel of two int32 channels (a pixel's channels move together).
_CV = {1: (np.uint8, 1), 2: (np.uint16, 1), 4: (np.int32, 1), 8: (np.int32, 2)}


def bits_dtype(itemsize: int) -> np.dtype:
    """The unsigned integer dtype of `itemsize` bytes: what a layout change moves."""
    if itemsize not in _UINT:
        raise ValueError(f"no integer type of {itemsize} bytes")
    return np.dtype(_UINT[itemsize])


def _mat(a: np.ndarray) -> np.ndarray:
    """`a` (2-D) as the matrix cv2 moves, rows contiguous."""
    if a.dtype.itemsize not in _CV:
        raise ValueError(f"no integer type of {a.dtype.itemsize} bytes for dtype {a.dtype}")
    if a.strides[-1] != a.dtype.itemsize or a.strides[0] < 0:
        a = np.ascontiguousarray(a)
    kind, channels = _CV[a.dtype.itemsize]
    m = a.view(kind)
    return m.reshape(a.shape[0], a.shape[1], channels) if channels > 1 else m


def _transpose_into(a: np.ndarray, out: np.ndarray) -> None:
    import cv2

    src, dst = _mat(a), _mat(out)
    got = cv2.transpose(src, dst)
    if got is not dst and not np.shares_memory(got, dst):  # pragma: no cover - shapes are checked by the callers
        raise RuntimeError(f"cv2.transpose did not write into the output buffer ({src.shape} -> {dst.shape})")


def permute(a: np.ndarray, perm: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
    """`a.transpose(perm)` copied into `out` (C-contiguous, `a`'s dtype and the permuted shape; allocated when
    None). A 2-D transpose is one cv2 call; a permutation that keeps the leading axis and swaps the last two
    (per-head kernels: (N, d, D) -> (N, D, d)) is one 2-D transpose per leading index; any other permutation
    (none of our formats has one) is numpy's strided copy."""
    shape = tuple(a.shape[p] for p in perm)
    if out is None:
        out = np.empty(shape, dtype=a.dtype)
    elif out.shape != shape or out.dtype.itemsize != a.dtype.itemsize or not out.flags.c_contiguous:
        raise ValueError(f"permute: out has shape {out.shape} ({out.dtype}), expected contiguous {shape} ({a.dtype})")
    if a.size == 0:
        return out
    perm = tuple(perm)
    if perm == (1, 0):
        _transpose_into(a, out)
    elif len(perm) == 3 and perm == (0, 2, 1):
        for i in range(a.shape[0]):
            _transpose_into(a[i], out[i])
    elif perm == tuple(range(a.ndim)):
        np.copyto(out.view(bits_dtype(a.dtype.itemsize)), a.view(bits_dtype(a.dtype.itemsize)))
    else:
        bits = bits_dtype(a.dtype.itemsize)
        np.copyto(out.view(bits), a.view(bits).transpose(perm))
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
