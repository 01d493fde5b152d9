"""Second round of hostile Keras weights files (issue 17): links that lead out of the file (external links to
another model, to a FIFO, to nothing) or around inside it (soft links), big-endian datasets, and chunked
datasets whose one chunk inflates far beyond the dataset. Each class is swept through the library over many
places and forms; the issue's cases run as commands in their own process, timed and measured."""

from __future__ import annotations

import os
import shutil
import zlib
from typing import Callable

import numpy as np
import pytest

from gemma_inspect.convert import convert
from gemma_inspect.formats import load

from files import read_bytes

from .conftest import sweep
from .round2 import MB, refused, run
from .variants import Variant

WEIGHTS = "model.weights.h5"
EMBED = "layers/reversible_embedding/vars/0"
NORM = "layers/gemma_decoder_block/pre_attention_norm/vars/0"
QUERY = "layers/gemma_decoder_block/attention/query_dense/vars/0"
GATE = "layers/gemma_decoder_block_1/gating_ffw/vars/0"
# Places a link can stand: the top group, a block, a sublayer, a vars group, a dataset.
LINK_PLACES = ("layers", "layers/gemma_decoder_block_1", "layers/gemma_decoder_block/attention",
               "layers/reversible_embedding/vars", EMBED, NORM)


@pytest.fixture(scope="module")
def keras_src(tiny_models):
    return tiny_models.get("gemma2", "keras", tokenizer=False)


@pytest.fixture(scope="module")
def other_model(tiny_models):
    """Another model of the same shape (another seed): what an external link would silently read instead."""
    return os.path.join(tiny_models.get("gemma2", "keras", tokenizer=False, seed=1), WEIGHTS)


@pytest.fixture(scope="module")
def baseline(keras_src, tmp_path_factory):
    r = run(["summary", keras_src, "--scan"], str(tmp_path_factory.mktemp("round2-h5-baseline")))
    assert r.code == 0, r.err
    return r


def edited(src: str, scratch: str, edit: Callable[[object], None]) -> bytes:
    import h5py

    tmp = os.path.join(scratch, "edit.h5")
    shutil.copyfile(src, tmp)
    with h5py.File(tmp, "a") as f:
        edit(f)
    return read_bytes(tmp)


# ----------------------------------------------------------------------------- links (item 1)
def link_edits(outside_copy: str) -> list[tuple[str, Callable[[object], None], str]]:
    """(label, edit of an open h5py.File, what the error must say)."""
    import h5py

    def external(place: str, target_file: str) -> Callable[[h5py.File], None]:
        def edit(f: h5py.File) -> None:
            del f[place]
            f[place] = h5py.ExternalLink(target_file, "/" + place)
        return edit

    def soft(place: str) -> Callable[[h5py.File], None]:
        def edit(f: h5py.File) -> None:
            f.move(place, place + "_real")
            f[place] = h5py.SoftLink("/" + place + "_real")
        return edit

    def dangling(place: str) -> Callable[[h5py.File], None]:
        def edit(f: h5py.File) -> None:
            del f[place]
            f[place] = h5py.SoftLink("/nowhere")
        return edit

    out = []
    for place in LINK_PLACES:
        out += [
            (f"/{place} an external link to the same path in another model", external(place, outside_copy),
             f"/{place} is an external link to /{place} in {outside_copy}"),
            (f"/{place} an external link to a missing file", external(place, "/nonexistent/x.h5"),
             f"/{place} is an external link to /{place} in /nonexistent/x.h5"),
            (f"/{place} a soft link to a moved copy of itself", soft(place),
             f"/{place} is a soft link to /{place}_real"),
            (f"/{place} a dangling soft link", dangling(place), f"/{place} is a soft link to /nowhere"),
        ]
    out += [
        ("an external link outside layers/", lambda f: f.__setitem__("optimizer", h5py.ExternalLink(outside_copy, "/")),
         "/optimizer is an external link to /"),
        ("a soft link outside layers/", lambda f: f.__setitem__("alias", h5py.SoftLink("/layers")),
         "/alias is a soft link to /layers"),
    ]
    return out


def test_links_are_refused_on_the_whole_walk(keras_src, other_model, copy_dir, tmp_path):
    root = copy_dir(keras_src, "keras")
    outside = str(tmp_path / "outside")
    os.mkdir(outside)
    outside_copy = os.path.join(outside, "other.weights.h5")
    shutil.copyfile(other_model, outside_copy)
    scratch = str(tmp_path / "scratch")
    os.mkdir(scratch)
    src = os.path.join(root, WEIGHTS)
    expect = {}
    variants = []
    for label, edit, message in link_edits(outside_copy):
        variants.append(Variant(f"{WEIGHTS}: {label}", WEIGHTS, edited(src, scratch, edit)))
        expect[f"{WEIGHTS}: {label}"] = message
    results = sweep("keras h5 links (round 2)", root, variants, scratch)
    assert not results["ok"]
    for v, msg in results["error"]:
        assert expect[v.label] in msg, (v.label, msg)


def test_links_in_a_shard_are_refused(tiny_models, other_model, copy_dir, tmp_path):
    import json

    import h5py

    root = copy_dir(tiny_models.get("gemma2", "keras", tokenizer=False, shard=True), "sharded")
    with open(os.path.join(root, "model.weights.json")) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    scratch = str(tmp_path / "scratch")
    os.mkdir(scratch)
    variants = []
    for shard in shards:
        path = os.path.join(root, shard)
        with h5py.File(path, "r") as f:
            place = "layers/" + sorted(f["layers"])[0]

        def link(f: h5py.File, place: str = place) -> None:
            del f[place]
            f[place] = h5py.ExternalLink(other_model, "/" + place)

        variants.append(Variant(f"{shard}: /{place} an external link to another model", shard,
                                edited(path, scratch, link)))
        variants.append(Variant(f"{shard}: a soft link at the top", shard,
                                edited(path, scratch, lambda f: f.__setitem__("x", h5py.SoftLink("/layers")))))
    results = sweep("keras h5 links (round 2, sharded)", root, variants, scratch)
    assert not results["ok"]


@pytest.mark.parametrize("target", ["another model", "a FIFO"])
def test_external_link_commands(keras_src, other_model, baseline, tmp_path, target):
    """The issue's two files: /layers an external link to another model (converted, exit 0, into that model)
    and to a FIFO (summary blocked forever). Both refused at once; convert writes nothing."""
    import h5py

    d = str(tmp_path / "keras")
    shutil.copytree(keras_src, d)
    if target == "a FIFO":
        elsewhere = str(tmp_path / "fifo")
        os.mkfifo(elsewhere)
    else:
        elsewhere = str(tmp_path / "other.h5")
        shutil.copyfile(other_model, elsewhere)
    with h5py.File(os.path.join(d, WEIGHTS), "a") as f:
        del f["layers"]
        f["layers"] = h5py.ExternalLink(elsewhere, "/layers")
    msg = f"/layers is an external link to /layers in {elsewhere}"
    refused(["summary", d], str(tmp_path), msg, baseline)
    refused(["convert", d, str(tmp_path / "out"), "--to", "hf"], str(tmp_path), msg, baseline)
    assert not os.path.exists(tmp_path / "out")


# ----------------------------------------------------------------------------- byte order (item 4)
def _rewrite_all(order: str, **kwargs: object) -> Callable[[object], None]:
    """Every float dataset rewritten with byte order `order` ('<' or '>'), with h5py keyword arguments."""
    import h5py

    def edit(f: h5py.File) -> None:
        paths = []
        f.visititems(lambda n, o: paths.append(n) if isinstance(o, h5py.Dataset) and o.dtype.kind == "f" else None)
        for p in paths:
            a = f[p][()]
            attrs = dict(f[p].attrs)
            del f[p]
            f.create_dataset(p, data=a.astype(a.dtype.newbyteorder(order)), **kwargs)
            for k, v in attrs.items():
                f[p].attrs[k] = v
    return edit


def _rewrite_one(path: str, order: str, dtype: str = "f4") -> Callable[[object], None]:
    def edit(f: object) -> None:
        a = f[path][()]  # type: ignore[index]
        del f[path]  # type: ignore[attr-defined]
        f.create_dataset(path, data=a.astype(order + dtype))  # type: ignore[attr-defined]
    return edit


def _compact():
    import h5py

    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    return dcpl


BYTE_ORDER_CASES: dict[str, Callable[[str], Callable[[object], None]]] = {
    "every dataset": lambda o: _rewrite_all(o),
    "every dataset, chunked": lambda o: _rewrite_all(o, chunks=True),
    "every dataset, gzip-compressed": lambda o: _rewrite_all(o, compression="gzip"),
    "every dataset, shuffled and compressed": lambda o: _rewrite_all(o, compression="gzip", shuffle=True),
    "the embedding only": lambda o: _rewrite_one(EMBED, o),
    "a norm only, as float16": lambda o: _rewrite_one(NORM, o, "f2"),
    "a query kernel only, as float64": lambda o: _rewrite_one(QUERY, o, "f8"),
    "a gate only": lambda o: _rewrite_one(GATE, o),
}


@pytest.mark.parametrize("case", sorted(BYTE_ORDER_CASES))
def test_big_endian_datasets_read_as_their_values(keras_src, copy_dir, tmp_path, case):
    """h5py reads a `>f4` dataset correctly; so must every path of the reader (the raw fast path included):
    the same file written big-endian and little-endian reads to identical tensors, through every loader."""
    import h5py

    tensors = {}
    for order in ("<", ">"):
        d = copy_dir(keras_src, f"keras{order == '>'}")
        with h5py.File(os.path.join(d, WEIGHTS), "a") as f:
            BYTE_ORDER_CASES[case](order)(f)
        ckpt = load(d)
        tensors[order] = {n: (r.dtype, r.load(), b"".join(bytes(c) for c in r.chunks(1 << 16)) if r.chunks else None)
                          for n, r in ckpt.tensors.items()}
    assert tensors["<"].keys() == tensors[">"].keys()
    for n, (dtype, arr, raw) in tensors["<"].items():
        d2, a2, r2 = tensors[">"][n]
        assert d2 == dtype, n
        assert a2.dtype.isnative and np.array_equal(a2, arr), n
        # Raw chunks, where offered (the fast path of a contiguous little-endian dataset), are the values' bytes.
        for a, r in ((arr, raw), (a2, r2)):
            assert r is None or r == np.ascontiguousarray(a).tobytes(), n


def test_big_endian_file_converts_to_the_same_model(keras_src, tmp_path):
    """The issue's file: every dataset `>f4`. Before, convert exited 0 with every tensor inf/NaN."""
    import h5py
    from safetensors.numpy import load_file

    d = str(tmp_path / "big")
    shutil.copytree(keras_src, d)
    with h5py.File(os.path.join(d, WEIGHTS), "a") as f:
        _rewrite_all(">")(f)
    convert(keras_src, str(tmp_path / "want"), "hf")
    r = run(["convert", d, str(tmp_path / "got"), "--to", "hf"], str(tmp_path))
    assert r.code == 0, r.err
    want = load_file(str(tmp_path / "want" / "model.safetensors"))
    got = load_file(str(tmp_path / "got" / "model.safetensors"))
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


# ----------------------------------------------------------------------------- chunks (item 7)
def chunk_edits() -> list[tuple[str, Callable[[object], None]]]:
    import h5py

    def chunked(path: str, chunk_of: Callable[[tuple], tuple], filters: list[str],
                maxshape: bool = True) -> Callable[[h5py.File], None]:
        def edit(f: h5py.File) -> None:
            a = f[path][()]
            del f[path]
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk(chunk_of(a.shape))
            for flt in filters:
                dcpl.set_deflate(6) if flt == "deflate" else dcpl.set_shuffle() if flt == "shuffle" \
                    else dcpl.set_fletcher32()
            space = h5py.h5s.create_simple(a.shape, tuple(h5py.h5s.UNLIMITED for _ in a.shape) if maxshape
                                           else a.shape)
            tid = h5py.h5t.py_create(a.dtype)
            ds = h5py.h5d.create(f.id, path.encode(), tid, space, dcpl=dcpl)
            ds.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(a))
        return edit

    out = []
    for path in (EMBED, NORM, QUERY):
        out += [
            (f"{path} in one chunk twice its size", chunked(path, lambda s: tuple(2 * x for x in s), [])),
            (f"{path} in one deflated chunk 1000x its size",
             chunked(path, lambda s: (s[0] * 1000, *s[1:]), ["deflate"])),
            (f"{path} deflated twice", chunked(path, lambda s: s, ["deflate", "deflate"], maxshape=False)),
            (f"{path} shuffled twice", chunked(path, lambda s: s, ["shuffle", "shuffle"], maxshape=False)),
            (f"{path} deflated, shuffled, deflated",
             chunked(path, lambda s: s, ["deflate", "shuffle", "deflate"], maxshape=False)),
        ]
    return out


def test_chunks_beyond_their_dataset_are_refused(keras_src, copy_dir, tmp_path):
    root = copy_dir(keras_src, "keras")
    scratch = str(tmp_path / "scratch")
    os.mkdir(scratch)
    src = os.path.join(root, WEIGHTS)
    variants = [Variant(f"{WEIGHTS}: {label}", WEIGHTS, edited(src, scratch, edit)) for label, edit in chunk_edits()]
    # One deflate over chunks that fit: an ordinary compressed dataset, read as it is.
    variants.append(Variant(f"{WEIGHTS}: {EMBED} deflated once in chunks of half a dataset", WEIGHTS,
                            edited(src, scratch, lambda f: _recompress(f, EMBED)), must_fail=False))
    results = sweep("keras h5 chunks (round 2)", root, variants, scratch)
    assert [v.label for v, _ in results["ok"]] == [variants[-1].label]
    for v, msg in results["error"]:
        assert "larger than its shape" in msg or "times over each chunk" in msg, (v.label, msg)


def _recompress(f: object, path: str) -> None:
    a = f[path][()]  # type: ignore[index]
    del f[path]  # type: ignore[attr-defined]
    f.create_dataset(path, data=a, chunks=(max(1, a.shape[0] // 2), *a.shape[1:]),  # type: ignore[attr-defined]
                     compression="gzip")


def test_one_oversized_chunk_deflated_twice(keras_src, baseline, tmp_path):
    """The issue's file: the embedding stored as one 512 MB chunk of zeros deflated twice (a few KB on disk).
    Reading it inflated the whole chunk; now refused from its chunk dimensions, before any chunk is read."""
    import h5py

    d = str(tmp_path / "keras")
    shutil.copytree(keras_src, d)
    with h5py.File(os.path.join(d, WEIGHTS), "a") as f:
        shape = f[EMBED].shape
        del f[EMBED]
        rows = (512 * MB) // (4 * shape[1])
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((rows, shape[1]))
        dcpl.set_deflate(9)
        dcpl.set_deflate(9)
        space = h5py.h5s.create_simple(shape, (h5py.h5s.UNLIMITED, h5py.h5s.UNLIMITED))
        ds = h5py.h5d.create(f.id, EMBED.encode(), h5py.h5t.IEEE_F32LE, space, dcpl=dcpl)
        once = zlib.compressobj(9)
        zeros = bytes(64 * MB)
        inner = b"".join(once.compress(zeros) for _ in range(rows * shape[1] * 4 // len(zeros))) + once.flush()
        ds.write_direct_chunk((0, 0), zlib.compress(inner, 9))
    assert os.path.getsize(os.path.join(d, WEIGHTS)) < os.path.getsize(os.path.join(keras_src, WEIGHTS)) + 64 * 1024
    refused(["summary", d, "--scan"], str(tmp_path), f"dataset {EMBED} is stored in chunks of", baseline)
