"""Hostile Keras weights files (HDF5), single and sharded: byte flips in the file's structure (superblock, object
headers, B-trees, heaps) and in tensor data, truncations, and datasets and attributes rewritten with h5py:
wrong dtypes and shapes, missing or duplicated layers, links to other datasets and files, layouts whose size
is not what they claim. Every variant is read and used through the library."""

from __future__ import annotations

import json
import os
import random
import shutil
from typing import Callable

import numpy as np
import pytest

from files import read_bytes

from .conftest import sweep
from .variants import Variant, json_variants, tree_variants, truncations

N = 24
WEIGHTS = "model.weights.h5"
EMBED = "layers/reversible_embedding/vars/0"
NORM = "layers/gemma_decoder_block/pre_attention_norm/vars/0"
QUERY = "layers/gemma_decoder_block/attention/query_dense/vars/0"
KEY = "layers/gemma_decoder_block_1/attention/key_dense/vars/0"
GATE = "layers/gemma_decoder_block_1/gating_ffw/vars/0"


@pytest.fixture
def keras_single(tiny_models, copy_dir):
    return copy_dir(tiny_models.get("gemma2", "keras"), "keras")


@pytest.fixture
def keras_sharded(tiny_models, copy_dir):
    return copy_dir(tiny_models.get("gemma2", "keras", tokenizer=False, shard=True), "keras-sharded")


def structure_positions(path: str) -> list[int]:
    """Byte offsets of an HDF5 file that hold no dataset's data: its superblock, object headers, B-trees,
    heaps and free space."""
    import h5py

    spans = []
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                spans.append((obj.id.get_offset(), obj.id.get_offset() + obj.id.get_storage_size()))
        f.visititems(visit)
    mask = np.ones(os.path.getsize(path), dtype=bool)
    for b, e in spans:
        mask[b:e] = False
    return np.flatnonzero(mask).tolist()


def h5_edits() -> list[tuple[str, Callable[[object], None], bool]]:
    """(label, edit of an open h5py.File, must_fail) for the structured variants."""
    import h5py

    def recreate(path: str, make: Callable[[np.ndarray], dict]) -> Callable[[h5py.File], None]:
        def edit(f: h5py.File) -> None:
            old = f[path][()]
            attrs = dict(f[path].attrs)
            del f[path]
            kwargs = make(old)
            f.create_dataset(path, **kwargs)
            for k, v in attrs.items():
                f[path].attrs[k] = v
        return edit

    def set_attr(group: str, key: str, value: object) -> Callable[[h5py.File], None]:
        def edit(f: h5py.File) -> None:
            if isinstance(f[group], h5py.Dataset):
                f[group].attrs[key] = value
                return
            # A group made anew (in the file's "latest" format) can hold attributes over 64 KB.
            f.move(group, "moved")
            g = f.create_group(group)
            for k in list(f["moved"]):
                f.copy(f["moved/" + k], g, name=k)
            for k, v in f["moved"].attrs.items():
                g.attrs[k] = v
            del f["moved"]
            g.attrs[key] = value
        return edit

    edits: list[tuple[str, Callable[[h5py.File], None], bool]] = []
    for path in (EMBED, NORM, QUERY, KEY, GATE):
        for dt in ("int32", "float64", "complex64", "S4", "V4", "V2", "bool", "uint8"):
            edits.append((f"{path} stored as {dt}", recreate(path, lambda a, dt=dt: {"data": _as(a, dt)}),
                          dt != "float64"))
        edits += [
            (f"{path} transposed", recreate(path, lambda a: {"data": a.T}), not a_is_vector(path)),
            (f"{path} flattened", recreate(path, lambda a: {"data": a.reshape(-1)}), not a_is_vector(path)),
            (f"{path} with an extra axis", recreate(path, lambda a: {"data": a[None]}), True),
            (f"{path} a scalar", recreate(path, lambda a: {"data": np.float32(1)}), True),
            (f"{path} empty", recreate(path, lambda a: {"shape": (0,), "dtype": "float32"}), True),
            (f"{path} chunked, no chunk written", recreate(path, lambda a: {"shape": a.shape, "dtype": a.dtype,
                                                                            "chunks": True}), True),
            (f"{path} gzip-compressed", recreate(path, lambda a: {"data": a, "compression": "gzip"}), False),
            (f"{path} removed", lambda f, p=path: f.__delitem__(p), True),
            (f"{path} a group", lambda f, p=path: (f.__delitem__(p), f.create_group(p)), True),
            (f"{path} a soft link to {NORM}", lambda f, p=path: (f.__delitem__(p), f.__setitem__(
                p, h5py.SoftLink("/" + NORM))), True),
            (f"{path} an external link to a file outside", lambda f, p=path: (f.__delitem__(p), f.__setitem__(
                p, h5py.ExternalLink("/tmp/elsewhere.h5", "/x"))), True),
        ]
    vars_q = QUERY.rsplit("/", 1)[0]
    block = "layers/gemma_decoder_block_1/vars"
    edits += [(f"{p} compact", recreate(p, lambda a: {"data": a, "dcpl": _compact()}), False)
              for p in (NORM, KEY)]  # compact datasets live in their object header (under 64 KB)
    edits += [
        ("query vars named 'key'", set_attr(vars_q, "name", "key"), True),
        ("query vars named 7", set_attr(vars_q, "name", 7), True),
        ("query vars named by a 1 MB string", set_attr(vars_q, "name", "q" * 2**20), True),
        ("query vars named by an array", set_attr(vars_q, "name", np.array(["query", "query"], dtype="S5")), False),
        ("query vars named by 1e6 float64", set_attr(vars_q, "name", np.zeros(10**6)), True),
        ("query vars named by bytes that are not UTF-8", set_attr(vars_q, "name", np.bytes_(b"\xff\xfe")), True),
        ("block 1 named decoder_block_0", set_attr(block, "name", "decoder_block_0"), True),
        ("block 1 named decoder_block_99", set_attr(block, "name", "decoder_block_99"), True),
        ("embedding tagged bfloat16", set_attr(EMBED, "dtype", "bfloat16"), False),
        ("an extra dataset under layers/", lambda f: f.create_dataset("layers/evil/vars/0", data=[1.0]), True),
        ("an extra dataset outside layers/", lambda f: f.create_dataset("optimizer/vars/0", data=[1.0]), False),
        ("'layers' is a dataset", lambda f: (f.__delitem__("layers"), f.create_dataset("layers", data=[1])), True),
        ("'layers' removed", lambda f: f.__delitem__("layers"), True),
        ("block 1 duplicated as block 9", lambda f: f.copy("layers/gemma_decoder_block_1",
                                                            "layers/gemma_decoder_block_9"), True),
        ("block 1 renamed with a 5000-digit index", lambda f: f.move("layers/gemma_decoder_block_1",
                                                                      "layers/gemma_decoder_block_" + "9" * 5000), True),
        ("block 1 named decoder_block_<5000 digits>", set_attr(block, "name", "decoder_block_" + "9" * 5000),
         False),  # no layer name: mapped by its path, as Keras loads it
    ]
    return edits


def _as(a: np.ndarray, dt: str) -> np.ndarray:
    """`a`'s values in dtype `dt`; opaque types get float bytes of the same width (V2 untagged)."""
    if dt == "V4":
        return a.astype(np.float32).view("V4")
    if dt == "V2":
        return a.astype(np.float16).view("V2")
    if dt == "S4":
        return np.zeros(a.shape, dtype="S4")
    return a.astype(dt)


def a_is_vector(path: str) -> bool:
    return path == NORM


def _compact() -> object:
    import h5py

    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    return dcpl


def edited(file: str, src: str, scratch: str, edit: Callable[[object], None]) -> bytes:
    import h5py

    tmp = os.path.join(scratch, "edit.h5")
    shutil.copyfile(src, tmp)
    with h5py.File(tmp, "a", libver="latest") as f:  # "latest" allows attributes over 64 KB
        edit(f)
    return read_bytes(tmp)


def single_variants(root: str, scratch: str, n: int, seed: int) -> list[Variant]:
    rng = random.Random(seed)
    path = os.path.join(root, WEIGHTS)
    data = read_bytes(path)
    structure = structure_positions(path)
    out = truncations(WEIGHTS, data, rng, n, [0, 8, 512, 2048, structure[-1]])
    for _ in range(3 * n):  # most structure bytes are free space; flip many
        pos, x = rng.choice(structure), rng.randrange(1, 256)
        b = bytearray(data)
        b[pos] ^= x
        out.append(Variant(f"{WEIGHTS}: structure byte {pos} ^= {x:#04x}", WEIGHTS, bytes(b), must_fail=False))
    for _ in range(max(2, n // 4)):
        pos, x = rng.randrange(len(data)), rng.randrange(1, 256)
        b = bytearray(data)
        b[pos] ^= x
        out.append(Variant(f"{WEIGHTS}: byte {pos} ^= {x:#04x}", WEIGHTS, bytes(b), must_fail=False))
    for label, edit, must_fail in h5_edits():
        out.append(Variant(f"{WEIGHTS}: {label}", WEIGHTS, edited(WEIGHTS, path, scratch, edit), must_fail=must_fail))
    out += tree_variants(WEIGHTS, os.path.join(os.path.dirname(root), "outside"))
    return out


def sharded_variants(root: str, scratch: str, n: int, seed: int) -> list[Variant]:
    rng = random.Random(seed)
    index_name = "model.weights.json"
    index = json.loads(read_bytes(os.path.join(root, index_name)))
    shards = sorted(set(index["weight_map"].values()))
    out: list[Variant] = []
    for shard in (shards[0], shards[-1]):
        data = read_bytes(os.path.join(root, shard))
        out += truncations(shard, data, rng, max(4, n // 3))
        structure = structure_positions(os.path.join(root, shard))
        for _ in range(n):
            pos, x = rng.choice(structure), rng.randrange(1, 256)
            b = bytearray(data)
            b[pos] ^= x
            out.append(Variant(f"{shard}: structure byte {pos} ^= {x:#04x}", shard, bytes(b), must_fail=False))
        out += tree_variants(shard, os.path.join(os.path.dirname(root), "outside"))
    out += json_variants(index_name, read_bytes(os.path.join(root, index_name)), rng, n, values_per_key=5, depth=1)
    groups = list(index["weight_map"])

    def with_map(label: str, edit: Callable[[dict], None], must_fail: bool = True) -> None:
        ix = json.loads(json.dumps(index))
        edit(ix["weight_map"])
        out.append(Variant(f"{index_name}: {label}", index_name, json.dumps(ix).encode(), must_fail=must_fail))

    for target in ("/etc/passwd", "../" + shards[0], "", "config.json", index_name, ".", "\x00",
                   "missing.weights.h5"):
        with_map(f"{groups[0]} -> {target!r}", lambda wm, t=target: wm.update({groups[0]: t}))
    with_map("a group in the wrong shard", lambda wm: wm.update({groups[-1]: shards[0]}))
    with_map(f"{groups[-1]} listed in no shard", lambda wm: wm.pop(groups[-1]))
    with_map("a group path that is a number", lambda wm: wm.update({"7": shards[0]}), must_fail=False)
    with_map("emptied", lambda wm: wm.clear())
    out += tree_variants(index_name, os.path.join(os.path.dirname(root), "outside"))[:4]
    return out


def test_single_file(keras_single, tmp_path):
    variants = single_variants(keras_single, str(tmp_path), N, seed=11)
    sweep("keras h5 (single)", keras_single, variants, str(tmp_path))


def test_sharded(keras_sharded, tmp_path):
    variants = sharded_variants(keras_sharded, str(tmp_path), N, seed=12)
    sweep("keras h5 (sharded) + index", keras_sharded, variants, str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(13, 16))
def test_larger_sweep(keras_single, keras_sharded, tmp_path, seed):
    sweep("keras h5 (single)", keras_single, single_variants(keras_single, str(tmp_path), 150, seed), str(tmp_path))
    sweep("keras h5 (sharded) + index", keras_sharded, sharded_variants(keras_sharded, str(tmp_path), 80, seed),
          str(tmp_path))
