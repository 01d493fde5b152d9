"""VaultGemma: Gemma 2 without the post-attention and post-feedforward norms (HF `vaultgemma`, keras-hub's
GemmaBackbone with use_post_*_norm false), +1 norms and soft caps 50/30 kept. Tiny seeded models built by
transformers (VaultGemmaForCausalLM) and keras-hub (GemmaBackbone) from the same weights go through every command;
GGUF and gemma_pytorch have no VaultGemma and refuse in one line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from gemma_inspect import load
from gemma_inspect.checkpoint import expected_tensors
from gemma_inspect.cli import main
from gemma_inspect.convert import convert
from gemma_inspect.families import FULL, SLIDING, family
from gemma_inspect.parity import parity
from gemma_inspect.spec import card
from gemma_inspect.tiny import TINY_VOCAB, tiny_spec

PAIRS = (("transformers", "reference"), ("transformers", "keras"), ("reference", "keras"))
# embedding 384 x 64; per layer q/o 64x64, k/v 32x64, three 96x64 FFN matrices, two norms; final norm
TINY_COUNTS = {"total": 148_032, "total_if_untied": 172_608, "embedding": 24_576, "output": 0,
               "attention": 49_152, "feedforward": 73_728, "norms": 576, "per_layer": 30_848}
GGUF_REFUSAL = ("Error: vaultgemma checkpoints cannot be written as a Gemma GGUF: llama.cpp has no VaultGemma "
                "architecture (gguf 0.19 and llama.cpp's converter know none; its gemma2 graph requires the "
                "post-attention and post-feedforward norms VaultGemma lacks)")
GEMMA_PYTORCH_REFUSAL = ("Error: vaultgemma checkpoints cannot be written as gemma_pytorch: gemma_pytorch has no "
                         "VaultGemma architecture (its GEMMA_2 decoder layer always applies a post-attention "
                         "norm, which VaultGemma lacks)")


@pytest.fixture(scope="module")
def vg(tiny_models):
    return tiny_models.get("vaultgemma", "hf"), tiny_models.get("vaultgemma", "keras")


def _hf_logits(path: str, ids: np.ndarray) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    assert type(model).__name__ == "VaultGemmaForCausalLM"
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


def _keras_logits(path: str, ids: np.ndarray) -> np.ndarray:
    from gemma_inspect.runtimes.keras_rt import import_keras

    import_keras()
    import keras_hub
    from keras import ops

    backbone = keras_hub.models.Backbone.from_preset(path)
    assert type(backbone).__name__ == "GemmaBackbone"
    assert not backbone.use_post_attention_norm and not backbone.use_post_ffw_norm
    h = backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    # the reversed embedding applies the backbone's final_logit_soft_cap
    return ops.convert_to_numpy(backbone.token_embedding(h, reverse=True)).astype(np.float32)


def _ids() -> np.ndarray:
    return np.random.default_rng(5).integers(4, TINY_VOCAB, size=(1, 20))  # longer than the window (6)


# ----------------------------------------------------------------------------- the row and the card
def test_row_is_gemma2_without_post_norms():
    row, g2 = family("vaultgemma"), family("gemma2")
    assert row.rules.norm_placement == "pre" and g2.rules.norm_placement == "pre+post"
    assert (row.rules.attention_logit_softcap, row.rules.final_logit_softcap) == (50.0, 30.0)
    assert (row.rules.norm_offset, row.rules.qk_norm, row.rules.query_scalar) == (1, False, "query_pre_attn_scalar")
    assert row.layer_pattern == (SLIDING, FULL)  # transformers' default layout (VaultGemmaConfig.__post_init__)
    assert (row.hf.model_type, row.hf.architecture, row.hf.activation_key) == \
        ("vaultgemma", "VaultGemmaForCausalLM", "hidden_activation")
    assert row.keras.backbone == "GemmaBackbone" and row.gguf is None and row.gemma_pytorch is None
    spec = tiny_spec("vaultgemma")
    names = set(expected_tensors(spec))
    assert "model.layers.0.pre_feedforward_layernorm.weight" in names
    assert not any("post_attention_layernorm" in n or "post_feedforward_layernorm" in n for n in names)


def test_hf_defaults_are_transformers_defaults():
    from transformers import VaultGemmaConfig

    ref = VaultGemmaConfig()
    for key, value in family("vaultgemma").hf.defaults.items():
        assert getattr(ref, key) == value, key
    assert ref.layer_types[:2] == ["sliding_attention", "full_attention"]


def test_card_count_matches_transformers_and_keras_hub():
    """vaultgemma-1b: 1,038,741,120 parameters, as transformers counts them on the meta device and as keras-hub's
    vault_gemma_1b_en preset publishes them."""
    import torch
    from keras_hub.src.models.gemma.gemma_presets import backbone_presets
    from transformers import AutoConfig, AutoModelForCausalLM

    from gemma_inspect.formats.hf import config_dict

    c = card("vaultgemma-1b")
    assert c.layer_types == (FULL,) * 26 and c.max_position_embeddings == 1024
    cfg = config_dict(c)
    model_type = cfg.pop("model_type")
    for key in ("torch_dtype", "dtype", "architectures"):
        cfg.pop(key)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg))
    assert type(model).__name__ == "VaultGemmaForCausalLM"
    assert c.parameter_breakdown()["total"] == model.num_parameters() == 1_038_741_120
    assert backbone_presets["vault_gemma_1b_en"]["metadata"]["params"] == 1_038_741_120
    # verify expects the published layout (every layer global), not the family's default alternation
    from gemma_inspect.checks import expected_layers

    assert expected_layers(c) == {"window": None, "sliding_layers": [], "global_layers": list(range(26))}


def test_card_summary_and_preset_name():
    from gemma_inspect.hub import keras_hub_presets

    result = CliRunner().invoke(main, ["summary", "vaultgemma-1b", "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert (s["family"], s["family_title"], s["parameters"]["total"]) == ("vaultgemma", "VaultGemma", 1_038_741_120)
    assert s["architecture"]["norm_placement"] == "pre"
    assert keras_hub_presets()["vault_gemma_1b_en"].startswith("kaggle://keras/vaultgemma/keras/vault_gemma_1b_en")


def test_gemma_backbone_configs_are_told_apart():
    """GemmaBackbone holds Gemma 1, Gemma 2 and VaultGemma: the config's post norms, soft caps and sliding flag
    decide which, both ways round."""
    from gemma_inspect.formats import keras

    def family_of(spec):
        return keras.spec_from_config(keras.config_dict(spec), "config.json")[0].family

    assert family_of(tiny_spec("gemma")) == "gemma"
    assert family_of(tiny_spec("gemma2")) == "gemma2"
    assert family_of(tiny_spec("vaultgemma")) == "vaultgemma"
    # VaultGemma as published: no sliding layers, caps kept
    all_global = tiny_spec("vaultgemma", layer_types=(FULL,) * 4)
    back = keras.spec_from_config(keras.config_dict(all_global), "config.json")[0]
    assert (back.family, back.layer_types, back.attention_logit_softcap) == ("vaultgemma", (FULL,) * 4, 50.0)
    # pre-norm with sliding windows but no caps: only VaultGemma can hold it (Gemma 1 has no windows)
    assert family_of(tiny_spec("vaultgemma", attention_logit_softcap=None, final_logit_softcap=None)) == "vaultgemma"
    # and a Gemma 2 without caps is still Gemma 2 (post norms decide first)
    assert family_of(tiny_spec("gemma2", attention_logit_softcap=None, final_logit_softcap=None)) == "gemma2"


# ----------------------------------------------------------------------------- every command on the tiny models
def test_summary_of_both_formats(vg):
    for path, fmt in zip(vg, ("hf", "keras")):
        result = CliRunner().invoke(main, ["summary", path, "--json"])
        assert result.exit_code == 0, result.output
        s = json.loads(result.stdout)
        assert (s["family"], s["family_title"], s["format"]) == ("vaultgemma", "VaultGemma", fmt)
        assert s["parameters"] == TINY_COUNTS
        a = s["architecture"]
        assert (a["norm_placement"], a["norm_offset"], a["qk_norm"]) == ("pre", 1, False)
        assert (a["attention_logit_softcap"], a["final_logit_softcap"], a["sliding_window"]) == (50.0, 30.0, 6)
        assert a["layer_types"] == [SLIDING, FULL, SLIDING, FULL]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(vg[0]).num_parameters() == TINY_COUNTS["total"]


def test_convert_both_ways_native_loaders_and_round_trips(vg, tmp_path):
    hf, keras = vg
    ids = _ids()
    source = _hf_logits(hf, ids)
    assert np.abs(source).max() > 1.0  # non-trivial logits

    to_keras = str(tmp_path / "to-keras")
    convert(hf, to_keras, "keras")
    cfg = json.loads(open(os.path.join(to_keras, "config.json")).read())["config"]
    assert (cfg["use_post_attention_norm"], cfg["use_post_ffw_norm"]) == (False, False)
    assert (cfg["attention_logit_soft_cap"], cfg["final_logit_soft_cap"], cfg["sliding_window_size"]) == (50.0, 30.0, 6)
    assert float(np.abs(_keras_logits(to_keras, ids) - source).max()) < 1e-4

    to_hf = str(tmp_path / "to-hf")
    convert(keras, to_hf, "hf")
    hcfg = json.loads(open(os.path.join(to_hf, "config.json")).read())
    assert (hcfg["model_type"], hcfg["architectures"]) == ("vaultgemma", ["VaultGemmaForCausalLM"])
    assert float(np.abs(_hf_logits(to_hf, ids) - source).max()) < 1e-4
    assert float(np.abs(_keras_logits(keras, ids) - source).max()) < 1e-4

    # round trips: HF -> Keras -> HF and Keras -> HF -> Keras are bit-exact
    back_hf, back_keras = str(tmp_path / "back-hf"), str(tmp_path / "back-keras")
    convert(to_keras, back_hf, "hf")
    convert(to_hf, back_keras, "keras")
    for a, b in ((hf, back_hf), (keras, back_keras), (hf, keras)):
        ca, cb = load(a), load(b)
        assert ca.spec.replace(name=None, dtype="float32") == cb.spec.replace(name=None, dtype="float32")
        assert list(ca.tensors) == list(cb.tensors) and len(ca.tensors) == 38
        for n in ca.tensors:
            assert np.array_equal(np.asarray(ca.tensors[n].load()), np.asarray(cb.tensors[n].load())), n


def test_diff_across_formats(vg):
    result = CliRunner().invoke(main, ["diff", vg[0], vg[1], "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["identical"] is True and d["spec_differences"] == []
    assert len(d["tensors"]) == 38 and {t["status"] for t in d["tensors"]} == {"equal"}


@pytest.mark.parametrize("runtime_a,runtime_b", PAIRS)
def test_parity_every_runtime_pair(vg, runtime_a, runtime_b):
    hf, keras = load(vg[0]), load(vg[1])
    r = parity(hf, keras, runtime_a, runtime_b, "cpu", "float32")
    assert r["passed"] is True, r["layers"]
    assert len(r["tokens"]) == 32 > 6  # longer than the sliding window
    assert r["layers"][0]["max_abs_diff"] == 0.0
    assert all(row["status"] == "ok" and row["max_abs_diff"] <= row["bound"] for row in r["layers"])
    assert r["logits"]["max_abs_diff"] < 1e-4 and r["logits"]["top1_agreement"] == 1.0


def test_reference_runtime_needs_the_row(vg):
    """The same weights computed with Gemma 2's sandwich norms (whose post norms would be missing) or without
    VaultGemma's caps give other logits: the row's rules are what made the runtimes agree."""
    from gemma_inspect.runtimes import run

    ckpt = load(vg[0])
    ids = _ids()
    ours = run(ckpt, ids, runtime="reference", device="cpu", dtype="float32").logits
    theirs = run(ckpt, ids, runtime="transformers", device="cpu", dtype="float32").logits
    assert float((ours - theirs).abs().max()) < 1e-4
    uncapped = ckpt.__class__(spec=ckpt.spec.replace(attention_logit_softcap=None, final_logit_softcap=None),
                              tensors=ckpt.tensors, source=ckpt.source, format="hf")
    other = run(uncapped, ids, runtime="reference", device="cpu", dtype="float32").logits
    assert float((ours - other).abs().max()) > 1e-2


@pytest.mark.parametrize("fmt", ["hf", "keras"])
def test_verify_passes_with_pre_norm_expected(vg, fmt):
    path = vg[0] if fmt == "hf" else vg[1]
    result = CliRunner().invoke(main, ["verify", path, "--json"])
    assert result.exit_code == 0, result.output
    v = json.loads(result.stdout)
    assert v["passed"] is True
    checks = {c["name"]: c for c in v["checks"]}
    assert (checks["norm_placement"]["status"], checks["norm_placement"]["expected"],
            checks["norm_placement"]["observed"]) == ("pass", "pre", "pre")
    assert "post_attention_layernorm" not in checks["norm_placement"]["evidence"]
    for name, value in (("logit_softcap", 30.0), ("attention_softcap", 50.0)):
        assert (checks[name]["status"], checks[name]["observed"]) == ("pass", value)
    assert checks["sliding_window"]["observed"] == {"window": 6, "sliding_layers": [0, 2], "global_layers": [1, 3]}
    # (the one warning a transformers-saved tiny model may get is lint:end_of_turn, about its generation_config)
    assert {c["name"] for c in v["checks"] if c["status"] not in ("pass", "skip")} <= {"lint:end_of_turn"}


@pytest.mark.parametrize("to,message", [("gguf", GGUF_REFUSAL), ("gemma-pytorch", GEMMA_PYTORCH_REFUSAL)])
def test_gguf_and_gemma_pytorch_refuse(vg, tmp_path, to, message):
    for src in vg:
        dest = tmp_path / f"out-{to}-{os.path.basename(src)}"
        result = CliRunner().invoke(main, ["convert", src, str(dest), "--to", to])
        assert result.exit_code == 2
        assert result.output.strip().splitlines()[-1] == message
        assert not any(p.startswith(dest.name) for p in os.listdir(tmp_path))  # nothing half-written
