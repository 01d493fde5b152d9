"""The converters' tile-by-tile transposes are bit-exact for every shape and element size."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from gemma_inspect.arrays import transpose2d, transpose_last2


@pytest.mark.parametrize("shape", [(2048, 1024), (300, 256), (256, 300), (1, 128), (128, 1), (130, 384), (5, 7),
                                   (0, 4)])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16, np.float64])
def test_transpose2d_equals_numpy_bit_for_bit(shape, dtype):
    a = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    a.reshape(-1)[::7] = np.nan if a.size else 0  # NaN payloads must travel unchanged too
    out = transpose2d(a)
    assert out.dtype == a.dtype and out.shape == shape[::-1] and out.flags.c_contiguous
    assert out.view(np.uint8).tobytes() == np.ascontiguousarray(a.T).view(np.uint8).tobytes()


def test_transpose_last2_per_head():
    a = np.random.default_rng(1).standard_normal((8, 256, 64)).astype(ml_dtypes.bfloat16)
    assert np.array_equal(transpose_last2(a).view(np.uint16), a.transpose(0, 2, 1).copy().view(np.uint16))


def test_transpose2d_refuses_other_ranks():
    with pytest.raises(ValueError, match=r"transpose2d needs a matrix, got shape \(2, 2, 2\)"):
        transpose2d(np.zeros((2, 2, 2)))
