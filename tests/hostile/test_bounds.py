"""Bounds: files that claim huge lengths, counts or sizes - or are huge in ways that cost Python far more memory
than their bytes - are refused fast and with small peak memory. Each command runs in its own process; its
peak RSS (from wait4) is compared with the same command on a normal tiny checkpoint. Big files are sparse
where the format allows, so the suite writes little."""

from __future__ import annotations

import io
import os
import shutil
import struct
import zipfile

import pytest

from .round2 import run as measured

MB = 1024 * 1024
SLACK = 60 * MB  # what a refusal may cost above the baseline (the first megabytes read, Python's arenas)


def run(args: list[str], cwd: str) -> tuple[int, str, float, int]:
    """(exit code, stderr, seconds, peak RSS in bytes) of `python -m gemma_inspect ARGS` in a fresh process,
    its address space capped at 8 GB so that a regression fails the test instead of the machine (round2.run:
    the child reports its own VmHWM, since ru_maxrss of a forked child counts this large test process's pages)."""
    r = measured(args, cwd, timeout=300)
    return r.code, r.err, r.seconds, r.rss


def refused(args: list[str], cwd: str, baseline: int, message: str, seconds: float = 15.0,
            slack: int = SLACK) -> int:
    code, err, secs, rss = run(args, cwd)
    assert code == 2, (code, err)
    assert err.startswith("Error: ") and err.count("\n") == 1 and message in err, err
    assert secs < seconds, f"took {secs:.1f} s"
    assert rss < baseline + slack, f"peak RSS {rss / MB:.0f} MB, baseline {baseline / MB:.0f} MB"
    return rss


def sparse(path: str, size: int, head: bytes, tail: bytes = b"") -> str:
    """A file of `size` bytes: `head`, zeros (a hole, no disk used), `tail` at the end."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
        if tail:
            f.seek(size - len(tail))
            f.write(tail)
    return path


@pytest.fixture(scope="module")
def hf_base(tiny_models):
    return tiny_models.get("gemma2", "hf")


@pytest.fixture(scope="module")
def baseline(hf_base, tiny_models, tmp_path_factory):
    """Peak RSS of `summary` and of `convert --to gguf` on the normal tiny HF checkpoint."""
    out = tmp_path_factory.mktemp("baseline")
    code, err, _, summary_rss = run(["summary", hf_base], str(out))
    assert code == 0, err
    code, err, _, convert_rss = run(["convert", hf_base, str(out / "x.gguf"), "--to", "gguf"], str(out))
    assert code == 0, err
    code, err, _, _ = run(["convert", hf_base, str(out / "x.ckpt"), "--to", "gemma-pytorch"], str(out))
    assert code == 0, err
    code, err, _, ckpt_rss = run(["summary", str(out / "x.ckpt")], str(out))  # imports torch
    assert code == 0, err
    code, err, _, keras_rss = run(["summary", tiny_models.get("gemma2", "keras", tokenizer=False)], str(out))
    assert code == 0, err
    return {"summary": summary_rss, "convert": convert_rss, "ckpt": ckpt_rss, "keras": keras_rss}


def hf_copy(src: str, tmp_path, name: str = "hf") -> str:
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- safetensors and JSON
def test_safetensors_header_length_beyond_everything(hf_base, baseline, tmp_path):
    d = hf_copy(hf_base, tmp_path)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", 2**60) + b"{}")
    refused(["summary", d], str(tmp_path), baseline["summary"], "exceeds the 100 MB limit", 5)


def test_safetensors_header_of_empty_arrays(hf_base, baseline, tmp_path):
    """99 MB of `[[],[],...]`: Python would build 33 million lists (2 GB); refused after its first megabytes."""
    d = hf_copy(hf_base, tmp_path)
    header = b'{"a":[' + b"[]," * (33 * MB) + b'[]]}'
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
    refused(["summary", d], str(tmp_path), baseline["summary"],
            "safetensors header holds more than the 1,200,000 JSON values this tool accepts", 5)


def test_safetensors_header_of_a_million_tensors(hf_base, baseline, tmp_path):
    d = hf_copy(hf_base, tmp_path)
    header = b"{" + b",".join(b'"t%d":{"dtype":"F32","shape":[1],"data_offsets":[0,0]}' % i
                              for i in range(1_000_000)) + b"}"
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
    refused(["summary", d], str(tmp_path), baseline["summary"], "JSON values this tool accepts", 5)


@pytest.mark.parametrize("name,message", [
    ("config.json", "config.json holds more than the 1,000,000 JSON values this tool accepts"),
    ("model.safetensors.index.json", "safetensors index holds more than the 1,000,000 JSON values"),
])
def test_json_of_empty_arrays(hf_base, baseline, tmp_path, name, message):
    d = hf_copy(hf_base, tmp_path)
    if name == "model.safetensors.index.json":  # the index as the weights' only description (beside the single
        os.remove(os.path.join(d, "model.safetensors"))  # file it is refused as ambiguous before it is parsed)
    with open(os.path.join(d, name), "wb") as f:
        f.write(b"[" + b"[]," * (30 * MB) + b"[]]")
    refused(["summary", d], str(tmp_path), baseline["summary"], message, 5)


def test_json_over_the_size_limit_is_not_read(hf_base, baseline, tmp_path):
    d = hf_copy(hf_base, tmp_path)
    sparse(os.path.join(d, "config.json"), 200 * MB, b"{")
    refused(["summary", d], str(tmp_path), baseline["summary"], "bytes, over the 100 MB limit", 5)


def test_config_linked_to_dev_zero(hf_base, baseline, tmp_path):
    """/dev/zero reports size 0 and never ends: reading it "whole" would fill memory."""
    d = hf_copy(hf_base, tmp_path)
    os.remove(os.path.join(d, "config.json"))
    os.symlink("/dev/zero", os.path.join(d, "config.json"))
    refused(["summary", d], str(tmp_path), baseline["summary"], "is a symlink to /dev/zero, outside the checkpoint", 5)


# ----------------------------------------------------------------------------- GGUF
def _gguf_head(n_tensors: int, kvs: list[bytes]) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs)) + b"".join(kvs)


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


@pytest.mark.parametrize("case,message", [
    ("tensor count", "tensor count 1099511627776 is over the limit of 100000"),
    ("nested arrays", "more than 100000 nested arrays"),
    ("strings", "runs past the 100 MB limit of a GGUF header"),
    ("array of 2**40 floats", "truncated: 1099511627776 elements"),
])
def test_gguf_counts(baseline, tmp_path, case, message):
    path = str(tmp_path / "crafted.gguf")
    if case == "tensor count":
        sparse(path, 4096, _gguf_head(2**40, []))
    elif case == "nested arrays":
        # 8 million empty arrays (12 zero bytes each: type UINT8, count 0) in a 96 MB hole: 900 MB as numpy.
        kv = _key("general.evil") + struct.pack("<IIQ", 9, 9, 8_000_000)
        sparse(path, 97 * MB, _gguf_head(0, [kv]))
    elif case == "strings":
        # 128 million empty strings (8 zero bytes each) in a 1 GB hole.
        kv = _key("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 128 * MB)
        sparse(path, 1024 * MB + 64, _gguf_head(0, [kv]))
    else:
        kv = _key("general.evil") + struct.pack("<IIQ", 9, 6, 2**40)
        sparse(path, 4096, _gguf_head(0, [kv]))
    refused(["summary", path], str(tmp_path), baseline["summary"], message, 10)


# ----------------------------------------------------------------------------- Keras H5
def test_h5_huge_declared_datasets_and_attributes(tiny_models, baseline, tmp_path):
    import h5py
    import numpy as np

    src = tiny_models.get("gemma2", "keras", tokenizer=False)
    cases = {
        # 4 TB declared, never allocated: no offset to read from.
        "unallocated": ("claims", lambda f, p: (f.__delitem__(p), f.create_dataset(p, shape=(2**20, 2**20),
                                                                                   dtype="float32"))),
        # 4 GB declared, stored gzip-compressed chunks of zeros: never written, so nothing stored.
        "bomb": ("chunks missing or compressed beyond belief", lambda f, p: (f.__delitem__(p), f.create_dataset(
            p, shape=(2**20, 2**10), dtype="float32", chunks=(1024, 1024), compression="gzip"))),
    }
    for name, (message, edit) in cases.items():
        d = str(tmp_path / name)
        shutil.copytree(src, d)
        with h5py.File(os.path.join(d, "model.weights.h5"), "a") as f:
            edit(f, "layers/reversible_embedding/vars/0")
        refused(["summary", d], str(tmp_path), baseline["keras"], message, 10)
    d = str(tmp_path / "attribute")
    shutil.copytree(src, d)
    with h5py.File(os.path.join(d, "model.weights.h5"), "a", libver="latest") as f:
        f.move("layers/rms_normalization/vars/0", "tmp")
        del f["layers/rms_normalization/vars"]
        g = f.create_group("layers/rms_normalization/vars")
        f.move("tmp", "layers/rms_normalization/vars/0")
        g.attrs["name"] = np.zeros(4 * MB)  # 32 MB in dense attribute storage
    # HDF5 reads an attribute whole when it is opened (before its size can be asked), so this one costs its own
    # 32 MB (twice, with HDF5's copy): bounded by the file's size, not amplified, and refused before numpy adds more.
    refused(["summary", d], str(tmp_path), baseline["keras"], "holds 33554432 bytes; expected a short string", 10,
            slack=SLACK + 2 * 32 * MB)


# ----------------------------------------------------------------------------- tokenizer files
def test_sentencepiece_model_of_tiny_pieces(hf_base, baseline, tmp_path):
    """25 million empty pieces (2 bytes each): refused from a byte count before protobuf builds them."""
    d = hf_copy(hf_base, tmp_path)
    with open(os.path.join(d, "tokenizer.model"), "wb") as f:
        f.write(b"\x0a\x00" * (25 * MB))
    refused(["convert", d, str(tmp_path / "out.gguf"), "--to", "gguf"], str(tmp_path), baseline["convert"],
            "more than the 2,000,000 this tool accepts", 20, slack=SLACK + 50 * MB)
    assert not os.path.exists(tmp_path / "out.gguf")


def test_tokenizer_json_of_empty_arrays(hf_base, baseline, tmp_path):
    d = hf_copy(hf_base, tmp_path)
    os.remove(os.path.join(d, "tokenizer.model"))
    with open(os.path.join(d, "tokenizer.json"), "wb") as f:
        f.write(b'{"model": [' + b"[]," * (30 * MB) + b"[]]}")
    refused(["convert", d, str(tmp_path / "out.gguf"), "--to", "gguf"], str(tmp_path), baseline["convert"],
            "tokenizer.json holds more than the 4,000,000 JSON values this tool accepts", 20)


# ----------------------------------------------------------------------------- pickles
def _zip_ckpt(pickle_bytes: bytes, records: dict[str, bytes] | None = None, compress: bool = False) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/byteorder", "little")
        for k, v in (records or {}).items():
            z.writestr(f"archive/data/{k}", v)
    return out.getvalue()


@pytest.mark.parametrize("case,message", [
    ("zip pickle of empty lists", "the pickle has more than 1000000 opcodes"),
    ("legacy pickle of empty lists", "the pickle has more than 1000000 opcodes"),
    ("compressed record", "record 'archive/data.pkl' is compressed"),
])
def test_pickle_bombs(baseline, tmp_path, case, message):
    # EMPTY_LIST, APPEND pairs: 2 bytes of pickle, a 56-byte list each (20 million: 1.1 GB).
    lists = b"\x80\x02]" + b"]a" * (20 * MB) + b"."
    path = str(tmp_path / "evil.ckpt")
    with open(path, "wb") as f:
        if case == "zip pickle of empty lists":
            f.write(_zip_ckpt(lists))
        elif case == "legacy pickle of empty lists":
            f.write(lists)
        else:  # 256 MB of zeros deflated to 250 KB
            import pickle

            f.write(_zip_ckpt(pickle.dumps({"model_state_dict": {}}), {"0": bytes(256 * MB)}, compress=True))
    refused(["summary", path], str(tmp_path), baseline["ckpt"], message, 30)
