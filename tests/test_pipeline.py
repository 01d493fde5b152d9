"""The conversion's byte pipeline: library layout kernels, casts into reused buffers, tensors streamed band by band
through a bounded buffer pool - exact bytes whatever the chunk, memory bounded by the chunk, not by the tensor."""

from __future__ import annotations

import os
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

from gemma_inspect import convert as convert_module
from gemma_inspect.arrays import Layout, cast_into, permute, transpose2d, transpose_last2
from gemma_inspect.checkpoint import TensorRef
from gemma_inspect.convert import Buffers, BufferPool, Pooled, Span, convert, tensor_pieces
from gemma_inspect.formats import load
from gemma_inspect.formats.keras import stored_layout, write_layout
from gemma_inspect.tensorio import pipeline

BF16 = np.dtype(ml_dtypes.bfloat16)
ALL_DTYPES = [np.float32, BF16, np.float16, np.float64, np.int8, np.uint8, np.int16, np.int32, np.int64]


def _values(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    a = rng.standard_normal(shape).astype(dtype)
    flat = a.reshape(-1)
    if flat.size:
        flat[::7] = np.nan  # NaN payloads, infinities and zeros' signs must travel unchanged
        flat[1::11] = -np.inf
        flat[2::13] = -0.0
    return a


def _bytes(a):
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


# ----------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(64, 96), (1, 300), (300, 1), (97, 61), (0, 5), (128, 2048)])
def test_transpose_into_a_reused_buffer_equals_numpy(dtype, shape):
    a = _values(shape, dtype)
    out = np.full(shape[::-1], 0x55, dtype=np.uint8 if np.dtype(dtype).itemsize == 1 else dtype)
    out = out.view(dtype) if out.dtype != np.dtype(dtype) else out
    got = transpose2d(a, out)
    assert got is out
    assert _bytes(got) == _bytes(a.T)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_permutations_equal_numpy(dtype):
    a = _values((3, 40, 24), dtype, seed=1)
    for perm in [(0, 2, 1), (2, 0, 1), (1, 0, 2), (2, 1, 0), (0, 1, 2)]:
        assert _bytes(permute(a, perm)) == _bytes(a.transpose(perm)), perm
    assert _bytes(transpose_last2(a)) == _bytes(a.transpose(0, 2, 1))
    strided = _values((50, 30), dtype)[::2, 3:]  # a view that is not contiguous
    assert _bytes(transpose2d(strided)) == _bytes(strided.T)
    with pytest.raises(ValueError, match=r"permute: out has shape \(2, 2\)"):
        permute(a, (0, 2, 1), np.empty((2, 2), dtype=dtype))


def test_transposes_read_a_read_only_source_and_write_only_into_out():
    a = _values((33, 70), BF16)
    a.flags.writeable = False  # a read-only memory map of the source file
    out = np.zeros((70, 33), dtype=BF16)
    assert transpose2d(a, out) is out and _bytes(out) == _bytes(a.T)
    heads = _values((4, 16, 24), np.float64)  # 8-byte elements: two 4-byte channels moved together
    out = np.zeros((4, 24, 16), dtype=np.float64)
    assert transpose_last2(heads, out) is out and _bytes(out) == _bytes(heads.transpose(0, 2, 1))


def test_a_bfloat16_conversion_imports_neither_torch_nor_ml_dtypes(tiny_models, tmp_path):
    """Re-laying-out bfloat16 moves uint16s with cv2: importing torch (2-3 s) or ml_dtypes (0.8 s of CPU with
    ml_dtypes 0.7) would cost a conversion more than its whole re-layout of a 2B model."""
    import subprocess
    import sys

    src = tiny_models.get("gemma2", "keras", "bfloat16")
    code = ("import sys; from gemma_inspect.convert import convert; convert(sys.argv[1], sys.argv[2], 'hf'); "
            "convert(sys.argv[2], sys.argv[3], 'keras'); "
            "print(sorted(m for m in ('torch', 'ml_dtypes', 'cv2') if m in sys.modules))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code, src, str(tmp_path / "hf"), str(tmp_path / "k")],
                       capture_output=True, text=True, cwd=root, env=dict(os.environ, PYTHONPATH=root))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[-2] == "['cv2']"
    assert load(str(tmp_path / "k")).tensors.keys() == load(src).tensors.keys()


def test_keras_layouts_equal_the_reference_reshapes_for_every_role():
    from gemma_inspect.tiny import tiny_spec

    spec = tiny_spec("gemma2")
    n, kv, hd, d, f = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim, spec.hidden_size, \
        spec.intermediate_size
    for dtype in (np.float32, BF16, np.float16):
        q = _values((n * hd, d), dtype)  # canonical [N*D, d]
        keras_q = q.reshape(n, hd, d).transpose(0, 2, 1)  # (N, d, D)
        assert _bytes(write_layout(spec, "q", q.shape).apply(q)) == _bytes(keras_q)
        assert _bytes(stored_layout("heads_in", keras_q.shape).apply(np.ascontiguousarray(keras_q))) == _bytes(q)
        k = _values((kv * hd, d), dtype, seed=2)
        assert _bytes(write_layout(spec, "k", k.shape).apply(k)) == _bytes(k.reshape(kv, hd, d).transpose(0, 2, 1))
        o = _values((d, n * hd), dtype, seed=3)  # canonical [d, H*D] -> Keras (H, D, d)
        keras_o = o.T.reshape(n, hd, d)
        assert _bytes(write_layout(spec, "o", o.shape).apply(o)) == _bytes(keras_o)
        assert _bytes(stored_layout("heads_out", keras_o.shape).apply(np.ascontiguousarray(keras_o))) == _bytes(o)
        g = _values((f, d), dtype, seed=4)
        assert _bytes(write_layout(spec, "gate", g.shape).apply(g)) == _bytes(g.T)
        assert write_layout(spec, "attn_norm", (d,)) is None and stored_layout("same", (d,)) is None


CASTS = [(np.float32, BF16), (BF16, np.float32), (np.float32, np.float16), (np.float16, np.float32),
         (BF16, np.float16), (np.float16, BF16), (BF16, BF16)]


@pytest.mark.parametrize("src,dst", CASTS, ids=lambda d: np.dtype(d).name)
def test_cast_into_equals_numpy_astype(src, dst):
    a = _values((3000,), np.float32)
    a[3:9] = [1e-40, -1e-45, 7e4, -1e5, 3.0e38, np.float32(1) + np.float32(2 ** -9)]  # subnormal, overflow, ties
    with np.errstate(over="ignore"):
        a = a.astype(src)
    out = np.empty(a.shape, dtype=dst)
    with np.errstate(all="ignore"):
        want = a.astype(np.float32).astype(dst) if np.float32 not in (np.dtype(src), np.dtype(dst)) else a.astype(dst)
    assert _bytes(cast_into(a, out)) == _bytes(want)


# ----------------------------------------------------------------------------- the pool
def test_pool_reuses_its_buffers_and_never_holds_more_than_count():
    pool = BufferPool(size=1000, count=2)
    a, b = pool.get(10), pool.get(1000)
    assert a.nbytes == b.nbytes == 1000 and pool.allocated_bytes == 2000
    assert a.ctypes.data % 4096 == 0  # page-aligned
    import threading

    stop = threading.Event()
    stop.set()
    with pytest.raises(pipeline._Stopped):  # all out: waits, and gives up once told to stop
        pool.get(10, stop)
    piece = Pooled(pool, a, 7)
    assert piece.nbytes == 7
    piece.release()
    piece.release()  # idempotent
    assert pool.get(10) is a  # the same memory again, not a fresh allocation
    pool.put(b)
    big = pool.get(5000)  # a larger need replaces a buffer, it does not add one
    assert big.nbytes == 5000 and pool.allocated_bytes == 6000


def _file_ref(tmp_path, arr, stored: Layout | None = None, name="t"):
    """A TensorRef whose bytes lie in a file, as the readers make them (HF: span; Keras: stored + Layout)."""
    path = str(tmp_path / f"{name}.bin")
    header = b"\x00" * 24  # not at offset 0, as inside a real file
    with open(path, "wb") as f:
        f.write(header)
        f.write(_bytes(arr))
    dtype = {np.dtype(np.float32): "float32", BF16: "bfloat16", np.dtype(np.float16): "float16"}[arr.dtype]
    span = (path, len(header), arr.nbytes)
    if stored is None:
        return TensorRef(name, arr.shape, dtype, lambda: arr.copy(), nbytes=arr.nbytes, span=span)
    return TensorRef(name, stored.shape, dtype, lambda: stored.apply(arr), nbytes=arr.nbytes,
                     stored=(*span, stored))


def _streamed(ref, dtype, layout, chunk):
    buffers = Buffers(chunk, 2)
    out = bytearray()
    for piece in tensor_pieces(ref, dtype, layout, buffers):
        if isinstance(piece, Span):
            with open(piece.path, "rb") as f:
                f.seek(piece.offset)
                out += f.read(piece.nbytes)
        elif isinstance(piece, Pooled):
            out += piece.view
            piece.release()
        else:
            out += bytes(piece)
    return bytes(out), buffers


@pytest.mark.parametrize("chunk", [512, 4096, 1 << 20])
@pytest.mark.parametrize("src,dst", [(BF16, BF16), (np.float32, np.float32), (BF16, np.float32),
                                     (np.float32, BF16), (np.float16, BF16)], ids=lambda d: np.dtype(d).name)
def test_streamed_bytes_are_exact_for_every_chunk_dtype_and_layout(tmp_path, chunk, src, dst):
    name = {np.dtype(np.float32): "float32", BF16: "bfloat16", np.dtype(np.float16): "float16"}[np.dtype(dst)]
    m = _values((48, 80), src)
    with np.errstate(all="ignore"):
        want_cast = m.astype(np.float32).astype(dst) if np.dtype(src) != np.dtype(dst) else m
    # canonical source (HF), unchanged layout, a transpose, and per-head
    ref = _file_ref(tmp_path, m)
    assert _streamed(ref, name, None, chunk)[0] == _bytes(want_cast)
    assert _streamed(ref, name, Layout((48, 80), (1, 0), (80, 48)), chunk)[0] == _bytes(want_cast.T)
    heads = Layout((4, 12, 80), (0, 2, 1), (4, 80, 12))
    assert _streamed(ref, name, heads, chunk)[0] == _bytes(want_cast.reshape(4, 12, 80).transpose(0, 2, 1))
    # a stored (Keras) source re-laid-out to canonical on the way
    stored = _file_ref(tmp_path, np.ascontiguousarray(m.T), Layout((80, 48), (1, 0), (48, 80)), "k")
    assert _streamed(stored, name, None, chunk)[0] == _bytes(want_cast)


def test_sources_that_cannot_be_mapped_are_read_and_short_files_refused(tmp_path, monkeypatch):
    """The source bytes are read from memory maps; where a file system refuses mmap, they are read into the
    scratch buffer instead, with the same result; a file shorter than its tensor is an error naming it."""
    import mmap

    from gemma_inspect.errors import InputError

    m = _values((48, 80), BF16)
    ref = _file_ref(tmp_path, m)
    want = _bytes(np.ascontiguousarray(m.T))
    layout = Layout((48, 80), (1, 0), (80, 48))
    assert _streamed(ref, "bfloat16", layout, 4096)[0] == want

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")

    with monkeypatch.context() as mp:
        mp.setattr(mmap, "mmap", refuse)
        got, buffers = _streamed(ref, "bfloat16", layout, 4096)
        assert got == want and buffers.scratch.allocated_bytes > 0  # read into scratch
    os.truncate(ref.span[0], ref.span[1] + ref.span[2] - 100)
    with pytest.raises(InputError, match=r"t\.bin: file ends 100 bytes before the end of a tensor"):
        _streamed(ref, "bfloat16", layout, 1 << 20)


def test_memory_is_bounded_by_the_chunk_not_the_tensor(tmp_path):
    """A 16 MB tensor (an embedding, say) cast and transposed through 256 KB chunks: the buffers and every
    allocation on the way stay within a few chunks."""
    chunk = 256 * 1024
    big = _values((2048, 2048), np.float32).astype(BF16)  # 8 MB of bf16 -> 16 MB as float32
    ref = _file_ref(tmp_path, big)
    for layout in (None, Layout((2048, 2048), (1, 0), (2048, 2048))):
        buffers = Buffers(chunk, 2)
        tracemalloc.start()
        pieces = 0
        for piece in tensor_pieces(ref, "float32", layout, buffers):
            assert isinstance(piece, Pooled) and piece.nbytes <= chunk
            piece.release()
            pieces += 1
        _now, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert pieces >= 64
        assert buffers.allocated_bytes <= 4 * chunk, buffers.allocated_bytes
        assert peak <= 5 * chunk, (layout, peak)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_quantized_tensors_stream_dequantized_through_the_chunks(tmp_path, dtype):
    """A Q8_0 tensor (a quantized GGUF's embedding, say) is dequantized band by band of rows into the pool's
    buffers: the values equal gguf's own dequantization of the whole tensor (cast as numpy casts), and memory stays
    within a few chunks, not the float32 tensor (at 262,144 x 640 that is 671 MB)."""
    import gguf

    from gemma_inspect.formats.gguf import _tensor_ref
    from gemma_inspect.formats.gguf_header import TensorInfo

    chunk = 256 * 1024
    values = _values((2048, 1024), np.float32)
    q8 = gguf.GGMLQuantizationType.Q8_0
    with np.errstate(all="ignore"):  # _values holds NaN and inf, which Q8_0 quantizes as they come
        raw = gguf.quants.quantize(values, q8)
    path = tmp_path / "q.bin"
    path.write_bytes(b"\0" * 96 + raw.tobytes())
    ref = _tensor_ref(str(path), "model.embed_tokens.weight", "embedding",
                      TensorInfo("token_embd.weight", (2048, 1024), "Q8_0", int(q8), 96, raw.nbytes))
    want = gguf.quants.dequantize(raw, q8).astype(BF16 if dtype == "bfloat16" else np.float32)
    buffers = Buffers(chunk, 2)
    tracemalloc.start()
    got = bytearray()
    pieces = 0
    for piece in tensor_pieces(ref, dtype, None, buffers):
        assert isinstance(piece, Pooled) and piece.nbytes <= chunk
        got += piece.view
        piece.release()
        pieces += 1
    _now, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert bytes(got) == want.tobytes()
    assert pieces == 2048 * 1024 * 4 // chunk
    assert buffers.allocated_bytes <= 3 * chunk, buffers.allocated_bytes
    assert peak - len(got) <= 8 * chunk, peak  # what is held besides the bytes collected here


# ----------------------------------------------------------------------------- whole conversions
@pytest.mark.parametrize("family", ["gemma", "gemma3"])
def test_round_trips_are_byte_exact_through_small_chunks(tiny_models, tmp_path, monkeypatch, family):
    """Keras -> HF -> Keras and HF -> Keras -> HF with chunks far smaller than the tensors (every band path taken):
    the same bytes as the direct conversion with the default chunk, and as the source."""
    hf = tiny_models.get(family, "hf")
    direct = str(tmp_path / "direct-keras")
    convert(hf, direct, "keras")
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 2048)
    banded = str(tmp_path / "banded-keras")
    convert(hf, banded, "keras")
    back = str(tmp_path / "back-hf")
    convert(banded, back, "hf")
    a, b, c, s = load(direct), load(banded), load(back), load(hf)
    for name, ref in s.tensors.items():
        want = _bytes(ref.load())
        assert _bytes(a.tensors[name].load()) == want, name
        assert _bytes(b.tensors[name].load()) == want, name
        assert _bytes(c.tensors[name].load()) == want, name
    with open(os.path.join(direct, "model.weights.h5"), "rb") as f1, \
            open(os.path.join(banded, "model.weights.h5"), "rb") as f2:
        h1, h2 = f1.read(), f2.read()
    assert len(h1) == len(h2)
    # The HDF5 files differ only in what h5py stamps (none of the data): compare the datasets' bytes instead.
    for name, ref in b.tensors.items():
        assert _bytes(a.tensors[name].load()) == _bytes(ref.load())
    # Cast on the way, banded: the same as numpy's cast of the source.
    cast = str(tmp_path / "cast-hf")
    convert(banded, cast, "hf", convert_module.WriteOptions(dtype="bfloat16"))
    for name, ref in load(cast).tensors.items():
        assert _bytes(ref.load()) == _bytes(s.tensors[name].load().astype(BF16)), name


def _stored(ref) -> bytes:
    if getattr(ref, "blocks", None) is not None:  # quantized: its blocks as stored
        return b"".join(bytes(b) for b in ref.blocks(1 << 30))
    if ref.span is None:  # norms: stored as 1 + w
        return _bytes(ref.load())
    with open(ref.span[0], "rb") as f:
        f.seek(ref.span[1])
        return f.read(ref.span[2])


def test_q8_0_from_keras_equals_q8_0_from_hf(tiny_models, tmp_path):
    """GGUF q8_0 of a Keras source (whose layouts go through the torch kernels) and of the HF source (no re-layout)
    are the same bytes."""
    from gemma_inspect.formats.gguf import read as read_gguf

    outs = {}
    for fmt in ("hf", "keras"):
        dest = str(tmp_path / f"{fmt}.gguf")
        convert(tiny_models.get("gemma2", fmt), dest, "gguf", convert_module.WriteOptions(dtype="q8_0"))
        outs[fmt] = read_gguf(dest)
    hf, keras = outs["hf"], outs["keras"]
    assert list(hf.tensors) == list(keras.tensors)
    quantized = 0
    for name, ref in hf.tensors.items():
        other = keras.tensors[name]
        assert (ref.dtype, ref.shape) == (other.dtype, other.shape)
        quantized += ref.dtype == "Q8_0"
        assert _stored(ref) == _stored(other), name
    assert quantized >= 7


# ----------------------------------------------------------------------------- sharded outputs
def test_sharded_output_plans_names_and_indexes_the_shards(tmp_path):
    import json

    from gemma_inspect.tensorio import ShardedOutput, plan_shards

    sizes = [("a", 6), ("b", 5), ("c", 5), ("d", 11)]
    assert plan_shards(sizes, 10) == [["a"], ["b", "c"], ["d"]]  # an oversized tensor gets a shard of its own
    assert plan_shards(sizes, None) == [["a", "b", "c", "d"]]
    hf = ShardedOutput(sizes, 10, "model.safetensors", "model-{number:05d}-of-{count:05d}.safetensors")
    assert list(hf) == [("model-00001-of-00003.safetensors", ["a"]), ("model-00002-of-00003.safetensors", ["b", "c"]),
                        ("model-00003-of-00003.safetensors", ["d"])]
    keras = ShardedOutput(sizes, 10, "model.weights.h5", "model_{index:05d}.weights.h5")
    assert keras.files == ["model_00000.weights.h5", "model_00001.weights.h5", "model_00002.weights.h5"]
    single = ShardedOutput(sizes, None, "model.safetensors", "model-{number:05d}-of-{count:05d}.safetensors")
    assert list(single) == [("model.safetensors", ["a", "b", "c", "d"])] and not single.sharded
    for file, names in hf:
        for n in names:
            hf.record(f"w.{n}", file)
    path = hf.write_index(str(tmp_path), "model.safetensors.index.json", sort=True)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert text.endswith("}\n")
    assert json.loads(text) == {"metadata": {"total_size": 27},
                                "weight_map": {"w.a": "model-00001-of-00003.safetensors",
                                               "w.b": "model-00002-of-00003.safetensors",
                                               "w.c": "model-00002-of-00003.safetensors",
                                               "w.d": "model-00003-of-00003.safetensors"}}


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
@pytest.mark.parametrize("to", ["hf", "keras"])
def test_manifest_hashes_taken_while_writing_equal_the_files_hashes(tiny_models, tmp_path, monkeypatch, algorithm,
                                                                    to):
    """The manifest's thread hashes the output from memory maps of the files while they grow (safetensors front to
    back, HDF5 up to what the writer says is final), through windows far smaller than the files here: every
    digest equals hashlib's / blake3's of the finished file."""
    import hashlib
    import json

    import blake3

    from gemma_inspect.tensorio import hashing

    monkeypatch.setattr(hashing, "HASH_BLOCK", 64 * 1024)  # many windows, most of them not page-aligned at the start
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 4096)  # many small writes for the thread to follow
    src = tiny_models.get("gemma2", "hf" if to == "keras" else "keras", "bfloat16")
    dest = tmp_path / "out"
    convert(src, str(dest), to, convert_module.WriteOptions(hash=algorithm))
    with open(dest / "gemma-inspect-manifest.json") as f:
        manifest = json.load(f)
    assert manifest["hash"] == algorithm
    new = blake3.blake3 if algorithm == "blake3" else hashlib.sha256
    weights = 0
    for entry in manifest["files"]:
        data = (dest / entry["name"]).read_bytes()
        assert entry["size"] == len(data) and entry[algorithm] == new(data).hexdigest(), entry["name"]
        weights += entry["name"].endswith((".safetensors", ".h5"))
    assert weights == 1


def test_hashing_reads_files_that_cannot_be_mapped(tmp_path, monkeypatch):
    import hashlib
    import mmap

    from gemma_inspect.tensorio import hashing

    data = np.random.default_rng(3).integers(0, 256, size=300_001, dtype=np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    monkeypatch.setattr(hashing, "HASH_BLOCK", 65536)
    assert hashing.hash_of(str(path), "sha256") == hashlib.sha256(data).hexdigest()

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")

    monkeypatch.setattr(mmap, "mmap", refuse)
    assert hashing.hash_of(str(path), "sha256") == hashlib.sha256(data).hexdigest()


def test_bands_are_whole_pages_where_a_row_count_allows():
    from gemma_inspect.tensorio.pipeline import page_rows

    assert page_rows(26214, 2560) == 26208  # a 640-wide float32 band of 64 MB: 8 rows make 5 pages
    assert page_rows(26208, 2560) * 2560 % 4096 == 0
    assert page_rows(100, 4096) == 100 and page_rows(100, 8192) == 100
    assert page_rows(3, 2560) == 3  # fewer rows than make a page: as many as fit
    assert page_rows(7, 3) == 7 and page_rows(5000, 3) == 4096  # odd rows: 4,096 of them make 3 pages
    assert page_rows(1, 0) == 1
