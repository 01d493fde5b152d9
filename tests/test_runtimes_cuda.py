"""The same runtime and parity checks on a CUDA GPU. Every test here skips cleanly without one."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from defects import embedding_scale_in_float32
from gemma_inspect import load
from gemma_inspect.cli import main
from gemma_inspect.parity import default_tokens, parity
from gemma_inspect.runtimes import reference, run
from gemma_inspect.tiny import random_weights, tiny_spec, write_hf

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)"),
]

FAMILIES = ("gemma", "gemma-mha", "gemma2", "gemma3")


@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_reference_matches_transformers_float32(tiny_models, family):
    ckpt = load(tiny_models.get(family, "hf"))
    ids = default_tokens(ckpt)
    ref = run(ckpt, ids, "reference", "cuda", "float32")
    hf = run(ckpt, ids, "transformers", "cuda", "float32")
    assert ref.device == hf.device == "cuda"
    for x, y in zip(ref.hidden_states + [ref.logits], hf.hidden_states + [hf.logits]):
        assert float((x - y).abs().max()) <= 1e-5 * max(1.0, float(y.abs().max()))


@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_reference_matches_cpu(tiny_models, family):
    ckpt = load(tiny_models.get(family, "hf"))
    ids = default_tokens(ckpt)
    gpu = run(ckpt, ids, "reference", "cuda", "float32")
    cpu = run(ckpt, ids, "reference", "cpu", "float32")
    assert float((gpu.logits - cpu.logits).abs().max()) <= 1e-5 * max(1.0, float(cpu.logits.abs().max()))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("runtime_a,runtime_b", [("transformers", "keras"), ("reference", "keras"),
                                                 ("transformers", "reference")])
def test_cuda_runtime_pairs_agree(tiny_models, family, dtype, runtime_a, runtime_b):
    hf = load(tiny_models.get(family, "hf", dtype=dtype))
    keras = load(tiny_models.get(family, "keras", dtype=dtype))
    r = parity(hf, keras, runtime_a, runtime_b, "cuda", dtype)
    assert r["device"] == "cuda"
    assert r["passed"] is True, (r["logits"], r["layers"])
    assert r["first_divergent_layer"] is None
    assert r["layers"][0]["max_abs_diff"] == 0.0
    if dtype == "float32":
        assert r["logits"]["max_abs_diff"] < 1e-4 and r["logits"]["top1_agreement"] == 1.0


def test_cuda_defect_norm_offset_found_at_layer_1(tiny_models, tmp_path):
    spec = tiny_models.spec("gemma2")
    w = random_weights(spec, 0)
    w["model.layers.1.input_layernorm.weight"] = w["model.layers.1.input_layernorm.weight"] + 1.0
    bad = load(write_hf(spec, w, str(tmp_path / "bad"), tiny_models.spm))
    r = parity(load(tiny_models.get("gemma2", "keras")), bad, "keras", "transformers", "cuda", "float32")
    assert r["passed"] is False and r["first_divergent_layer"] == 1


def test_cuda_defect_embedding_scale_in_float32(tmp_path, tiny_tokenizer, monkeypatch):
    spec = tiny_spec("gemma", hidden_size=48, dtype="bfloat16")
    ckpt = load(write_hf(spec, random_weights(spec, 0), str(tmp_path / "hf48"), tiny_tokenizer))
    good = parity(ckpt, ckpt, "transformers", "reference", "cuda", "bfloat16")
    assert good["passed"] is True
    monkeypatch.setattr(reference, "embed", embedding_scale_in_float32)  # B, the reference runtime, has the bug
    bad = parity(ckpt, ckpt, "transformers", "reference", "cuda", "bfloat16")
    assert bad["passed"] is False and bad["first_divergent_layer"] == -1


def test_cuda_transformers_device_map_auto(tiny_models):
    ckpt = load(tiny_models.get("gemma3", "hf"))
    ids = default_tokens(ckpt)
    spread = run(ckpt, ids, "transformers", "cuda", "float32", device_map="auto")
    plain = run(ckpt, ids, "transformers", "cuda", "float32")
    assert float((spread.logits - plain.logits).abs().max()) < 1e-5


def test_cuda_cli_parity_json(tiny_models):
    res = CliRunner().invoke(main, ["parity", tiny_models.get("gemma2", "keras"), tiny_models.get("gemma2", "hf"),
                                    "--device", "cuda", "--dtype", "bfloat16", "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["device"] == "cuda" and obj["dtype"] == "bfloat16" and obj["passed"] is True
