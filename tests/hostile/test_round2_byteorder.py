"""Byte order in the formats other than HDF5 and pickles (issue 17, item 4; Keras H5 and pickles have their own
tests in test_round2_h5.py and test_round2_pickles.py). GGUF files can be big-endian (gguf-py writes them on
request; only the header says so): refused with one line, by every command. safetensors is little-endian by its
specification, with no field to say otherwise: read as little-endian whatever the host."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from gemma_inspect.cli import main


@pytest.fixture
def big_endian_gguf(tmp_path):
    import gguf

    path = str(tmp_path / "big.gguf")
    w = gguf.GGUFWriter(path, "gemma2", endianess=gguf.GGUFEndian.BIG)
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_tensor("token_embd.weight", np.arange(8, dtype=np.float32).reshape(2, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(path, "rb") as f:
        assert f.read(8) == b"GGUF" + struct.pack(">I", 3)
    return path


def test_big_endian_gguf_is_refused_by_every_command(big_endian_gguf, tmp_path):
    for args in (["summary", big_endian_gguf], ["summary", big_endian_gguf, "--scan"],
                 ["diff", big_endian_gguf, big_endian_gguf],
                 ["convert", big_endian_gguf, str(tmp_path / "out"), "--to", "hf"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and r.stdout == "", (args, r.output)
        assert r.stderr == f"Error: {big_endian_gguf}: big-endian GGUF files are not supported\n", (args, r.stderr)
    assert not os.path.exists(tmp_path / "out")


def test_safetensors_reads_little_endian(tmp_path):
    from gemma_inspect.formats.safetensors_io import read_at

    values = np.array([1.5, -2.25, 3e-8, 65504.0], dtype="<f4")
    path = str(tmp_path / "x.bin")
    with open(path, "wb") as f:
        f.write(b"\0" * 8 + values.tobytes())
    for dtype, want in (("float32", values), ("float16", values[:2].astype("<f2"))):
        raw = want.astype(want.dtype.newbyteorder("<")).tobytes()
        with open(path, "wb") as f:
            f.write(b"\0" * 8 + raw)
        got = read_at(path, 8, len(raw), dtype, None, "x")
        assert got.dtype.isnative and np.array_equal(got, want.astype(got.dtype))
