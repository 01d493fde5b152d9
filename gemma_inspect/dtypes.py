"""Dtype names and what each table of them means: one meaning per name. A leaf: it imports nothing of the package
and numpy only when `numpy_dtype` is called, so that `spec` and `checkpoint` stay light to import.

A dtype is named as numpy names it ("float32", "bfloat16", ...); a quantized tensor's dtype is its storage type's
name (GGUF "Q8_0", "Q4_K", ...), which no table here lists.
"""

from __future__ import annotations

from typing import Any

# Bytes per element of every dtype a tensor can be stored in or a checkpoint can declare.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8, "int8": 1, "uint8": 1, "int16": 2,
               "int32": 4, "int64": 8, "bool": 1}

# Stored dtypes that are plain floats: a tensor stored in one of them is no quantization (every other stored dtype
# of a weight, GGUF Q8_0, Q4_K, ..., is), and its bytes can be streamed and cast as they lie in the file.
FLOAT_DTYPES = ("float32", "bfloat16", "float16")

# The float dtypes a conversion casts a tensor into (`tensorio.cast_array`): what a format that stores floats
# only writes a tensor in.
CAST_DTYPES = ("float32", "bfloat16", "float16")

# Quantizations a conversion can write (GGUF's; a format that stores floats only refuses them).
QUANT_DTYPES = ("q8_0",)

# `convert --dtype`: keep every tensor as stored (bit-exact), cast every float tensor, or quantize.
KEEP = "keep"
CONVERT_DTYPES = (KEEP, *CAST_DTYPES, *QUANT_DTYPES)


def numpy_dtype(name: str) -> Any:
    """numpy's dtype for a dtype name (bfloat16 is ml_dtypes')."""
    import numpy as np

    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
