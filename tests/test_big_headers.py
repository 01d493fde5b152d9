"""`summary` of 27B-sized checkpoints reads headers only: files whose headers are complete but whose tensor
data was never written (sparse files), summarised in a subprocess in well under a second and 200 MB.

The time limit is on the command's CPU time (user + system, interpreter start-up included), which other
processes on a shared machine cannot inflate; its wall time is checked against a looser bound."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from gemma_inspect.checkpoint import expected_tensors, parse_canonical
from gemma_inspect.spec import card

MAX_SECONDS = 1.0  # CPU seconds of the whole command
MAX_WALL_SECONDS = 3.0  # generous: wall time also counts whatever else the machine is doing
MAX_RSS_MB = 200

# Runs one command and reports its wall time, CPU time and peak RSS (ru_maxrss is in KiB on Linux).
MEASURE = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": proc.returncode, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
                  "rss_mb": usage.ru_maxrss / 1024, "stdout": proc.stdout,
                  "stderr": proc.stderr}))
"""


def measure(*args: str) -> dict:
    cmd = [sys.executable, "-m", "gemma_inspect", *args]
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["rc"] == 0, result["stderr"]
    return result


def best_of(n: int, *args: str) -> dict:
    """The fastest of n runs (the first one also pays for cold caches)."""
    runs = [measure(*args) for _ in range(n)]
    return min(runs, key=lambda r: r["cpu"])


def assert_fast_and_small(r: dict) -> None:
    assert r["cpu"] < MAX_SECONDS, r
    assert r["wall"] < MAX_WALL_SECONDS, r
    assert r["rss_mb"] < MAX_RSS_MB, r


def write_sparse_safetensors(path: str, tensors: list[tuple[str, tuple[int, ...]]], dtype: str = "BF16") -> int:
    """A safetensors file with a complete header and no data written: the file is extended to its final
    size with truncate(), so the data section is a hole. Returns the file size."""
    header: dict[str, dict] = {}
    offset = 0
    for name, shape in tensors:
        n = int(np.prod(shape, dtype=np.int64)) * 2
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)
    return 8 + len(raw) + offset


def hf_names(spec) -> list[tuple[str, tuple[int, ...]]]:
    from gemma_inspect.formats.hf import from_canonical

    return [(from_canonical(n, spec.family), s) for n, s in expected_tensors(spec).items()]


@pytest.fixture(scope="module")
def gemma2_27b_hf(tmp_path_factory) -> str:
    """Gemma 2 27B, single model.safetensors (54 GB, sparse), config as the library writes it."""
    from gemma_inspect.formats.hf import config_dict

    spec = card("gemma2-27b")
    d = tmp_path_factory.mktemp("g2-27b")
    size = write_sparse_safetensors(str(d / "model.safetensors"), hf_names(spec))
    assert size > 54e9
    with open(d / "config.json", "w") as f:
        json.dump(config_dict(spec), f)
    return str(d)


# The published google/gemma-3-27b-it config: multimodal, text_config relying on transformers' defaults.
GEMMA3_27B_IT_CONFIG = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "boi_token_index": 255999, "eoi_token_index": 256000, "eos_token_id": [1, 106],
    "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {
        "head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "model_type": "gemma3_text",
        "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16,
        "query_pre_attn_scalar": 168, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "torch_dtype": "bfloat16",
    "vision_config": {
        "hidden_size": 1152, "image_size": 896, "intermediate_size": 4304, "model_type": "siglip_vision_model",
        "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": False,
    },
}
VISION_TENSORS = [
    ("multi_modal_projector.mm_input_projection_weight", (1152, 5376)),
    ("multi_modal_projector.mm_soft_emb_norm.weight", (1152,)),
    ("vision_tower.vision_model.embeddings.patch_embedding.weight", (1152, 3, 14, 14)),
    ("vision_tower.vision_model.embeddings.position_embedding.weight", (4096, 1152)),
]


@pytest.fixture(scope="module")
def gemma3_27b_sharded(tmp_path_factory) -> str:
    """Gemma 3 27B multimodal, 12 shards + index, on-disk names language_model.model.* and vision_tower.*."""
    spec = card("gemma3-27b")
    d = tmp_path_factory.mktemp("g3-27b")
    names = [("language_model." + n, s) for n, s in hf_names(spec)] + VISION_TENSORS
    n_shards = 12
    weight_map, total = {}, 0
    for i in range(n_shards):
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = names[i::n_shards]
        write_sparse_safetensors(str(d / fname), part)
        for name, shape in part:
            weight_map[name] = fname
            total += int(np.prod(shape, dtype=np.int64)) * 2
    with open(d / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(d / "config.json", "w") as f:
        json.dump(GEMMA3_27B_IT_CONFIG, f)
    return str(d)


@pytest.fixture(scope="module")
def gemma2_27b_keras(tmp_path_factory) -> str:
    """Gemma 2 27B as a KerasHub preset: model.weights.h5 with every dataset allocated early and never
    filled (54 GB, sparse), bfloat16 stored opaque as keras does."""
    import h5py

    from gemma_inspect.formats.keras import VAR_BY_ROLE, block_group, config_dict, keras_shape

    spec = card("gemma2-27b")
    d = tmp_path_factory.mktemp("g2-27b-keras")
    with h5py.File(d / "model.weights.h5", "w") as f:
        for name, shape in expected_tensors(spec).items():
            role, layer = parse_canonical(name)
            var = VAR_BY_ROLE[role]
            path = f"layers/{var.path}" if layer is None else f"{block_group(spec, layer)}/{var.path}"
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
            ds = f.create_dataset(path, shape=keras_shape(spec, role, shape), dtype=np.dtype("V2"), dcpl=dcpl)
            ds.attrs["dtype"] = "bfloat16"
            f[path.rsplit("/", 1)[0]].attrs["name"] = var.layer_name
            if layer is not None:
                f.require_group(block_group(spec, layer) + "/vars").attrs["name"] = f"decoder_block_{layer}"
    assert os.path.getsize(d / "model.weights.h5") > 54e9
    with open(d / "config.json", "w") as f:
        json.dump(config_dict(spec), f)
    return str(d)


def _allocated_bytes(directory: str) -> int:
    return sum(os.stat(os.path.join(directory, f)).st_blocks * 512 for f in os.listdir(directory))


def test_fixtures_are_sparse(gemma2_27b_hf, gemma3_27b_sharded, gemma2_27b_keras):
    for d in (gemma2_27b_hf, gemma3_27b_sharded, gemma2_27b_keras):
        assert _allocated_bytes(d) < 50e6, d  # headers only, no data on disk


def test_summary_of_27b_hf_is_fast_and_small(gemma2_27b_hf):
    r = best_of(2, "summary", gemma2_27b_hf, "--json")
    s = json.loads(r["stdout"])
    assert s["parameters"]["total"] == 27_227_128_320
    assert s["dtypes"] == {"bfloat16": 508}
    assert s["size_bytes"] == 2 * 27_227_128_320
    assert s["architecture"]["query_pre_attn_scalar"] == 144
    assert_fast_and_small(r)


def test_summary_of_sharded_multimodal_27b_is_fast_and_small(gemma3_27b_sharded):
    r = best_of(2, "summary", gemma3_27b_sharded, "--json")
    s = json.loads(r["stdout"])
    assert s["parameters"]["total"] == card("gemma3-27b").num_parameters == 27_009_346_304
    assert s["ignored_tensors"] == len(VISION_TENSORS)
    assert s["architecture"]["query_pre_attn_scalar"] == 168
    assert s["architecture"]["rope_scaling_factor"] == 8.0
    assert_fast_and_small(r)


def test_published_gemma3_27b_config_reads_as_the_card(gemma3_27b_sharded):
    from gemma_inspect import load

    ckpt = load(gemma3_27b_sharded)
    assert ckpt.spec == card("gemma3-27b").replace(name=None)
    assert ckpt.notes[0].startswith("multimodal Gemma 3: vision tower and projector (4 tensors, ")


def test_summary_of_27b_keras_is_fast_and_small(gemma2_27b_keras):
    r = best_of(2, "summary", gemma2_27b_keras, "--json")
    s = json.loads(r["stdout"])
    assert s["format"] == "keras"
    assert s["parameters"]["total"] == 27_227_128_320
    assert s["size_bytes"] == 2 * 27_227_128_320
    assert_fast_and_small(r)


def test_compare_of_two_27b_checkpoints_and_a_card(gemma2_27b_hf, gemma2_27b_keras):
    r = measure("compare", gemma2_27b_hf, gemma2_27b_keras, "gemma2-27b", "--json")
    totals = [m["parameters"]["total"] for m in json.loads(r["stdout"])["models"]]
    assert totals == [27_227_128_320] * 3
    assert r["rss_mb"] < MAX_RSS_MB, r["rss_mb"]


# Configs as the Hub's released checkpoints spell them (transformers 4.x keys, defaults left out where the
# released files leave them out). Read against header-only weights, they must describe the built-in card.
PUBLISHED_STYLE_CONFIGS = {
    "gemma-2b": {
        "architectures": ["GemmaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 2, "eos_token_id": 1, "head_dim": 256, "hidden_act": "gelu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 16384, "max_position_embeddings": 8192,
        "model_type": "gemma", "num_attention_heads": 8, "num_hidden_layers": 18, "num_key_value_heads": 1,
        "pad_token_id": 0, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0,
        "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 256000,
    },
    "gemma2-9b": {
        "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
        "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 3584, "initializer_range": 0.02,
        "intermediate_size": 14336, "max_position_embeddings": 8192, "model_type": "gemma2",
        "num_attention_heads": 16, "num_hidden_layers": 42, "num_key_value_heads": 8, "pad_token_id": 0,
        "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
        "sliding_window_size": 4096, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 256000,
    },
    "gemma3-1b": {
        "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid",
        "eos_token_id": [1, 106], "final_logit_softcapping": None, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "initializer_range": 0.02,
        "intermediate_size": 6912, "max_position_embeddings": 32768, "model_type": "gemma3_text",
        "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1, "pad_token_id": 0,
        "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": None,
        "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16",
        "use_cache": True, "vocab_size": 262144,
    },
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_STYLE_CONFIGS))
def test_published_style_configs_read_as_their_cards(tmp_path, name):
    from gemma_inspect import load

    spec = card(name)
    write_sparse_safetensors(str(tmp_path / "model.safetensors"), hf_names(spec))
    with open(tmp_path / "config.json", "w") as f:
        json.dump(PUBLISHED_STYLE_CONFIGS[name], f)
    ckpt = load(str(tmp_path))
    assert ckpt.spec == spec.replace(name=None)
    assert ckpt.spec.num_parameters == PUBLISHED[name]


PUBLISHED = {"gemma-2b": 2_506_172_416, "gemma2-9b": 9_241_705_984, "gemma3-1b": 999_885_952}
