"""Hostile GGUF files: the header walked field by field (lengths, counts, value types, tensor types,
dimensions, offsets) and each field set to hostile values; truncations, byte flips; metadata of the wrong
type. Every variant is read and used (tensors dequantized, vocabulary rebuilt) through the library."""

from __future__ import annotations

import random

import pytest

from gemma_inspect.convert import WriteOptions, convert

from files import read_bytes

from .conftest import sweep
from .variants import gguf_variants

N = 16


@pytest.fixture(scope="module")
def gguf_files(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-gguf")
    out = {}
    for dtype in ("float32", "q8_0"):
        dest = str(root / f"gemma3-{dtype}.gguf")
        convert(tiny_models.get("gemma3"), dest, "gguf", WriteOptions(dtype=dtype))
        out[dtype] = dest
    return out


@pytest.mark.parametrize("dtype", ("float32", "q8_0"))
def test_gguf(gguf_files, copy_dir, tmp_path, dtype):
    path = copy_dir(gguf_files[dtype], "model.gguf")
    variants = gguf_variants("", read_bytes(path), random.Random(21), N, fields_per_run=N)
    sweep(f"gguf ({dtype})", path, variants, str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(22, 25))
def test_larger_sweep(gguf_files, copy_dir, tmp_path, seed):
    for dtype, src in gguf_files.items():
        path = copy_dir(src, f"model-{dtype}.gguf")
        sweep(f"gguf ({dtype})", path, gguf_variants("", read_bytes(path), random.Random(seed), 150, 400), str(tmp_path))


def test_absurd_block_count_is_refused_before_per_layer_tables(gguf_files, copy_dir):
    """Found by the slow sweep: one flipped byte made block_count 9,043,975, and building the per-layer tables
    of that many layers ran for minutes."""
    import struct

    from gemma_inspect.errors import InputError
    from gemma_inspect.formats import load

    from .variants import gguf_fields

    path = copy_dir(gguf_files["q8_0"], "model.gguf")
    data = bytearray(read_bytes(path))
    fields, _ = gguf_fields(bytes(data))
    at = next(offset for label, offset, _ in fields if label == "value type of gemma3.block_count") + 4
    struct.pack_into("<I", data, at, 9_043_975)
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(InputError, match=r"metadata 'gemma3.block_count' is 9043975, more than the 1000 this "
                                         r"tool accepts"):
        load(path)
