"""tensorio.output: files written past the page cache (O_DIRECT) from our buffers and hashed while written.

Every test checks the bytes on disk against what was written, and the hash recorded while writing against the
hash of the finished file: the two ways of writing (direct, page cache) and the staging copy must never show."""

from __future__ import annotations

import errno
import hashlib
import json
import os

import numpy as np
import pytest
from blake3 import blake3

from gemma_inspect.arrays import aligned_empty
from gemma_inspect.tensorio import output as O
from gemma_inspect.tensorio.output import PAGE, open_output, output_session


def _direct_ok(folder) -> bool:
    """Whether this folder's filesystem takes O_DIRECT writes of a page (tmpfs on old kernels does not)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    path = os.path.join(folder, "probe")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    try:
        os.pwrite(fd, memoryview(aligned_empty(PAGE)), 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(path)


def _pieces(rng: np.random.Generator) -> list:
    """Pieces of every kind a writer hands over: bytes, page-aligned buffers (the pool's), unaligned slices, big
    and tiny, summing to an odd size."""
    out: list = [b"header!", bytes(rng.integers(0, 256, 4089, dtype=np.uint8))]
    for n in (3 * PAGE, 5 * PAGE + 17, 1, PAGE - 1, 2 * 1024 * 1024, 9 * 1024 * 1024 + 3, 12345):
        buf = aligned_empty(n + PAGE)
        buf[:] = rng.integers(0, 256, buf.nbytes, dtype=np.uint8)
        for start in (0, 7):
            out.append(memoryview(buf[start:start + n]))
    return out


@pytest.mark.parametrize("io", ["direct", "buffered", "auto"])
@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_sequential_writes_land_exactly_and_hash_while_written(tmp_path, io, algorithm):
    rng = np.random.default_rng(1)
    pieces = _pieces(rng)
    want = b"".join(bytes(p) for p in pieces)
    path = str(tmp_path / "out.bin")
    with output_session(io, algorithm) as session:
        with open_output(path, "wb", size_hint=len(want)) as f:
            for p in pieces:
                assert f.write(p) == memoryview(p).nbytes
            assert f.tell() == len(want)
    got = open(path, "rb").read()
    assert got == want
    expect = blake3(got).hexdigest() if algorithm == "blake3" else hashlib.sha256(got).hexdigest()
    assert session.digests == {os.path.abspath(path): (len(want), expect)}
    report = session.summary()
    assert report["direct_bytes"] + report["staged_bytes"] + report["buffered_bytes"] == len(want)
    if io == "buffered":
        assert report["direct_bytes"] == report["staged_bytes"] == 0
    elif _direct_ok(str(tmp_path)):
        assert report["direct_bytes"] + report["staged_bytes"] > 0 and report["fallback"] is None


def test_page_aligned_buffers_at_page_aligned_positions_go_straight_to_the_device(tmp_path):
    """A header padded to a page (as the safetensors writer pads a big file), then pool-like buffers: only the
    header is copied (staged), the tensors go from their own buffers; an unaligned buffer is staged."""
    if not _direct_ok(str(tmp_path)):
        pytest.skip("this filesystem takes no O_DIRECT writes")
    rng = np.random.default_rng(5)
    bufs = []
    for n in (3 * PAGE, 256 * PAGE, PAGE):
        b = aligned_empty(n)
        b[:] = rng.integers(0, 256, n, dtype=np.uint8)
        bufs.append(memoryview(b))
    odd = aligned_empty(2 * PAGE + 1)[1:]  # a page-sized run of bytes that does not start on a page
    odd[:] = 9
    pieces = [b"\x01" * 100, b" " * (PAGE - 100), *bufs, memoryview(odd), b"tail"]
    path = str(tmp_path / "out.bin")
    with output_session("direct", "blake3") as session:
        with open_output(path, "wb") as f:
            for p in pieces:
                f.write(p)
    want = b"".join(bytes(p) for p in pieces)
    assert open(path, "rb").read() == want
    assert session.summary() == {"mode": "direct", "direct_bytes": 260 * PAGE, "staged_bytes": 3 * PAGE,
                                 "buffered_bytes": 4, "fallback": None}


def test_writes_between_foreign_bytes_hash_the_whole_file(tmp_path):
    """An HDF5-like fill: another library wrote the file (metadata, holes); we write regions at increasing offsets,
    some page-aligned, some not; the digest covers the foreign bytes between and after them."""
    rng = np.random.default_rng(2)
    path = str(tmp_path / "f.h5")
    base = rng.integers(0, 256, 3 * 1024 * 1024, dtype=np.uint8)
    base.tofile(path)
    regions = [(PAGE, 200_000), (300_000, 65_536), (100 * PAGE, 4 * PAGE), (2 * 1024 * 1024 + 5, 100_001)]
    want = bytearray(base.tobytes())
    with output_session("direct", "blake3") as session:
        with open_output(path, "r+b", size_hint=10) as f:
            for off, n in regions:
                buf = aligned_empty(n)
                buf[:] = rng.integers(0, 256, n, dtype=np.uint8)
                f.seek(off)
                f.write(memoryview(buf))
                want[off:off + n] = buf.tobytes()
    got = open(path, "rb").read()
    assert got == bytes(want)
    assert session.digests[os.path.abspath(path)] == (len(want), blake3(got).hexdigest())


def test_out_of_order_writes_give_the_hash_up_not_the_bytes(tmp_path):
    path = str(tmp_path / "f.bin")
    np.zeros(1 << 20, dtype=np.uint8).tofile(path)
    a, b = aligned_empty(2 * PAGE), aligned_empty(PAGE)
    a[:], b[:] = 1, 2
    with output_session("direct", "blake3") as session:
        with open_output(path, "r+b") as f:
            f.seek(8 * PAGE)
            f.write(memoryview(a))
            f.seek(PAGE)
            f.write(memoryview(b))
    got = np.fromfile(path, dtype=np.uint8)
    assert (got[8 * PAGE:10 * PAGE] == 1).all() and (got[PAGE:2 * PAGE] == 2).all()
    assert int(got.sum()) == 2 * PAGE + 2 * PAGE  # nothing else changed
    assert session.digests == {}  # the manifest hashes this file once it is finished


def test_a_filesystem_refusing_direct_writes_gets_every_byte_through_the_page_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    pieces = _pieces(rng)
    want = b"".join(bytes(p) for p in pieces)
    real_pwrite = os.pwrite
    direct_fds: set[int] = set()
    real_open = os.open

    def fake_open(path, flags, *a):
        fd = real_open(path, flags & ~getattr(os, "O_DIRECT", 0), *a)
        if flags & getattr(os, "O_DIRECT", 0):
            direct_fds.add(fd)
        return fd

    calls = {"n": 0}

    def fake_pwrite(fd, data, pos):
        if fd in direct_fds:
            calls["n"] += 1
            if calls["n"] > 2:  # the first writes go through; then the filesystem changes its mind
                raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, pos)

    monkeypatch.setattr(os, "O_DIRECT", getattr(os, "O_DIRECT", 0o40000), raising=False)
    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "pwrite", fake_pwrite)
    path = str(tmp_path / "out.bin")
    with output_session("direct", "blake3") as session:
        with open_output(path, "wb") as f:
            for p in pieces:
                f.write(p)
    got = open(path, "rb").read()
    assert got == want
    assert session.digests[os.path.abspath(path)] == (len(want), blake3(want).hexdigest())
    assert session.fallback == "the filesystem refused a direct write (Invalid argument)"
    assert session.summary()["buffered_bytes"] > 0


def test_no_o_direct_on_this_system_is_reported_and_written_normally(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "O_DIRECT", raising=False)
    path = str(tmp_path / "out.bin")
    buf = aligned_empty(4 * PAGE)
    buf[:] = 7
    with output_session("auto", None) as session:
        with open_output(path, "wb") as f:
            f.write(memoryview(buf))
    assert open(path, "rb").read() == bytes(buf)
    assert session.fallback == "this system has no O_DIRECT"
    assert session.digests == {}  # no hash asked for
    assert session.summary() == {"mode": "auto", "direct_bytes": 0, "staged_bytes": 0,
                                 "buffered_bytes": 4 * PAGE, "fallback": "this system has no O_DIRECT"}


def test_auto_writes_small_files_through_the_page_cache(tmp_path):
    with output_session("auto", None) as session:
        with open_output(str(tmp_path / "small"), "wb", size_hint=O.DIRECT_MIN - 1) as f:
            f.write(memoryview(aligned_empty(2 * PAGE)))
    assert session.summary()["buffered_bytes"] == 2 * PAGE and session.summary()["direct_bytes"] == 0


def test_an_abandoned_file_is_closed_and_not_hashed(tmp_path):
    path = str(tmp_path / "out.bin")
    with output_session("direct", "blake3") as session:
        with pytest.raises(RuntimeError):
            with open_output(path, "wb") as f:
                f.write(b"x" * 10_000)
                raise RuntimeError("writer failed")
        assert f.closed
    assert session.digests == {}


def test_outside_a_session_a_file_is_written_normally(tmp_path):
    path = str(tmp_path / "out.bin")
    with open_output(path, "wb") as f:
        f.write(b"abc")
        f.write(memoryview(np.arange(5, dtype=np.float32)))
    assert open(path, "rb").read() == b"abc" + np.arange(5, dtype=np.float32).tobytes()


def test_safetensors_data_of_a_big_file_starts_on_a_page_and_loads(tmp_path):
    from safetensors.numpy import load_file

    from gemma_inspect.formats.safetensors_io import SafetensorsWriter

    rng = np.random.default_rng(4)
    arrays = {"a.weight": rng.standard_normal((1024, 4096), dtype=np.float32),  # 16 MiB: written direct
              "b.norm": rng.standard_normal(640, dtype=np.float32),
              "c.weight": rng.standard_normal((33, 17), dtype=np.float32)}
    path = str(tmp_path / "model.safetensors")
    with output_session("auto", "blake3") as session:
        with SafetensorsWriter(path, [(k, "float32", v.shape) for k, v in arrays.items()], {"format": "pt"}) as w:
            for k, v in arrays.items():
                w.add(k, [memoryview(v.reshape(-1).view(np.uint8))])
    header_len = int.from_bytes(open(path, "rb").read(8), "little")
    assert (8 + header_len) % PAGE == 0
    loaded = load_file(path)
    assert set(loaded) == set(arrays)
    for k, v in arrays.items():
        assert np.array_equal(loaded[k], v)
    assert session.digests[os.path.abspath(path)][1] == blake3(open(path, "rb").read()).hexdigest()
    # a small file keeps the reference writer's 8-byte padding
    small = str(tmp_path / "small.safetensors")
    with SafetensorsWriter(small, [("c.weight", "float32", (33, 17))]) as w:
        w.add("c.weight", [arrays["c.weight"].tobytes()])
    n = int.from_bytes(open(small, "rb").read(8), "little")
    assert (8 + n) % 8 == 0 and (8 + n) % PAGE != 0
    json.loads(open(small, "rb").read()[8:8 + n])


def test_keras_weights_datasets_of_64k_and_more_start_on_a_page(tmp_path):
    from gemma_inspect.formats.keras_h5 import ALIGN_THRESHOLD, create_h5

    class Src:
        def load(self):  # pragma: no cover - only scalars are loaded here
            raise AssertionError

    entries = [(f"layers/l{i}/vars/0", f"l{i}", None, shape, "bfloat16", Src())
               for i, shape in enumerate([(256, 256), (7,), (640,), (1000, 33), (64, 512)])]
    offsets = create_h5(str(tmp_path / "w.h5"), entries)
    for path, _, _, shape, _, _ in entries:
        nbytes = int(np.prod(shape)) * 2
        if nbytes >= ALIGN_THRESHOLD:
            assert offsets[path] % PAGE == 0, path


# ----------------------------------------------------------------------------- whole conversions, written direct
@pytest.mark.parametrize("family", ["gemma", "gemma3"])
def test_conversions_written_direct_are_byte_exact_and_match_their_manifests(tiny_models, tmp_path, monkeypatch,
                                                                            family):
    """HF -> Keras -> HF and HF -> HF with every file written direct (tiny files too), through chunks far smaller
    than the tensors: the source's bytes, a manifest hashed from the buffers that the finished files match, and
    the same manifest digests as the page-cache path."""
    from gemma_inspect.convert import WriteOptions, convert
    from gemma_inspect.formats import load
    from gemma_inspect.manifest import check, read
    from gemma_inspect.tensorio import pipeline

    hf = tiny_models.get(family, "hf")
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 2048)
    outs = {}
    for name, src, to, io in [("keras", hf, "keras", "direct"), ("back", None, "hf", "direct"),
                              ("hf", hf, "hf", "direct"), ("hf-buffered", hf, "hf", "buffered")]:
        outs[name] = str(tmp_path / name)
        report = convert(src or outs["keras"], outs[name], to, WriteOptions(io=io))
        assert report["io"]["mode"] == io
        total = sum(report["io"][k] for k in ("direct_bytes", "staged_bytes", "buffered_bytes"))
        assert total >= report["bytes_written"]  # every tensor byte, plus headers, through tensorio.output
        if io == "direct" and _direct_ok(str(tmp_path)):
            assert report["io"]["direct_bytes"] + report["io"]["staged_bytes"] > 0
        checked = check(outs[name])
        assert checked["identical"], checked
    source = load(hf)
    for name in ("keras", "back", "hf"):
        got = load(outs[name])
        for t, ref in source.tensors.items():
            assert np.array_equal(got.tensors[t].load(), ref.load()), (name, t)
    digests = {f["name"]: f["blake3"] for f in read(os.path.join(outs["hf"], "gemma-inspect-manifest.json"))["files"]}
    buffered = {f["name"]: f["blake3"]
                for f in read(os.path.join(outs["hf-buffered"], "gemma-inspect-manifest.json"))["files"]}
    assert digests == buffered


def test_convert_refuses_an_unknown_io_mode(tiny_models, tmp_path):
    from click.testing import CliRunner

    from gemma_inspect.cli import main
    from gemma_inspect.convert import WriteOptions, convert
    from gemma_inspect.errors import InputError

    with pytest.raises(InputError, match="unknown io mode 'fast'; choose from auto, direct, buffered"):
        convert(tiny_models.get("gemma", "hf"), str(tmp_path / "x"), "keras", WriteOptions(io="fast"))
    res = CliRunner().invoke(main, ["convert", tiny_models.get("gemma", "hf"), str(tmp_path / "y"), "--to", "keras",
                                    "--io", "fast"])
    assert res.exit_code == 2 and "'fast' is not one of 'auto', 'direct', 'buffered'" in res.output
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")


def test_sessions_of_two_threads_keep_their_files_apart(tmp_path):
    import threading

    results = {}

    def run(name, io):
        with output_session(io, "blake3") as session:
            with open_output(str(tmp_path / name), "wb") as f:
                buf = aligned_empty(8 * PAGE)
                buf[:] = ord(name[0])
                f.write(memoryview(buf))
        results[name] = session

    threads = [threading.Thread(target=run, args=(n, io)) for n, io in (("a", "direct"), ("b", "buffered"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert list(results["a"].digests) == [os.path.abspath(tmp_path / "a")]
    assert list(results["b"].digests) == [os.path.abspath(tmp_path / "b")]
    assert results["b"].summary()["buffered_bytes"] == 8 * PAGE
    assert open(tmp_path / "a", "rb").read() == b"a" * 8 * PAGE


def test_convert_says_when_the_output_went_through_the_page_cache_after_all(tiny_models, tmp_path, monkeypatch):
    from gemma_inspect.convert import WriteOptions, convert

    monkeypatch.delattr(os, "O_DIRECT", raising=False)
    report = convert(tiny_models.get("gemma", "hf"), str(tmp_path / "k"), "keras", WriteOptions(io="direct"))
    assert report["io"]["fallback"] == "this system has no O_DIRECT"
    assert report["io"]["direct_bytes"] == report["io"]["staged_bytes"] == 0
    assert "written through the page cache: this system has no O_DIRECT" in report["notes"]
    for io in ("buffered", "auto"):  # asked for, or not asked for: nothing to say (auto's JSON says why)
        quiet = convert(tiny_models.get("gemma", "hf"), str(tmp_path / io), "keras", WriteOptions(io=io))
        assert not any("page cache" in n for n in quiet["notes"])


def test_convert_says_when_direct_writing_was_given_up_midway(tiny_models, tmp_path, monkeypatch):
    from gemma_inspect.convert import WriteOptions, convert
    from gemma_inspect.formats import load

    real_open, real_pwrite, direct_fds, calls = os.open, os.pwrite, set(), {"n": 0}
    o_direct = getattr(os, "O_DIRECT", 0o40000)

    def fake_open(path, flags, *a):
        fd = real_open(path, flags & ~o_direct, *a)
        if flags & o_direct:
            direct_fds.add(fd)
        return fd

    def fake_pwrite(fd, data, pos):
        if fd in direct_fds:
            calls["n"] += 1
            if calls["n"] > 1:
                raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, pos)

    monkeypatch.setattr(os, "O_DIRECT", o_direct, raising=False)
    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "pwrite", fake_pwrite)
    hf = tiny_models.get("gemma", "hf")
    report = convert(hf, str(tmp_path / "k"), "keras", WriteOptions(io="direct"))
    assert report["io"]["direct_bytes"] + report["io"]["staged_bytes"] > 0 and report["io"]["buffered_bytes"] > 0
    assert ("written past the page cache until the filesystem refused a direct write (Invalid argument); the rest "
            "through it") in report["notes"]
    got, src = load(str(tmp_path / "k")), load(hf)
    for name, ref in src.tensors.items():
        assert np.array_equal(got.tensors[name].load(), ref.load()), name
