"""Hostile safetensors files and Hugging Face indexes, single-file and sharded: every variant is read and
used through the library; every variant must be read fine or refused with one clean error."""

from __future__ import annotations

import json
import os
import random

import pytest

from files import read_bytes

from .conftest import sweep
from .variants import Variant, json_variants, safetensors_variants, tree_variants

N = 16  # seeded draws per generator in the default run; the slow sweep draws more


@pytest.fixture
def hf_single(tiny_models, copy_dir):
    # Gemma 1: its HF names differ from the canonical ones (post_attention_layernorm), a path of its own.
    return copy_dir(tiny_models.get("gemma", "hf", tokenizer=False), "hf")


@pytest.fixture
def hf_sharded(tiny_models, copy_dir):
    return copy_dir(tiny_models.get("gemma3", "hf", tokenizer=False, shard=True), "hf-sharded")


def single_variants(root: str, n: int, seed: int) -> list[Variant]:
    rng = random.Random(seed)
    return (safetensors_variants("model.safetensors", read_bytes(os.path.join(root, "model.safetensors")), rng, n)
            + tree_variants("model.safetensors", os.path.join(os.path.dirname(root), "outside")))


def sharded_variants(root: str, n: int, seed: int) -> list[Variant]:
    rng = random.Random(seed)
    index_name = "model.safetensors.index.json"
    index = json.loads(read_bytes(os.path.join(root, index_name)))
    shards = sorted(set(index["weight_map"].values()))
    out = []
    for shard in (shards[0], shards[-1]):
        out += safetensors_variants(shard, read_bytes(os.path.join(root, shard)), rng, max(4, n // 3))
        out += tree_variants(shard, os.path.join(os.path.dirname(root), "outside"))
    out += json_variants(index_name, read_bytes(os.path.join(root, index_name)), rng, n, values_per_key=6, depth=1)
    names = list(index["weight_map"])
    outside = os.path.join(os.path.dirname(root), "outside")

    def with_map(label: str, edit) -> None:
        ix = json.loads(json.dumps(index))
        edit(ix["weight_map"])
        out.append(Variant(f"{index_name}: {label}", index_name, json.dumps(ix).encode()))

    first, last = names[0], names[-1]
    for target in ("/etc/passwd", "../" + shards[0], "sub/../../" + shards[0], "./../" + shards[0], "",
                   "config.json", index_name, ".", "/", "C:/x.safetensors", "\\\\server\\share\\x", "\x00",
                   shards[0] + "\x00.txt", "a" * 5000, "missing.safetensors"):
        with_map(f"{first} -> {target!r}", lambda wm, t=target: wm.update({first: t}))
    with_map(f"{last} listed in no shard", lambda wm: wm.pop(last))
    with_map("an extra tensor name", lambda wm: wm.update({"model.layers.99.mlp.up_proj.weight": shards[0]}))
    with_map("every tensor in the first shard", lambda wm: wm.update({k: shards[0] for k in wm}))
    with_map("emptied", lambda wm: wm.clear())
    out += tree_variants(index_name, outside)[:4]  # symlinked, /dev/zero, FIFO, directory
    return out


def test_single_file(hf_single, tmp_path):
    variants = single_variants(hf_single, N, seed=1)
    results = sweep("safetensors (single)", hf_single, variants, str(tmp_path))
    assert len(results["error"]) > 0.8 * len(variants)


def test_sharded(hf_sharded, tmp_path):
    variants = sharded_variants(hf_sharded, N, seed=2)
    results = sweep("safetensors (sharded) + index", hf_sharded, variants, str(tmp_path))
    assert len(results["error"]) > 0.8 * len(variants)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 7))
def test_larger_sweep(hf_single, hf_sharded, tmp_path, seed):
    sweep("safetensors (single)", hf_single, single_variants(hf_single, 200, seed), str(tmp_path))
    sweep("safetensors (sharded) + index", hf_sharded, sharded_variants(hf_sharded, 120, seed), str(tmp_path))
