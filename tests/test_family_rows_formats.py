"""The HF and Keras formats know a family only through its row in families.py: a test-only family defined as rows
(its own HF model_type and architecture, its own keras-hub backbone, block and class names, a layer pattern no real
family has) is written and read back by both formats with no code changed anywhere."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gemma_inspect import families
from gemma_inspect import spec as spec_mod
from gemma_inspect.families import FULL, SLIDING


@pytest.fixture
def toy(monkeypatch):
    """A "toy" family: Gemma 2's rules, 2 sliding layers to 1 global, model_type `toy`, backbone `ToyBackbone`."""
    g2 = families.family("gemma2")
    assert g2.hf is not None and g2.keras is not None
    row = dataclasses.replace(
        g2, key="toy", title="Toy", layer_pattern=(SLIDING, SLIDING, FULL), defaults={"sliding_window": 8},
        hf=dataclasses.replace(g2.hf, model_type="toy", architecture="ToyForCausalLM"),
        keras=dataclasses.replace(g2.keras, backbone="ToyBackbone", module="keras_hub.src.models.toy.toy_backbone",
                                  prefix="toy", class_prefix="Toy", block="toy_decoder_block"),
        gguf=None, gemma_pytorch=None)
    monkeypatch.setitem(families.FAMILY_TABLE, "toy", row)
    monkeypatch.setattr(spec_mod, "FAMILIES", spec_mod.FAMILIES + ("toy",))
    return spec_mod.make_spec("toy", vocab_size=64, hidden_size=32, num_layers=5, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=16, intermediate_size=48, query_pre_attn_scalar=16,
                              max_position_embeddings=4096, dtype="float32")


def test_toy_family_spec_follows_its_row(toy):
    assert toy.layer_types == (SLIDING, SLIDING, FULL, SLIDING, SLIDING)
    assert (toy.sliding_window, toy.attention_logit_softcap, toy.final_logit_softcap) == (8, 50.0, 30.0)


def test_hf_writes_and_reads_a_family_defined_by_rows(toy):
    from gemma_inspect.formats import hf

    cfg = json.loads(json.dumps(hf.config_dict(toy)))
    assert (cfg["model_type"], cfg["architectures"]) == ("toy", ["ToyForCausalLM"])
    assert cfg["layer_types"] == [SLIDING, SLIDING, FULL, SLIDING, SLIDING]
    assert hf.spec_from_config(cfg, "config.json") == (toy, [])
    # Without layer_types the reader lays the layers out by the row's pattern.
    del cfg["layer_types"]
    assert hf.spec_from_config(cfg, "config.json")[0] == toy


def test_keras_writes_and_reads_a_family_defined_by_rows(toy):
    from gemma_inspect.formats import keras

    cfg = json.loads(json.dumps(keras.config_dict(toy)))
    assert (cfg["class_name"], cfg["module"], cfg["registered_name"], cfg["config"]["name"]) == (
        "ToyBackbone", "keras_hub.src.models.toy.toy_backbone", "keras_hub>ToyBackbone", "toy_backbone")
    assert cfg["config"]["intermediate_dim"] == 96  # Gemma 2's rows count both GeGLU branches
    assert keras.spec_from_config(cfg, "config.json", max_position_embeddings=4096) == (toy, [])
    assert keras.block_group(toy, 3) == "layers/toy_decoder_block_3"
    assert keras.keras_problems(toy) == []
    assert keras.keras_problems(toy.replace(layer_types=(FULL,) * 4 + (SLIDING,))) == [
        "a sliding-window layout other than keras-hub's fixed pattern (2 local : 1 global)"]


def test_keras_tokenizer_configs_name_the_rows_classes(toy):
    from gemma_inspect.formats.keras_preset import keras_tokenizer_configs

    out = keras_tokenizer_configs(None, "toy", "float32", {"backbone": 1})  # type: ignore[arg-type]
    assert [(v["module"], v["class_name"]) for v in out.values()] == [
        ("keras_hub.src.models.toy.toy_tokenizer", "ToyTokenizer"),
        ("keras_hub.src.models.toy.toy_causal_lm_preprocessor", "ToyCausalLMPreprocessor"),
        ("keras_hub.src.models.toy.toy_causal_lm", "ToyCausalLM")]
    assert "has_vision_tokens" not in out["tokenizer.json"]["config"]
