"""Gemma 3n (text decoder) in the Keras and GGUF formats: the name tables against what keras-hub and the gguf package
build, `convert` HF -> Keras (keras-hub's Gemma3nBackbone.from_preset loads it and computes transformers' hidden
states and logits), Keras -> HF and HF -> GGUF -> HF bit for bit, a preset keras-hub saved itself, the GGUF layout
llama.cpp's converter writes (stacks, padding, quantiles), what the GGUF writer refuses, and `diff` across formats.

Every expected value comes from transformers, keras-hub or the gguf package, never from this package. Two tiny
models: tests/test_gemma3n.py's (5 layers, 2 KV-shared, two sparse layers) and a 22-layer one shaped as llama.cpp's
gemma3n hard-codes it (K/V on the first 20 layers, 0.95 sparsity on the first 10, one global layer in 5)."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest
import torch

from tests.test_gemma3n import build, run

SLIDING, FULL = "sliding_attention", "full_attention"
# 5 layers, the last 2 KV-shared, two sparse layers, one wider FFN (over test_gemma3n's TINY, which build() starts from)
TINY5 = dict(vocab_size=96, vocab_size_per_layer_input=80, hidden_size=32, intermediate_size=[48, 48, 64, 48, 48],
             num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
             hidden_size_per_layer_input=4, laurel_rank=4, sliding_window=4, num_kv_shared_layers=2,
             layer_types=[SLIDING, FULL, SLIDING, FULL, SLIDING],
             activation_sparsity_pattern=[0.95, 0.95, 0.0, 0.0, 0.0],
             max_position_embeddings=128, final_logit_softcapping=30.0)
IDS = np.array([[2, 5, 90, 81, 7, 33, 64, 12, 95, 3, 17, 44]])  # 81-95 lie beyond the per-layer table (80 rows)
L22 = 22
# llama.cpp also reads per-layer inputs 256 wide and a LAuReL rank of 64 whatever the file says
LLAMA_SHAPED = dict(TINY5, num_hidden_layers=L22, intermediate_size=[48] * L22, activation_sparsity_pattern=None,
                    hidden_size_per_layer_input=256, laurel_rank=64,
                    layer_types=["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(L22)])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("g3nf"))
    return d, build(d, seed=3, **TINY5)


@pytest.fixture(scope="module")
def llama_shaped(tmp_path_factory):
    """22 layers, the last 2 KV-shared, sparsity left to transformers' default (0.95 on the first 10 layers)."""
    d = str(tmp_path_factory.mktemp("g3n22"))
    m = build(d, seed=4, **LLAMA_SHAPED)
    assert m.config.activation_sparsity_pattern == [0.95] * 10 + [0.0] * 12
    return d, m


def _hf_tensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


def _same_tensors(a: str, b: str) -> int:
    x, y = _hf_tensors(a), _hf_tensors(b)
    assert sorted(x) == sorted(y)
    for n in x:
        assert x[n].dtype == y[n].dtype and torch.equal(x[n], y[n]), n
    return len(x)


def _convert(src: str, dest: str, to: str, *extra: str) -> str:
    r = run("convert", src, dest, "--to", to, *extra)
    assert r.exit_code == 0, r.output
    return r.output


def _keras_outputs(preset: str, ids: np.ndarray = IDS) -> tuple[np.ndarray, np.ndarray]:
    """(final hidden states, logits) of keras-hub's own Gemma3nBackbone loaded from `preset`."""
    import keras
    import keras_hub

    backbone = keras_hub.models.Backbone.from_preset(preset, dtype="float32")
    assert type(backbone).__name__ == "Gemma3nBackbone"
    hidden = backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    logits = backbone.language_model.token_embedding(hidden, reverse=True)
    return keras.ops.convert_to_numpy(hidden), keras.ops.convert_to_numpy(logits)


def _hf_outputs(model, ids: np.ndarray = IDS) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        hidden = model.model(torch.from_numpy(ids)).last_hidden_state
        return hidden.numpy(), model(torch.from_numpy(ids)).logits.numpy()


# ----------------------------------------------------------------------------- the Keras name table
def test_keras_table_is_keras_hubs_own_layout(tiny, tmp_path):
    """Every variable keras-hub's save_to_preset writes for this config (path and shape) is one our writer writes,
    and no other: built from our config.json by keras-hub itself."""
    import h5py
    import keras_hub

    d, _ = tiny
    ours = str(tmp_path / "ours")
    _convert(d, ours, "keras")
    cfg = json.loads(open(os.path.join(ours, "config.json")).read())
    backbone = keras_hub.models.Gemma3nBackbone.from_config(cfg["config"])
    theirs = str(tmp_path / "theirs")
    backbone.save_to_preset(theirs)

    def datasets(path: str) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        with h5py.File(os.path.join(path, "model.weights.h5")) as f:
            f.visititems(lambda n, o: out.__setitem__(n, o.shape) if isinstance(o, h5py.Dataset) else None)
        return out

    assert datasets(ours) == datasets(theirs)
    assert len(datasets(ours)) == 131  # the 125 HF tensors (lm_head tied) + k/v/k_norm on the 2 KV-shared layers
    their_cfg = json.loads(open(os.path.join(theirs, "config.json")).read())
    assert their_cfg == cfg  # the same keys, order and values as keras-hub's get_config


def test_keras_names_both_ways():
    from gemma_inspect.formats.keras_gemma3n import LM_PREFIX, hf_name_of, keras_shape, keras_var

    v, path, layer = keras_var("model.altup_projections.2.weight")  # type: ignore[misc]
    assert (path, layer, v.layout) == ("altup_projections/dense_2/vars/0", "altup_projection_3", "T")
    assert hf_name_of(path)[1] == "model.altup_projections.2.weight"  # type: ignore[index]
    v, path, layer = keras_var("model.layers.12.altup.correct_output_scale")  # type: ignore[misc]
    assert path == "transformer_layers/gemma3n_text_decoder_block_12/altup/vars/0" and layer == "altup"
    v, path, _ = keras_var("model.layers.0.laurel.linear_left.weight")  # type: ignore[misc]
    assert path == "transformer_layers/gemma3n_text_decoder_block/laurel/linear_left/vars/0"
    assert keras_shape(v, (64, 2048)) == (2048, 64)
    assert keras_var("model.layers.0.self_attn.v_norm.weight") is None  # weightless: nothing stored
    assert LM_PREFIX == "layers/gemma3n_multimodal_embedding_processor/language_model/"


@pytest.mark.parametrize("card_name", ["gemma3n-e2b", "gemma3n-e4b"])
def test_every_tensor_of_a_card_has_one_keras_and_one_gguf_name(card_name):
    """Every tensor a released shape holds maps to one Keras variable and one GGUF tensor of llama.cpp's gemma3n
    table (the AltUp projections: 3 to one stack), and back."""
    import gguf

    from gemma_inspect.checkpoint import expected_tensors
    from gemma_inspect.formats.gguf_gemma3n import gguf_var, hf_names_of
    from gemma_inspect.formats.keras_gemma3n import hf_name_of, keras_var
    from gemma_inspect.spec import card

    spec = card(card_name)
    llama_names = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GEMMA3N]}
    paths, gguf_names = set(), {}
    for name in expected_tensors(spec):
        _, path, _ = keras_var(name)  # type: ignore[misc]
        assert hf_name_of(path)[1] == name  # type: ignore[index]
        paths.add(path)
        _, gname, _ = gguf_var(name)  # type: ignore[misc]
        assert re.sub(r"blk\.\d+\.", "blk.{bid}.", gname[:-len(".weight")]) in llama_names
        assert name in hf_names_of(gname, spec.altup_num_inputs)[1]  # type: ignore[index]
        gguf_names.setdefault(gname, []).append(name)
    assert len(paths) == len(expected_tensors(spec))
    stacked = {g: n for g, n in gguf_names.items() if len(n) > 1}
    assert sorted(stacked) == ["altup_proj.weight", "altup_unembd_proj.weight"]
    assert all(len(n) == 3 for n in stacked.values())


# ----------------------------------------------------------------------------- HF <-> Keras
def test_hf_to_keras_runs_in_keras_hub_as_in_transformers(tiny, tmp_path):
    d, m = tiny
    out = str(tmp_path / "k")
    text = _convert(d, out, "keras")
    assert "keras-hub builds k/v/k_norm on the KV-shared layers 3-4 and never reads them there" in text
    hidden, logits = _keras_outputs(out)
    want_hidden, want_logits = _hf_outputs(m)
    assert np.abs(hidden - want_hidden).max() < 1e-4
    assert np.abs(logits - want_logits).max() < 1e-4
    assert np.abs(want_logits).max() > 0.3  # not a vacuous comparison
    cfg = json.loads(open(os.path.join(out, "config.json")).read())["config"]
    assert cfg["intermediate_size"] == [48, 48, 64, 48, 48]
    assert cfg["activation_sparsity_pattern"] == [0.95, 0.95, 0.0, 0.0, 0.0]
    assert (cfg["num_kv_shared_layers"], cfg["vocab_size_per_layer_input"], cfg["rope_local_base_freq"]) == \
        (2, 80, 10000.0)


def test_keras_to_hf_is_bit_exact(tiny, tmp_path):
    from transformers import Gemma3nForCausalLM

    d, m = tiny
    k, back = str(tmp_path / "k"), str(tmp_path / "hf")
    _convert(d, k, "keras")
    text = _convert(k, back, "hf")
    assert "6 k/v/k_norm variables of the KV-shared layers 3-4 set aside" in text
    assert _same_tensors(d, back) == 125
    model = Gemma3nForCausalLM.from_pretrained(back).float().eval()
    for key in ("intermediate_size", "activation_sparsity_pattern", "num_kv_shared_layers", "layer_types",
                "vocab_size_per_layer_input", "rope_parameters", "bos_token_id", "eos_token_id"):
        assert getattr(model.config, key) == getattr(m.config, key), key
    assert np.array_equal(_hf_outputs(model)[1], _hf_outputs(m)[1])


def test_preset_saved_by_keras_hub_reads_and_converts(tmp_path):
    """A Gemma3nBackbone keras-hub built and saved itself (its own random weights, k/v on the shared layers): read,
    converted to HF, transformers computes what keras-hub computes."""
    import keras
    import keras_hub
    from transformers import Gemma3nForCausalLM

    from gemma_inspect.formats.keras_gemma3n import keras_config

    keras.utils.set_random_seed(5)
    hf_cfg = {**TINY5, "hidden_activation": "gelu_pytorch_tanh", "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}, "pad_token_id": 0,
        "altup_num_inputs": 4, "altup_active_idx": 0, "altup_correct_scale": True, "altup_coef_clip": 120.0,
        "rms_norm_eps": 1e-6}
    backbone = keras_hub.models.Gemma3nBackbone.from_config(keras_config(hf_cfg, "float32")["config"])
    for w in backbone.weights:  # norms and the AltUp scale away from their initial 1 / 0
        if w.path.endswith(("scale", "altup/variable")) or "norm" in w.path:
            w.assign(1 + 0.1 * np.random.default_rng(len(w.path)).standard_normal(w.shape).astype("float32"))
    preset = str(tmp_path / "preset")
    backbone.save_to_preset(preset)
    s = json.loads(run("summary", preset, "--json").stdout)
    assert s["format"] == "keras" and s["family"] == "gemma3n" and s["architecture"]["num_kv_shared_layers"] == 2
    out = str(tmp_path / "hf")
    _convert(preset, out, "hf")
    model = Gemma3nForCausalLM.from_pretrained(out).float().eval()
    hidden, logits = _keras_outputs(preset)
    want_hidden, want_logits = _hf_outputs(model)
    assert np.abs(hidden - want_hidden).max() < 1e-4 and np.abs(logits - want_logits).max() < 1e-4


def test_multimodal_preset_reads_its_text_decoder(tmp_path):
    """keras-hub's Gemma3nBackbone with both encoders (its docstring's tiny shapes) keeps the text decoder at the
    same place: read, the encoders reported and left out, the decoder's variables converted as they are."""
    import keras_hub
    from keras_hub.src.models.gemma3n.gemma3n_audio_encoder import Gemma3nAudioEncoder
    from keras_hub.src.models.mobilenetv5.mobilenetv5_backbone import MobileNetV5Backbone
    from keras_hub.src.models.mobilenetv5.mobilenetv5_builder import convert_arch_def_to_stackwise

    vision = MobileNetV5Backbone(**convert_arch_def_to_stackwise([["er_r1_k3_s1_e1_c16"]]), num_features=4,
                                 image_shape=(224, 224, 3), use_msfa=False)
    audio = Gemma3nAudioEncoder(hidden_size=8, input_feat_size=32, sscp_conv_channel_size=[4, 8],
                                sscp_conv_kernel_size=[(3, 3), (3, 3)], sscp_conv_stride_size=[(2, 2), (2, 2)],
                                sscp_conv_group_norm_eps=1e-5, num_hidden_layers=1, rms_norm_eps=1e-6,
                                gradient_clipping=1.0, residual_weight=0.5, num_attention_heads=1,
                                attention_chunk_size=4, num_attention_context_right=5, num_attention_context_left=5,
                                attention_logit_cap=50.0, conv_kernel_size=5, reduction_factor=1)
    backbone = keras_hub.models.Gemma3nBackbone(
        text_vocab_size=50, text_hidden_size=8, num_hidden_layers=2, pad_token_id=0, num_attention_heads=1,
        num_key_value_heads=1, head_dim=8, intermediate_size=[16, 16], hidden_activation="gelu_approximate",
        layer_types=["sliding_attention", "full_attention"], sliding_window=4, rope_theta=10000.0,
        max_position_embeddings=16, vocab_size_per_layer_input=50, hidden_size_per_layer_input=2, altup_num_inputs=2,
        laurel_rank=1, vision_encoder_config=vision.get_config(), vision_hidden_size=16,
        audio_encoder_config=audio.get_config(), audio_hidden_size=8)
    preset, out = str(tmp_path / "preset"), str(tmp_path / "hf")
    backbone.save_to_preset(preset)
    text = _convert(preset, out, "hf")
    assert "multimodal Keras Gemma 3n preset: the vision and audio encoders are reported and ignored" in text
    assert "multimodal source: only the text decoder was converted (44 vision/audio encoder and embedder tensors " \
           "left out)" in text
    got = _hf_tensors(out)
    assert len(got) == 55  # 99 datasets: 55 of the text decoder, 44 of the encoders and their embedders
    lm = backbone.language_model
    assert np.array_equal(got["model.altup_projections.0.weight"].numpy(), lm.altup_projections[0].kernel.numpy().T)
    layer = lm.transformer_layers[1]
    assert np.array_equal(got["model.layers.1.altup.correct_output_scale"].numpy(),
                          layer.altup.correct_output_scale.numpy())
    assert np.array_equal(got["model.layers.1.laurel.linear_right.weight"].numpy(),
                          layer.laurel.linear_right.kernel.numpy().T)


# ----------------------------------------------------------------------------- GGUF
def test_sparsity_quantiles_round_trip():
    from gemma_inspect.formats.gguf_gemma3n import sparsity_of_scale, sparsity_scale

    for p in (0.0, 0.95, 0.9, 0.5, 0.99, 0.123, 0.9500001, 0.75):
        assert sparsity_of_scale(sparsity_scale(p), "x") == p
    assert sparsity_scale(0.0) == -math.inf
    assert sparsity_scale(0.95) == float(torch.distributions.Normal(0, 1).icdf(torch.tensor(0.95)))
    assert sparsity_of_scale(1.6448533535003662, "x") == 0.95  # what llama.cpp's graph hard-codes (an older torch)


def test_hf_to_gguf_is_llama_cpps_layout(llama_shaped, tmp_path):
    from gguf import GGUFReader

    d, m = llama_shaped
    out = str(tmp_path / "m.gguf")
    _convert(d, out, "gguf")
    r = GGUFReader(out)
    f = {k: v.contents() for k, v in r.fields.items()}
    t = {x.name: x for x in r.tensors}
    sd = m.state_dict()
    assert f["general.architecture"] == "gemma3n"
    assert f["gemma3n.feed_forward_length"] == [48] * L22 and f["gemma3n.block_count"] == L22
    assert f["gemma3n.attention.shared_kv_layers"] == 2 and f["gemma3n.altup.num_inputs"] == 4
    assert f["gemma3n.embedding_length_per_layer_input"] == 256 and f["gemma3n.altup.active_idx"] == 0
    assert f["gemma3n.attention.sliding_window_pattern"] == [t_ == "sliding_attention" for t_ in m.config.layer_types]
    icdf = float(np.float32(torch.distributions.Normal(0, 1).icdf(torch.tensor(0.95))))
    assert f["gemma3n.activation_sparsity_scale"] == [icdf] * 10 + [-math.inf] * 12
    assert f["gemma_inspect.vocab_size_per_layer_input"] == 80
    # AltUp projections stacked in HF's order: GGUF ne [H, H, 3], numpy [3, H, H]
    assert t["altup_proj.weight"].shape.tolist() == [32, 32, 3]
    stack = np.asarray(t["altup_proj.weight"].data).reshape(3, 32, 32)
    for k in range(3):
        assert np.array_equal(stack[k], sd[f"model.altup_projections.{k}.weight"].numpy())
    unembed = np.asarray(t["altup_unembd_proj.weight"].data).reshape(3, 32, 32)
    assert np.array_equal(unembed[2], sd["model.altup_unembed_projections.2.weight"].numpy())
    # the per-layer table zero-padded from 80 to vocab_size 96 rows
    ple = np.asarray(t["per_layer_token_embd.weight"].data).reshape(96, L22 * 256)
    assert np.array_equal(ple[:80], sd["model.embed_tokens_per_layer.weight"].numpy()) and not ple[80:].any()
    # norms as they are (no +1), in float32; correct_output_scale under its .weight name
    assert np.array_equal(np.asarray(t["blk.3.attn_norm.weight"].data), sd["model.layers.3.input_layernorm.weight"])
    assert np.array_equal(np.asarray(t["blk.7.altup_correct_scale.weight"].data),
                          sd["model.layers.7.altup.correct_output_scale"])
    # llama.cpp's loader requires k/v/k_norm on the KV-shared layers too, which transformers does not save: zeros
    # (k_norm ones), never read there
    assert "model.layers.20.self_attn.k_proj.weight" not in sd and "blk.19.attn_k.weight" in t
    for i in (20, 21):
        for kind in ("k", "v"):
            assert not np.asarray(t[f"blk.{i}.attn_{kind}.weight"].data).any()
        assert (np.asarray(t[f"blk.{i}.attn_k_norm.weight"].data) == 1).all()
    assert "output.weight" not in t  # tied


def test_gguf_to_hf_is_bit_exact(llama_shaped, tmp_path):
    d, m = llama_shaped
    g, back = str(tmp_path / "m.gguf"), str(tmp_path / "hf")
    _convert(d, g, "gguf")
    _convert(g, back, "hf")
    assert _same_tensors(d, back) == 533
    s = json.loads(run("summary", g, "--json").stdout)
    a = s["architecture"]
    assert a["activation_sparsity"] == m.config.activation_sparsity_pattern
    assert (a["per_layer_vocab_size"], a["vocab_size"], a["num_kv_shared_layers"]) == (80, 96, 2)
    assert s["parameters"]["total"] == m.num_parameters()
    assert json.loads(run("summary", back, "--json").stdout)["architecture"] == json.loads(
        run("summary", d, "--json").stdout)["architecture"]


def test_gguf_metadata_as_llama_cpps_converter_wrote_it(llama_shaped, tmp_path):
    """A file without our key and rope.freq_base_swa, shared_kv_layers as the FLOAT32 of gguf-py's first gemma3n
    writer, the quantile of an older torch (llama.cpp's hard-coded 1.6448533535): read as llama.cpp reads it."""
    from gemma_inspect.formats import gguf_gemma3n as G3
    from gemma_inspect.formats.gguf_header import read_header

    d, _ = llama_shaped
    out = str(tmp_path / "m.gguf")
    _convert(d, out, "gguf")
    header = read_header(out)
    md = header.metadata
    del md[G3.PER_LAYER_VOCAB_KEY], md["gemma3n.rope.freq_base_swa"]
    md["gemma3n.attention.shared_kv_layers"] = 2.0
    header.value_types["gemma3n.attention.shared_kv_layers"] = "FLOAT32"
    md["gemma3n.activation_sparsity_scale"] = np.array([1.6448533535003662] * 10 + [-np.inf] * 12, np.float32)
    cfg, notes, assumed = G3.hf_config(header, out)
    assert cfg["num_kv_shared_layers"] == 2
    assert cfg["activation_sparsity_pattern"] == [0.95] * 10 + [0.0] * 12
    assert cfg["rope_parameters"]["sliding_attention"]["rope_theta"] == 10000.0
    assert cfg["vocab_size_per_layer_input"] == 96  # no key and fewer rows than 262,144: the table as it is
    assert assumed == {"rope_local_theta", "per_layer_vocab_size"}
    assert notes == ["gemma_inspect.vocab_size_per_layer_input is absent: the per-layer table is read as 96 rows "
                     "(all it holds: no padding assumed)"]


def test_gguf_writer_refuses_what_llama_cpp_hard_codes(tiny, tmp_path):
    d, _ = tiny
    out = tmp_path / "m.gguf"
    r = run("convert", d, str(out), "--to", "gguf")
    assert r.exit_code == 2 and not out.exists()
    assert r.output == ("Error: GGUF cannot express this checkpoint faithfully: 3 layers computing K/V (2 KV-shared "
                        "of 5): llama.cpp's gemma3n computes K/V on the first 20 layers whatever the file says; "
                        "activation sparsity [0.95, 0.95, 0.0, 0.0, 0.0]: llama.cpp's gemma3n applies 0.95 on the "
                        "first 10 layers whatever the file says; per-layer inputs 4 wide: llama.cpp's gemma3n reads "
                        "256 whatever embedding_length_per_layer_input says; LAuReL rank 4: llama.cpp's gemma3n "
                        "requires 64 (use --force to write it anyway)\n")
    text = _convert(d, str(out), "gguf", "--force")
    assert "--force: 3 layers computing K/V" in text
    back = str(tmp_path / "hf")
    _convert(str(out), back, "hf")  # what the file says is still read back exactly
    assert _same_tensors(d, back) == 125


def test_diff_across_formats_is_identical(llama_shaped, tmp_path):
    d, _ = llama_shaped
    k, g = str(tmp_path / "k"), str(tmp_path / "m.gguf")
    _convert(d, k, "keras")
    _convert(d, g, "gguf")
    for a, b in ((d, k), (d, g), (g, k)):
        r = run("diff", a, b)
        assert r.exit_code == 0, r.output
        assert r.output.splitlines()[-1] == "533 equal: identical"


def test_gguf_q8_0_keeps_vectors_in_float32(llama_shaped, tmp_path):
    from gguf import GGUFReader

    d, m = llama_shaped
    out = str(tmp_path / "q.gguf")
    _convert(d, out, "gguf", "--dtype", "q8_0")
    t = {x.name: x for x in GGUFReader(out).tensors}
    assert t["blk.0.attn_q.weight"].tensor_type.name == "Q8_0"
    assert t["blk.0.altup_correct_scale.weight"].tensor_type.name == "F32"
    assert t["blk.0.altup_correct_coef.weight"].tensor_type.name == "F16"  # rows of 4: no whole Q8_0 block
    back = str(tmp_path / "hf")
    _convert(out, back, "hf")
    x, y = _hf_tensors(d), _hf_tensors(back)
    w = x["model.layers.0.self_attn.q_proj.weight"]
    assert 0 < (y["model.layers.0.self_attn.q_proj.weight"] - w).abs().max() < w.abs().max() / 64


def test_keras_preset_runs_on_the_reference_runtime(llama_shaped, tmp_path):
    """`auto` runs a Gemma3nBackbone preset on the reference runtime (the keras runtime does not drive that backbone
    yet, and says so in one line when asked): parity with the HF source passes."""
    d, _ = llama_shaped
    k = str(tmp_path / "k")
    _convert(d, k, "keras")
    r = run("parity", d, k, "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["b"]["runtime"] == "reference" and result["passed"] is True
    r = run("verify", k, "--runtime", "keras")
    assert r.exit_code == 2
    assert r.output.splitlines()[-1] == (f"Error: {k}: the keras runtime does not run Gemma 3n (text) (keras-hub's "
                                         f"Gemma3nBackbone) yet; use --runtime reference or transformers")


@pytest.mark.parametrize("shard", [None, "20KB"])
def test_keras_bfloat16_and_shards_round_trip(tiny, tmp_path, shard):
    """--dtype bfloat16 to Keras (opaque 2-byte datasets tagged bfloat16, as Keras writes them), sharded or not, and
    back: exactly the source cast to bfloat16."""
    d, _ = tiny
    k, back = str(tmp_path / "k"), str(tmp_path / "hf")
    _convert(d, k, "keras", "--dtype", "bfloat16", *(["--max-shard-size", shard] if shard else []))
    assert os.path.exists(os.path.join(k, "model.weights.json")) == bool(shard)
    _convert(k, back, "hf")
    x, y = _hf_tensors(d), _hf_tensors(back)
    assert sorted(x) == sorted(y)
    for n in x:
        assert y[n].dtype == torch.bfloat16 and torch.equal(x[n].to(torch.bfloat16), y[n]), n


def test_tokenizer_travels_to_keras_and_through_gguf(tmp_path, tiny_tokenizer):
    """The SentencePiece model goes into the Keras preset byte for byte (with keras-hub's Gemma3n tokenizer,
    preprocessor and task configs) and into the GGUF's vocabulary, from which the HF output's tokenizer gives the
    same ids."""
    import shutil

    import sentencepiece as spm

    d = str(tmp_path / "hf")
    build(d, seed=6, **{**LLAMA_SHAPED, "vocab_size": 384, "vocab_size_per_layer_input": 300})
    shutil.copyfile(tiny_tokenizer, os.path.join(d, "tokenizer.model"))
    k, g, back = str(tmp_path / "k"), str(tmp_path / "m.gguf"), str(tmp_path / "back")
    _convert(d, k, "keras")
    assert open(os.path.join(k, "assets", "tokenizer", "vocabulary.spm"), "rb").read() == \
        open(tiny_tokenizer, "rb").read()
    classes = [json.loads(open(os.path.join(k, f)).read())["class_name"]
               for f in ("tokenizer.json", "preprocessor.json", "task.json")]
    assert classes == ["Gemma3nTokenizer", "Gemma3nCausalLMPreprocessor", "Gemma3nCausalLM"]
    _convert(d, g, "gguf")
    _convert(g, back, "hf")
    text = "The quick brown fox jumps over the lazy dog. <start_of_turn>user"
    want = spm.SentencePieceProcessor(model_file=tiny_tokenizer).encode(text)
    assert spm.SentencePieceProcessor(model_file=os.path.join(back, "tokenizer.model")).encode(text) == want


# ----------------------------------------------------------------------------- llama.cpp
@pytest.mark.slow
def test_llama_cpp_runs_our_gguf_as_transformers(tmp_path, tiny_tokenizer, monkeypatch):
    """llama.cpp (llama-cpp-python) loads our gemma3n GGUF of a model shaped as it hard-codes (22 layers, 2 KV-shared,
    sparsity 0.95 on the first 10, per-layer inputs 256 wide, LAuReL rank 64) and computes transformers' logits once
    transformers' Gaussian top-k takes the variance as llama.cpp does (divided by n - 1, not n): within 2% of their
    scale (ggml's own GELU and accumulation), the same argmax everywhere. As transformers runs (divided by n) they
    differ by far more on this model: 48 FFN units, so the cut-off moves by sqrt(48 / 47) and the few units above it
    change (on the released widths, 8,192 and up, the factor is 1.00006). Ids stay inside the per-layer table (beyond
    it llama.cpp reads the zero padding where transformers reads row 0)."""
    import shutil

    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it builds from source)")
    d = str(tmp_path / "hf")
    m = build(d, seed=6, **{**LLAMA_SHAPED, "vocab_size": 384, "vocab_size_per_layer_input": 300})
    shutil.copyfile(tiny_tokenizer, os.path.join(d, "tokenizer.model"))
    g = str(tmp_path / "m.gguf")
    _convert(d, g, "gguf")
    ids = [2, 17, 40, 5, 99, 250, 31, 8, 77, 120, 64, 3, 200, 11, 45, 9]
    llm = llama_cpp.Llama(model_path=g, n_ctx=64, logits_all=True, verbose=False)
    llm.eval(ids)
    got = np.asarray(llm.scores)[: len(ids)]
    with torch.no_grad():
        as_transformers = m(torch.tensor([ids])).logits[0].numpy()
    std = torch.std

    def unbiased_std(x, *args, **kwargs):  # transformers asks for unbiased=False (divide by n)
        kwargs.pop("unbiased", None)
        return std(x, *args, **kwargs)

    monkeypatch.setattr(torch, "std", unbiased_std)
    with torch.no_grad():
        want = m(torch.tensor([ids])).logits[0].numpy()
    assert got.shape == want.shape == (len(ids), 384)
    scale = float(np.abs(want).max())
    assert float(np.abs(got - want).max()) <= 0.02 * scale
    assert (got.argmax(-1) == want.argmax(-1)).all()
    assert float(np.abs(got - as_transformers).max()) > 0.1 * scale  # the n - 1 is what separates them here
