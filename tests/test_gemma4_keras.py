"""Gemma 4 and keras-hub's Gemma4Backbone: `convert` both ways (transformers and keras-hub load what it writes and
compute the source's logits), a model keras-hub built itself, keras-hub's own exporter on a K=V model (which
transformers cannot load) against ours, the tokenizer both ways, `diff` across formats, the text decoder of a
multimodal checkpoint, and `parity` on the keras runtime.

Every expected value comes from the running models (transformers', keras-hub's) or from the files, never from this
package."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from test_gemma4 import DENSE_LAYERS, FULL, SLIDING, _build, dense, moe, run, summary_json  # noqa: F401

# longer than the fixtures' sliding window (4), every id below their vocabulary (64)
IDS = [2, 5, 9, 17, 33, 40, 41, 7, 8, 63, 12, 3, 30, 31]
TEXTS = ("Hello world", "  leading and trailing  spaces  ", "tabs\tand\nnewlines\n", "digits 12345 and ümlauts",
         "<start_of_turn>user\nWhat is Gemma?<end_of_turn>")


def _convert(src: str, dest: str, to: str) -> str:
    r = run("convert", src, dest, "--to", to)
    assert r.exit_code == 0, r.output
    return r.output


def _keras():
    from gemma_inspect.runtimes.keras_rt import import_keras

    import_keras()
    import keras_hub

    return keras_hub


def _keras_logits(backbone, ids=IDS) -> np.ndarray:
    """keras-hub's own forward (the functional model), then its tied, soft-capped output."""
    x = np.asarray([ids], dtype="int32")
    h = backbone({"token_ids": x, "padding_mask": np.ones_like(x),
                  "position_ids": np.arange(len(ids), dtype="int32")[None]})
    return np.asarray(backbone.token_embedding(h, reverse=True).detach().cpu())


def _hf_logits(model, ids=IDS) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.tensor([ids])).logits.numpy()


def _load_hf(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@pytest.fixture(scope="module")
def kerased(dense, moe, tmp_path_factory):
    """Both tiny transformers models converted to keras-hub presets, and back to HF."""
    out = {}
    for name, (src, model) in (("dense", dense), ("moe", moe)):
        root = tmp_path_factory.mktemp(f"g4k-{name}")
        k, back = str(root / "keras"), str(root / "back")
        _convert(src, k, "keras")
        _convert(k, back, "hf")
        out[name] = (src, model, k, back)
    return out


@pytest.mark.parametrize("name", ["dense", "moe"])
def test_hf_to_keras_runs_in_keras_hub_like_transformers(kerased, name):
    src, model, k, _ = kerased[name]
    bb = _keras().models.Backbone.from_preset(k)
    assert type(bb).__name__ == "Gemma4Backbone"
    want = _hf_logits(model)
    got = _keras_logits(bb)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    layers = model.model.layers
    for i, block in enumerate(bb.transformer_layers):
        # the stored layer scalars arrive (a converter dropping them would leave keras-hub's 1.0)
        assert float(block.layer_scalar.numpy()) == float(layers[i].layer_scalar)
        attn = block.attention
        assert attn.is_kv_shared_layer == layers[i].self_attn.is_kv_shared_layer
        if name == "moe" and model.config.layer_types[i] == FULL:  # K=V: no value kernel on either side
            assert attn.value_dense is None and layers[i].self_attn.v_proj is None
    if name == "dense":  # the shared layers hold no k/v on either side (keras-hub builds none, transformers too)
        for i in (4, 5):
            assert not [v.path for v in bb.transformer_layers[i].attention.weights if "key" in v.path]
            assert not hasattr(layers[i].self_attn, "k_proj")


@pytest.mark.parametrize("name", ["dense", "moe"])
def test_hf_keras_hf_gives_back_the_same_tensors_and_model(kerased, name):
    src, model, k, back = kerased[name]
    a, b = load_file(os.path.join(src, "model.safetensors")), load_file(os.path.join(back, "model.safetensors"))
    assert sorted(a) == sorted(b)
    for n in a:
        assert torch.equal(torch.from_numpy(a[n]), torch.from_numpy(b[n])), n
    sa, sb = summary_json(src), summary_json(back)
    assert sa["architecture"] == sb["architecture"] and sa["parameters"] == sb["parameters"]
    m2 = _load_hf(back)
    assert m2.config.attention_k_eq_v == model.config.attention_k_eq_v
    def geometry(cfg):
        return [(c.head_dim, c.num_key_value_heads) for c in cfg.per_layer_config]

    assert geometry(m2.config) == geometry(model.config)
    np.testing.assert_allclose(_hf_logits(m2), _hf_logits(model), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shard", [None, "60KB"])
def test_keras_bfloat16_and_shards_round_trip(moe, tmp_path, shard):
    """--dtype bfloat16 to Keras, sharded or not (the scalar layer_scalar and the split expert banks among the
    datasets), loaded by keras-hub, and back: exactly the source cast to bfloat16."""
    from safetensors.torch import load_file as load_torch

    src, model = moe
    k, back = str(tmp_path / "k"), str(tmp_path / "hf")
    r = run("convert", src, k, "--to", "keras", "--dtype", "bfloat16", *(["--max-shard-size", shard] if shard else []))
    assert r.exit_code == 0, r.output
    assert os.path.exists(os.path.join(k, "model.weights.json")) == bool(shard)
    bb = _keras().models.Backbone.from_preset(k)
    block = bb.transformer_layers[3]
    assert float(block.layer_scalar.numpy()) == float(model.model.layers[3].layer_scalar.to(torch.bfloat16))
    fused = model.model.layers[3].experts.gate_up_proj.detach().to(torch.bfloat16).float()
    up = torch.from_numpy(np.asarray(block.moe_expert_bank.up_proj.numpy(), dtype="float32"))
    assert torch.equal(up, fused[:, 8:, :].transpose(1, 2))
    _convert(k, back, "hf")
    x, y = load_torch(os.path.join(src, "model.safetensors")), load_torch(os.path.join(back, "model.safetensors"))
    assert sorted(x) == sorted(y)
    for n in x:
        assert y[n].dtype == torch.bfloat16 and torch.equal(x[n].to(torch.bfloat16), y[n]), n


def test_keras_preset_is_what_keras_hub_writes(kerased):
    """The variable paths and shapes of our preset are those of keras-hub's own save of the same backbone."""
    import h5py

    keras_hub = _keras()
    _, _, k, _ = kerased["moe"]
    bb = keras_hub.models.Backbone.from_preset(k)
    own = os.path.join(os.path.dirname(k), "own")
    bb.save_to_preset(own)

    def shapes(path):
        out = {}
        with h5py.File(os.path.join(path, "model.weights.h5")) as f:
            f.visititems(lambda n, o: out.__setitem__(n, o.shape) if isinstance(o, h5py.Dataset) else None)
        return out

    assert shapes(k) == shapes(own)
    assert json.load(open(os.path.join(k, "config.json"))) == json.load(open(os.path.join(own, "config.json")))


# ----------------------------------------------------------------------------- a model keras-hub built itself
NATIVE = dict(vocabulary_size=64, image_size=None, num_layers=5, num_query_heads=4, num_key_value_heads=2,
              hidden_dim=32, intermediate_dim=48, head_dim=8, global_head_dim=16, final_logit_soft_cap=30.0,
              sliding_window_size=4, layer_types=[SLIDING, FULL, SLIDING, SLIDING, FULL], num_global_key_value_heads=1,
              hidden_size_per_layer_input=4, vocab_size_per_layer_input=64, num_kv_shared_layers=2,
              global_rope_partial_rotary_factor=0.25, global_rope_wavelength=1e6, local_rope_wavelength=1e4,
              enable_moe_block=True, num_experts=4, expert_intermediate_dim=8, num_experts_per_token=2)


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """A Gemma4Backbone keras-hub built and saved itself: K=V full layers with one K/V head, experts, PLE, KV
    sharing; seeded weights, norms around 1, layer scalars in [0.3, 0.9]."""
    keras_hub = _keras()
    import keras

    keras.utils.set_random_seed(3)
    bb = keras_hub.models.Gemma4Backbone(**NATIVE, dtype="float32")
    rng = np.random.default_rng(3)
    for v in bb.weights:
        if v.path.endswith("layer_scalar"):
            v.assign(rng.uniform(0.3, 0.9, v.shape).astype("float32"))
        elif "norm" in v.path or v.path.endswith(("per_dim_scale", "per_expert_scale")):
            v.assign((1 + 0.1 * rng.standard_normal(v.shape)).astype("float32"))
        else:
            v.assign((0.05 * rng.standard_normal(v.shape)).astype("float32"))
    path = str(tmp_path_factory.mktemp("g4-native") / "preset")
    bb.save_to_preset(path)
    return path, bb, _keras_logits(bb)


def test_keras_hub_model_to_hf_matches_keras_hub(native, tmp_path):
    path, bb, want = native
    dest = str(tmp_path / "hf")
    out = _convert(path, dest, "hf")
    assert "max_position_embeddings is not stored in a Keras config; assuming 131072" in out
    cfg = json.load(open(os.path.join(dest, "config.json")))
    assert cfg["attention_k_eq_v"] is True and cfg["num_global_key_value_heads"] == 1
    model, info = _load_hf_info(dest)
    assert not any(info.values()), info
    got = _hf_logits(model)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    scalars = [float(b.layer_scalar.numpy()) for b in bb.transformer_layers]
    assert [float(layer.layer_scalar) for layer in model.model.layers] == scalars
    # and back: the same variables keras-hub saved
    again = str(tmp_path / "keras")
    _convert(dest, again, "keras")
    r = run("diff", path, again, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["identical"] is True


def _load_hf_info(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)


def test_keras_hubs_exporter_loses_k_eq_v_where_ours_does_not(native, tmp_path):
    """keras-hub 0.32's exporter (what Gemma4CausalLM.export_to_transformers runs) writes no attention_k_eq_v and
    names a model without an LM head: transformers reads the K=V layers as having a v_proj and K/V heads of the
    sliding layers, and refuses the file. With the mismatch ignored it runs re-initialised k/v - other logits."""
    from keras_hub.src.utils.transformers.export.hf_exporter import export_backbone
    from transformers import AutoModelForCausalLM

    path, bb, want = native
    theirs = str(tmp_path / "keras-hub-export")
    export_backbone(bb, theirs, include_lm_head=True)
    cfg = json.load(open(os.path.join(theirs, "config.json")))
    assert "attention_k_eq_v" not in cfg and cfg["num_global_key_value_heads"] == 1
    assert cfg["architectures"] == ["Gemma4TextModel"]  # transformers' decoder without the LM head
    with pytest.raises(RuntimeError, match="mismatch"):
        AutoModelForCausalLM.from_pretrained(theirs, dtype=torch.float32)
    broken, info = AutoModelForCausalLM.from_pretrained(theirs, dtype=torch.float32, ignore_mismatched_sizes=True,
                                                        output_loading_info=True)
    assert "model.layers.1.self_attn.v_proj.weight" in info["missing_keys"]
    assert np.abs(_hf_logits(broken) - want).max() > 100 * 1e-4 * np.abs(want).max()
    ours = str(tmp_path / "ours")
    _convert(path, ours, "hf")
    assert json.load(open(os.path.join(ours, "config.json")))["architectures"] == ["Gemma4ForCausalLM"]
    assert np.abs(_hf_logits(_load_hf(ours)) - want).max() < 1e-4 * np.abs(want).max()


def test_keras_hubs_exporter_loses_proportional_rope_where_ours_does_not(kerased, tmp_path):
    """Without K=V too: keras-hub's exporter writes rope_parameters without a rope_type, so transformers reads the full
    layers' RoPE as "default" with partial_rotary_factor 0.25 instead of Gemma 4's "proportional" one. The file
    loads without a word and computes other logits; ours (Keras -> HF) computes the source's."""
    keras_hub = _keras()
    src, model, k, back = kerased["dense"]
    theirs = str(tmp_path / "keras-hub-export")
    keras_hub.models.Backbone.from_preset(k).export_to_transformers(theirs)
    full = json.load(open(os.path.join(theirs, "config.json")))["rope_parameters"]["full_attention"]
    assert "rope_type" not in full and full["partial_rotary_factor"] == 0.25
    loaded, info = _load_hf_info(theirs)
    assert not any(info.values()), info  # nothing missing, nothing mismatched
    assert loaded.config.rope_parameters["full_attention"]["rope_type"] == "default"
    want = _hf_logits(model)
    assert np.abs(_hf_logits(loaded) - want).max() > 100 * 1e-4 * np.abs(want).max()
    assert json.load(open(os.path.join(back, "config.json")))["rope_parameters"]["full_attention"]["rope_type"] \
        == "proportional"
    assert np.abs(_hf_logits(_load_hf(back)) - want).max() < 1e-4 * np.abs(want).max()


# ----------------------------------------------------------------------------- diff across formats
def test_diff_hf_vs_keras_in_canonical_names(kerased, tmp_path):
    import h5py

    src, _, k, _ = kerased["moe"]
    r = run("diff", src, k, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["identical"] is True and out["counts"]["equal"] == len(load_file(os.path.join(src, "model.safetensors")))
    changed = str(tmp_path / "changed")
    shutil.copytree(k, changed)
    with h5py.File(os.path.join(changed, "model.weights.h5"), "r+") as f:
        ds = f["layers/gemma4_text_decoder_block_1/vars/0"]  # block 1's layer_scalar
        ds[()] = ds[()] + np.float32(0.25)
        pes = f["layers/gemma4_text_decoder_block_2/moe_expert_bank/vars/3"]  # block 2's per-expert scales
        arr = pes[()]
        arr[3] *= 2
        pes[()] = arr
    r = run("diff", src, changed, "--json")
    assert r.exit_code == 1, r.output
    out = json.loads(r.stdout)
    bad = {t["name"]: t["max_abs_diff"] for t in out["tensors"] if t["status"] != "equal"}
    a = load_file(os.path.join(src, "model.safetensors"))
    assert bad == pytest.approx({"model.layers.1.layer_scalar": 0.25,
                                 "model.layers.2.router.per_expert_scale":
                                     float(a["model.layers.2.router.per_expert_scale"][3])})


def test_unused_kv_on_shared_layers_is_set_aside(kerased, tmp_path):
    """keras-hub builds no k/v on the KV-shared layers and our writer writes none; a preset that holds them anyway
    (another tool's) reads with them set aside, said in a note, and the same tensors."""
    import h5py

    src, _, k, _ = kerased["dense"]
    with h5py.File(os.path.join(k, "model.weights.h5")) as f:
        assert not [n for n in f["layers/gemma4_text_decoder_block_4/attention"] if n.startswith(("key", "value"))]
    extra = str(tmp_path / "extra")
    shutil.copytree(k, extra)
    with h5py.File(os.path.join(extra, "model.weights.h5"), "r+") as f:
        for n, shape in (("key_dense", (2, 32, 8)), ("value_dense", (2, 32, 8)), ("key_norm", (8,))):
            f.create_dataset(f"layers/gemma4_text_decoder_block_4/attention/{n}/vars/0", data=np.zeros(shape, "f4"))
    r = run("diff", src, extra, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["identical"] is True
    r = run("summary", extra)
    assert r.exit_code == 0, r.output
    assert "3 k/v variables of layers 4 set aside: those layers reuse an earlier layer's keys and values (or take " \
           "V from K), and keras-hub never reads them" in " ".join(r.output.split())
    # the other way: an HF source storing them (Google's original E2B/E4B files) converts without them
    with_kv = str(tmp_path / "with-kv")
    shutil.copytree(src, with_kv)
    t = load_file(os.path.join(with_kv, "model.safetensors"))
    for i in (4, 5):
        hd = 16 if i == 5 else 8
        for n, shape in (("k_proj.weight", (2 * hd, 32)), ("v_proj.weight", (2 * hd, 32)), ("k_norm.weight", (hd,))):
            t[f"model.layers.{i}.self_attn.{n}"] = np.zeros(shape, "f4")
    save_file(t, os.path.join(with_kv, "model.safetensors"), metadata={"format": "pt"})
    k2 = str(tmp_path / "k2")
    _convert(with_kv, k2, "keras")
    r = run("diff", k, k2, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["identical"] is True, r.output
    _keras().models.Backbone.from_preset(k2)


# ----------------------------------------------------------------------------- the keras runtime
@pytest.mark.parametrize("name", ["dense", "moe"])
def test_parity_transformers_vs_keras_runtime(kerased, name):
    src, _, k, _ = kerased[name]
    r = run("parity", src, k, "--dtype", "float32", "--atol", "1e-4", "--json")
    assert r.exit_code == 0, r.output[-3000:]
    out = json.loads(r.stdout)
    assert out["passed"] is True
    assert out["a"]["runtime"] == "transformers" and out["b"]["runtime"] == "keras"


def test_parity_keras_runtime_within_the_measured_noise_floor(kerased):
    """Without --atol: judged against the float32 noise floor the float64 reference runtime measures."""
    src, _, k, _ = kerased["moe"]
    r = run("parity", src, k, "--dtype", "float32", "--json")
    assert r.exit_code == 0, r.output[-3000:]
    out = json.loads(r.stdout)
    assert out["passed"] is True and out["b"]["runtime"] == "keras"


def test_keras_runtime_builds_gemma4_from_an_hf_source(kerased):
    src, _, _, _ = kerased["moe"]
    r = run("parity", src, src, "--runtime-b", "keras", "--dtype", "float32", "--atol", "1e-4", "--json")
    assert r.exit_code == 0, r.output[-3000:]
    out = json.loads(r.stdout)
    assert out["passed"] is True and out["b"]["runtime"] == "keras"


# ----------------------------------------------------------------------------- tokenizer both ways
@pytest.fixture(scope="module")
def with_tokenizer(tiny_tokenizer, tmp_path_factory):
    """A tiny Gemma 4 with only a tokenizer.json (as Gemma 4 ships), written by transformers from the session's
    SentencePiece model."""
    from transformers import AutoTokenizer

    from gemma_inspect.tokenizer import spm_pieces

    n = len(spm_pieces(open(tiny_tokenizer, "rb").read())["pieces"])
    root = tmp_path_factory.mktemp("g4-tok")
    spm_dir = root / "spm"
    spm_dir.mkdir()
    shutil.copy(tiny_tokenizer, spm_dir / "tokenizer.model")
    (spm_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GemmaTokenizer"}))
    src = str(root / "hf")
    _build(src, 4, num_hidden_layers=6, layer_types=DENSE_LAYERS, vocab_size=n, vocab_size_per_layer_input=n,
           hidden_size_per_layer_input=4, num_kv_shared_layers=2)
    AutoTokenizer.from_pretrained(str(spm_dir)).save_pretrained(src)
    assert not os.path.exists(os.path.join(src, "tokenizer.model"))
    # transformers' GemmaTokenizer appends a <mask> beyond the SentencePiece vocabulary (id n, past the model's
    # embedding); a Gemma tokenizer.json has none
    tj, tc = os.path.join(src, "tokenizer.json"), os.path.join(src, "tokenizer_config.json")
    data = json.load(open(tj))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < n]
    json.dump(data, open(tj, "w"))
    json.dump({k: v for k, v in json.load(open(tc)).items() if k != "mask_token"}, open(tc, "w"))
    return src


def test_tokenizer_json_to_keras_and_back_same_ids(with_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    keras_hub = _keras()
    src = with_tokenizer
    k, back = str(tmp_path / "keras"), str(tmp_path / "back")
    out = _convert(src, k, "keras")
    assert "rebuilt the SentencePiece model from tokenizer.json" in out
    _convert(k, back, "hf")
    hf_src, hf_back = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(back)
    kt = keras_hub.models.Gemma4Tokenizer.from_preset(k)
    for text in TEXTS:
        want = list(hf_src(text, add_special_tokens=False)["input_ids"])
        assert [int(i) for i in kt(text).tolist()] == want, text
        assert list(hf_back(text, add_special_tokens=False)["input_ids"]) == want, text
    assert kt.start_token_id == 2 and kt.end_token_id == 1 and kt.pad_token_id == 0
    # the whole CausalLM preset loads (tokenizer, preprocessor and task configs)
    lm = keras_hub.models.Gemma4CausalLM.from_preset(k)
    assert type(lm.preprocessor.tokenizer).__name__ == "Gemma4Tokenizer"


def test_parity_with_tokenizers_in_a_fresh_process(with_tokenizer, tmp_path):
    """parity HF vs Keras with both tokenizers, as a user runs it (a new interpreter: the keras-hub tokenizer is the
    first to import keras, which must then start on the torch backend the keras runtime needs)."""
    import subprocess
    import sys

    k = str(tmp_path / "keras")
    _convert(with_tokenizer, k, "keras")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    env.pop("KERAS_BACKEND", None)
    p = subprocess.run([sys.executable, "-m", "gemma_inspect", "parity", with_tokenizer, k, "--dtype", "float32",
                        "--atol", "1e-4", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["passed"] is True and out["tokenizer"]["passed"] is True
    assert out["tokenizer"]["native"]["b"].startswith("keras-hub Gemma4Tokenizer")


# ----------------------------------------------------------------------------- a multimodal checkpoint's text decoder
def test_multimodal_checkpoint_converts_its_text_decoder(dense, tmp_path):
    """A Gemma4ForConditionalGeneration transformers builds and saves (a one-layer vision tower beside the dense
    fixture's decoder): convert writes the text decoder, says what it left out, and keras-hub runs it as the
    multimodal model runs text."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration
    from transformers.models.gemma4.configuration_gemma4 import Gemma4VisionConfig

    src, text_model = dense
    text = {k: v for k, v in json.load(open(os.path.join(src, "config.json"))).items()
            if k not in ("architectures", "transformers_version", "model_type", "dtype")}
    vision = Gemma4VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=2, head_dim=8)
    mm_model = Gemma4ForConditionalGeneration(Gemma4Config(text_config=text, vision_config=vision.to_dict(),
                                                           audio_config=None)).float().eval()
    mm_model.model.language_model.load_state_dict(text_model.model.state_dict())
    mm = str(tmp_path / "mm")
    mm_model.save_pretrained(mm)
    towers = [n for n in load_file(os.path.join(mm, "model.safetensors")) if "language_model" not in n]
    assert towers and all(n.startswith(("model.vision_tower.", "model.embed_vision.")) for n in towers)
    k = str(tmp_path / "keras")
    out = _convert(mm, k, "keras")
    assert (f"note: multimodal source: only the text decoder was converted ({len(towers)} vision tower and "
            f"projector tensors left out)") in out, out
    bb = _keras().models.Backbone.from_preset(k)
    want = _hf_logits(mm_model)
    assert np.abs(_keras_logits(bb) - want).max() < 1e-4 * np.abs(want).max()


# ----------------------------------------------------------------------------- what keras-hub cannot hold, bad presets
def test_untied_output_is_refused_in_one_line(moe, tmp_path):
    src, _ = moe
    untied = str(tmp_path / "untied")
    shutil.copytree(src, untied)
    cfg = json.load(open(os.path.join(untied, "config.json")))
    cfg["tie_word_embeddings"] = False
    json.dump(cfg, open(os.path.join(untied, "config.json"), "w"))
    t = load_file(os.path.join(untied, "model.safetensors"))
    t["lm_head.weight"] = t["model.embed_tokens.weight"] * 2
    save_file(t, os.path.join(untied, "model.safetensors"), metadata={"format": "pt"})
    dest = str(tmp_path / "k")
    r = run("convert", untied, dest, "--to", "keras")
    assert r.exit_code == 2 and not os.path.exists(dest)
    assert r.output == (f"Error: {untied}: keras-hub cannot express this checkpoint: an untied output matrix: "
                        f"keras-hub's Gemma4Backbone always ties it to the embedding (use --force to convert anyway)\n")


def test_preset_missing_half_an_expert_bank_is_named(kerased, tmp_path):
    import h5py

    _, _, k, _ = kerased["moe"]
    bad = str(tmp_path / "bad")
    shutil.copytree(k, bad)
    with h5py.File(os.path.join(bad, "model.weights.h5"), "r+") as f:
        del f["layers/gemma4_text_decoder_block_2/moe_expert_bank/vars/1"]  # block 2's up bank
    r = run("summary", bad)
    assert r.exit_code == 2
    assert r.output == (f"Error: {bad}/model.weights.h5: layers/gemma4_text_decoder_block_2/moe_expert_bank/vars/0: "
                        f"the expert bank has a gate kernel but not its up kernel\n")


def test_preset_with_a_transposed_query_kernel_is_named(kerased, tmp_path):
    """(D, d, N) flattens to the canonical [N*D, d] as well: the Keras shape itself is checked."""
    import h5py

    _, _, k, _ = kerased["moe"]
    bad = str(tmp_path / "bad")
    shutil.copytree(k, bad)
    path = "layers/gemma4_text_decoder_block_1/attention/query_dense/vars/0"
    with h5py.File(os.path.join(bad, "model.weights.h5"), "r+") as f:
        a = f[path][()]
        del f[path]
        f.create_dataset(path, data=np.ascontiguousarray(a.transpose(2, 1, 0)))
    r = run("summary", bad)
    assert r.exit_code == 2
    assert r.output == (f"Error: {bad}/model.weights.h5: {path} has shape [16, 32, 4] but {bad}/config.json implies "
                        f"[4, 32, 16]\n")


def test_source_without_layer_scalars_gets_ones_keras_hub_can_load(moe, tmp_path):
    """transformers runs a file storing no layer_scalar with 1 on every layer; keras-hub keeps the variable on every
    block, so the writer writes those ones (and says so): keras-hub then computes what transformers does."""
    src, _ = moe
    bare = str(tmp_path / "bare")
    shutil.copytree(src, bare)
    t = load_file(os.path.join(bare, "model.safetensors"))
    save_file({n: v for n, v in t.items() if not n.endswith("layer_scalar")}, os.path.join(bare, "model.safetensors"),
              metadata={"format": "pt"})
    k = str(tmp_path / "k")
    out = _convert(bare, k, "keras")
    assert ("note: the source stores no layer_scalar (transformers runs 1 on every layer): written as 1 on each of "
            "the 4 blocks, where keras-hub keeps one") in out
    bb = _keras().models.Backbone.from_preset(k)
    assert [float(b.layer_scalar.numpy()) for b in bb.transformer_layers] == [1.0] * 4
    want = _hf_logits(_load_hf(bare))
    assert np.abs(_keras_logits(bb) - want).max() < 1e-4 * np.abs(want).max()
