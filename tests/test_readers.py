"""HF and Keras readers against tiny checkpoints written by transformers and keras-hub themselves:
specs, canonical tensors bit for bit, sharding, old config spellings, Keras-NLP presets, multimodal Gemma 3,
and configs that disagree with their tensors."""

from __future__ import annotations

import glob
import json
import os

import ml_dtypes
import numpy as np
import pytest

from files import edit_json
from gemma_inspect import load
from gemma_inspect.checkpoint import expected_tensors
from gemma_inspect.errors import InputError
from gemma_inspect.tiny import tiny_spec

FAMILIES = ("gemma", "gemma-mha", "gemma2", "gemma3")
DTYPES = ("float32", "bfloat16")

# keras-hub presets do not store the context length; the reader fills in the family default.
KERAS_CONTEXT = {"gemma": 8192, "gemma-mha": 8192, "gemma2": 8192, "gemma3": 131072}


def _np_dtype(dtype: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)


def assert_bit_identical(ckpt, expected: dict[str, np.ndarray], dtype: str) -> None:
    assert list(ckpt.tensors) == list(expected)  # canonical names, in canonical order
    for name, ref in ckpt.tensors.items():
        want = expected[name].astype(_np_dtype(dtype))
        got = ref.load()
        assert ref.dtype == dtype, name
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape == tuple(ref.shape), name
        assert got.tobytes() == want.tobytes(), name


# --------------------------------------------------------------------------- every family, format, dtype
@pytest.mark.parametrize("shard", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["hf", "keras"])
@pytest.mark.parametrize("family", FAMILIES)
def test_reader_gives_the_written_spec_and_tensors(tiny_models, family, fmt, dtype, shard):
    path = tiny_models.get(family, fmt, dtype, shard=shard)
    if fmt == "hf":
        index = os.path.join(path, "model.safetensors.index.json")
        shards = glob.glob(os.path.join(path, "model-*.safetensors"))
    else:
        index = os.path.join(path, "model.weights.json")
        shards = glob.glob(os.path.join(path, "model_*.weights.h5"))
    assert os.path.exists(index) == shard
    assert (len(shards) > 1) == shard

    ckpt = load(path)
    want = tiny_spec(family, dtype=dtype)
    assert ckpt.format == fmt
    if fmt == "keras":
        assert ckpt.spec.max_position_embeddings == KERAS_CONTEXT[family]
        assert ckpt.notes == [f"max_position_embeddings is not stored in a Keras config; "
                              f"assuming {KERAS_CONTEXT[family]}"]
        assert ckpt.spec == want.replace(max_position_embeddings=KERAS_CONTEXT[family])
    else:
        assert ckpt.spec == want
        assert ckpt.notes == []
    assert ckpt.spec.dtype == dtype
    assert ckpt.dtype_counts() == {dtype: len(expected_tensors(want))}
    assert ckpt.ignored == {}
    assert ckpt.tokenizer is not None and ckpt.tokenizer.has_spm
    assert_bit_identical(ckpt, tiny_models.weights(family, dtype), dtype)
    numel = sum(a.size for a in tiny_models.weights(family).values())
    assert ckpt.size_bytes == numel * (4 if dtype == "float32" else 2)


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_hf_and_keras_hold_the_same_canonical_tensors(tiny_models, family):
    hf = load(tiny_models.get(family, "hf", "bfloat16"))
    keras = load(tiny_models.get(family, "keras", "bfloat16"))
    assert list(hf.tensors) == list(keras.tensors)
    for name in hf.tensors:
        a, b = hf.tensors[name].load(), keras.tensors[name].load()
        assert a.dtype == b.dtype == np.dtype(ml_dtypes.bfloat16)
        assert a.tobytes() == b.tobytes(), name


def test_family_specific_structure(tiny_models):
    g1 = load(tiny_models.get("gemma", "hf")).spec
    assert (g1.attention_kind, g1.norm_placement, g1.qk_norm) == ("MQA", "pre", False)
    assert load(tiny_models.get("gemma-mha", "keras")).spec.attention_kind == "MHA"
    g2 = load(tiny_models.get("gemma2", "keras")).spec
    assert g2.attention_kind == "GQA"
    assert g2.sliding_layers == (0, 2) and g2.sliding_window == 6
    assert (g2.attention_logit_softcap, g2.final_logit_softcap) == (50.0, 30.0)
    g3 = load(tiny_models.get("gemma3", "keras")).spec
    assert g3.global_layers == (5,) and g3.qk_norm
    assert (g3.local_rope_theta, g3.rope_theta, g3.rope_scaling_factor) == (10_000.0, 1_000_000.0, 8.0)


def test_bfloat16_tensors_load_as_bfloat16_without_widening(tiny_models):
    for fmt in ("hf", "keras"):
        ckpt = load(tiny_models.get("gemma2", fmt, "bfloat16"))
        emb = ckpt.tensor("embed")
        assert emb.nbytes == 384 * 64 * 2
        assert emb.load().dtype == np.dtype(ml_dtypes.bfloat16)


def test_gemma1_pre_ffn_norm_is_read_from_post_attention_layernorm(tiny_models):
    ckpt = load(tiny_models.get("gemma", "hf"))
    ref = ckpt.tensor("ffn_norm", 1)
    assert ref.name == "model.layers.1.pre_feedforward_layernorm.weight"
    assert ref.origin.endswith(":model.layers.1.post_attention_layernorm.weight")
    assert "model.layers.1.post_attention_layernorm.weight" not in ckpt.tensors


# --------------------------------------------------------------------------- Keras-NLP presets
@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_keras_nlp_preset_still_loads(tiny_models, copy_dir, family):
    src = tiny_models.get(family, "keras", "bfloat16")
    path = copy_dir(src)
    cls = "Gemma3Backbone" if family == "gemma3" else "GemmaBackbone"
    module = ("keras_nlp.src.models.gemma3.gemma3_backbone" if family == "gemma3"
              else "keras_nlp.src.models.gemma.gemma_backbone")

    def edit(cfg):
        assert cfg["registered_name"] == f"keras_hub>{cls}"
        cfg["registered_name"] = f"keras_nlp>{cls}"
        cfg["module"] = module

    edit_json(os.path.join(path, "config.json"), edit)
    ckpt, orig = load(path), load(src)
    assert ckpt.format == "keras"
    assert ckpt.spec == orig.spec
    assert_bit_identical(ckpt, tiny_models.weights(family.replace("-mha", ""), "bfloat16"), "bfloat16")


# --------------------------------------------------------------------------- old and new HF spellings
def _old_spelling(family: str):
    """Rewrite a transformers-5 config the way transformers 4.4x (and the Hub's released configs) spell it."""

    def edit(cfg):
        cfg["torch_dtype"] = cfg.pop("dtype")
        rp = cfg.pop("rope_parameters")
        cfg.pop("layer_types", None)
        cfg.pop("_sliding_window_pattern", None)
        if family == "gemma3":
            cfg["rope_theta"] = rp["full_attention"]["rope_theta"]
            cfg["rope_local_base_freq"] = rp["sliding_attention"]["rope_theta"]
            cfg["rope_scaling"] = {"factor": rp["full_attention"]["factor"], "rope_type": "linear"}
            cfg["sliding_window_pattern"] = 6
        else:
            cfg["rope_theta"] = rp["rope_theta"]
            cfg["rope_scaling"] = None
        if family == "gemma":
            # The released Gemma 1 configs say hidden_act="gelu", which transformers reads as the tanh GELU.
            cfg.pop("hidden_activation")
            cfg["hidden_act"] = "gelu"
        else:
            cfg.pop("hidden_act")

    return edit


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_old_config_spellings_give_the_same_spec(tiny_models, copy_dir, family):
    src = tiny_models.get(family, "hf", "bfloat16", tokenizer=False)
    path = copy_dir(src)
    edit_json(os.path.join(path, "config.json"), _old_spelling(family))
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    assert "dtype" not in cfg and "rope_parameters" not in cfg and "layer_types" not in cfg
    ckpt = load(path)
    assert ckpt.spec == load(src).spec == tiny_spec(family, dtype="bfloat16")
    assert ckpt.spec.activation == "gelu_tanh"


def test_gemma3_old_rope_scaling_with_type_key(tiny_models, copy_dir):
    path = copy_dir(tiny_models.get("gemma3", "hf", tokenizer=False))

    def edit(cfg):
        _old_spelling("gemma3")(cfg)
        cfg["rope_scaling"] = {"type": "linear", "factor": 8}
        del cfg["sliding_window_pattern"]  # transformers' default pattern is 6

    edit_json(os.path.join(path, "config.json"), edit)
    assert load(path).spec == tiny_spec("gemma3")


def test_gemma2_hidden_act_only(tiny_models, copy_dir):
    path = copy_dir(tiny_models.get("gemma2", "hf", tokenizer=False))
    edit_json(os.path.join(path, "config.json"), lambda c: c.pop("hidden_activation"))
    assert load(path).spec.activation == "gelu_tanh"


def test_config_without_dtype_uses_the_tensor_dtype_and_says_so(tiny_models, copy_dir):
    path = copy_dir(tiny_models.get("gemma2", "hf", "bfloat16", tokenizer=False))
    edit_json(os.path.join(path, "config.json"), lambda c: c.pop("dtype"))
    ckpt = load(path)
    assert ckpt.spec.dtype == "bfloat16"
    assert ckpt.notes == ["config.json declares no dtype; using the tensors' bfloat16"]


def test_hf_layer_types_explicit_override_the_pattern(tiny_models, copy_dir):
    path = copy_dir(tiny_models.get("gemma3", "hf", tokenizer=False))
    types = ["full_attention"] * 7

    def edit(cfg):
        cfg["layer_types"] = types

    edit_json(os.path.join(path, "config.json"), edit)
    assert load(path).spec.global_layers == tuple(range(7))


# --------------------------------------------------------------------------- multimodal Gemma 3
@pytest.fixture(scope="module")
def multimodal_gemma3(tmp_path_factory, tiny_models):
    """A tiny Gemma3ForConditionalGeneration saved by transformers itself (SigLIP vision tower included)."""
    from gemma_inspect.tiny import write_hf_multimodal_gemma3

    out = str(tmp_path_factory.mktemp("mm") / "gemma3-mm")
    return write_hf_multimodal_gemma3(tiny_spec("gemma3"), tiny_models.weights("gemma3"), out)


def test_multimodal_gemma3_reads_the_text_decoder(multimodal_gemma3, tiny_models):
    from gemma_inspect.formats.safetensors_io import read_header

    entries, _ = read_header(os.path.join(multimodal_gemma3, "model.safetensors"))
    prefixes = {".".join(n.split(".")[:2]) for n in entries}
    # transformers 5 writes the on-disk names of transformers 4: language_model.model.*, vision_tower.*
    assert prefixes == {"language_model.model", "vision_tower.embeddings", "vision_tower.encoder",
                        "vision_tower.post_layernorm", "vision_tower.head",
                        "multi_modal_projector.mm_input_projection_weight", "multi_modal_projector.mm_soft_emb_norm"}
    with open(os.path.join(multimodal_gemma3, "config.json")) as f:
        assert json.load(f)["model_type"] == "gemma3"

    ckpt = load(multimodal_gemma3)
    assert ckpt.spec == tiny_spec("gemma3")
    assert_bit_identical(ckpt, tiny_models.weights("gemma3"), "float32")
    vision = [n for n in entries if not n.startswith("language_model.")]
    assert sorted(ckpt.ignored) == sorted(vision)
    vision_params = sum(int(np.prod(entries[n].shape)) for n in vision)
    assert ckpt.notes == [f"multimodal Gemma 3: vision tower and projector ({len(vision)} tensors, "
                          f"{vision_params:,} parameters) reported and ignored; only the text decoder is read"]


# --------------------------------------------------------------------------- config vs tensors
def test_hf_config_that_disagrees_with_its_tensors(tiny_models, copy_dir):
    path = copy_dir(tiny_models.get("gemma2", "hf", tokenizer=False))
    edit_json(os.path.join(path, "config.json"), lambda c: c.update(num_key_value_heads=1))
    with pytest.raises(InputError) as e:
        load(path)
    assert str(e.value) == (
        f"{path}/model.safetensors: model.layers.0.self_attn.k_proj.weight has shape [32, 64] but "
        f"{path}/config.json implies [16, 64] (num_key_value_heads=1 x head_dim=16, hidden_size=64)")


def test_sharded_hf_config_that_disagrees_with_its_tensors(tiny_models, copy_dir):
    path = copy_dir(tiny_models.get("gemma3", "hf", tokenizer=False, shard=True))
    edit_json(os.path.join(path, "config.json"), lambda c: c.update(intermediate_size=128))
    with pytest.raises(InputError) as e:
        load(path)
    assert str(e.value) == (
        f"{path}/model.safetensors.index.json: model.layers.0.mlp.gate_proj.weight has shape [96, 64] but "
        f"{path}/config.json implies [128, 64] (intermediate_size=128, hidden_size=64)")


def test_keras_config_that_disagrees_with_its_tensors(tiny_models, copy_dir):
    path = copy_dir(tiny_models.get("gemma2", "keras", tokenizer=False))
    edit_json(os.path.join(path, "config.json"), lambda c: c["config"].update(num_key_value_heads=1))
    with pytest.raises(InputError) as e:
        load(path)
    assert str(e.value) == (
        f"{path}/model.weights.h5: model.layers.0.self_attn.k_proj.weight has shape [32, 64] but "
        f"{path}/config.json implies [16, 64] (num_key_value_heads=1 x head_dim=16, hidden_size=64)")


def test_keras_config_that_contradicts_itself_names_the_config(tiny_models, copy_dir):
    path = copy_dir(tiny_models.get("gemma2", "keras", tokenizer=False))
    edit_json(os.path.join(path, "config.json"), lambda c: c["config"].update(num_key_value_heads=3))
    with pytest.raises(InputError) as e:
        load(path)
    assert str(e.value) == (f"{path}/config.json: inconsistent config: num_attention_heads 4 is not a "
                            f"multiple of num_key_value_heads 3")


def test_hf_config_that_contradicts_itself_names_the_config(tiny_models, copy_dir):
    path = copy_dir(tiny_models.get("gemma2", "hf", tokenizer=False))
    edit_json(os.path.join(path, "config.json"), lambda c: c.update(num_key_value_heads=3))
    with pytest.raises(InputError) as e:
        load(path)
    assert str(e.value) == (f"{path}/config.json: inconsistent config: num_attention_heads 4 is not a "
                            f"multiple of num_key_value_heads 3")


def test_missing_tensor_is_named(tiny_models, copy_dir, tmp_path):
    from gemma_inspect.formats.safetensors_io import SafetensorsWriter, read_array, read_header

    path = copy_dir(tiny_models.get("gemma", "hf", tokenizer=False))
    st = os.path.join(path, "model.safetensors")
    entries, _ = read_header(st)
    keep = [e for n, e in entries.items() if n != "model.norm.weight"]
    arrays = {e.name: read_array(st, e) for e in keep}
    with SafetensorsWriter(st, [(e.name, e.dtype, e.shape) for e in keep]) as w:
        for e in keep:
            w.add(e.name, [arrays[e.name].tobytes()])
    with pytest.raises(InputError) as e:
        load(path)
    assert str(e.value) == f"{st}: tensors required by {path}/config.json are missing: model.norm.weight"


def test_untied_lm_head_stored_in_a_tied_config_is_reported(tiny_models, copy_dir):
    from gemma_inspect.formats.safetensors_io import SafetensorsWriter, read_array, read_header

    path = copy_dir(tiny_models.get("gemma", "hf", tokenizer=False))
    st = os.path.join(path, "model.safetensors")
    entries, _ = read_header(st)
    arrays = {n: read_array(st, e) for n, e in entries.items()}
    arrays["lm_head.weight"] = arrays["model.embed_tokens.weight"]
    with SafetensorsWriter(st, [(n, "float32", a.shape) for n, a in arrays.items()]) as w:
        for n, a in arrays.items():
            w.add(n, [a.tobytes()])
    ckpt = load(path)
    assert "lm_head.weight" in ckpt.ignored and "lm_head.weight" not in ckpt.tensors
    assert ckpt.spec.tied_embeddings
    assert any("lm_head.weight is stored but tie_word_embeddings is true" in n for n in ckpt.notes)


def test_keras_datasets_in_compact_and_compressed_layouts(tiny_models, copy_dir):
    """Datasets that are not contiguous (compact, chunked + gzip) are read through h5py, not by offset."""
    import h5py

    path = copy_dir(tiny_models.get("gemma2", "keras", "bfloat16", tokenizer=False))
    h5 = os.path.join(path, "model.weights.h5")
    with h5py.File(h5, "a") as f:
        for name, kwargs in (("layers/rms_normalization/vars/0", {"compact": True}),
                             ("layers/reversible_embedding/vars/0", {"compression": "gzip", "chunks": (64, 64)})):
            data, attrs = f[name][()], dict(f[name].attrs)
            del f[name]
            if kwargs.pop("compact", False):
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_layout(h5py.h5d.COMPACT)
                ds = f.create_dataset(name, data=data, dcpl=dcpl)
            else:
                ds = f.create_dataset(name, data=data, **kwargs)
            ds.attrs.update(attrs)
    ckpt = load(path)
    assert_bit_identical(ckpt, tiny_models.weights("gemma2", "bfloat16"), "bfloat16")
