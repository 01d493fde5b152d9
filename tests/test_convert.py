"""convert and diff: Keras <-> HF for every family, judged by the native libraries themselves."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from files import edit_json
from gemma_inspect.cli import main
from gemma_inspect.formats import load
from gemma_inspect.tokenizer import PARITY_TEXTS
from native import TOKENS, hf_logits, hf_token_ids, keras_logits, keras_token_ids

FAMILIES = ("gemma", "gemma-mha", "gemma2", "gemma3")


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, list(args))
    if ok:
        assert result.exit_code == 0, (result.output, result.stderr if hasattr(result, "stderr") else "")
    return result


def convert(src: str, dest: str, to: str, *extra: str):
    return run("convert", src, dest, "--to", to, *extra)


def h5_datasets(path: str) -> dict[str, tuple[str, bytes, dict]]:
    import h5py

    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda n, o: out.__setitem__(n, (str(o.dtype), o[()].tobytes(), dict(o.attrs)))
                     if isinstance(o, h5py.Dataset) else None)
    return out


# ----------------------------------------------------------------------------- logits in the other library
@pytest.mark.parametrize("family", FAMILIES)
def test_keras_to_hf_runs_in_transformers_like_keras_hub(tiny_models, tmp_path, family):
    src = tiny_models.get(family, "keras")
    convert(src, str(tmp_path / "hf"), "hf")
    expected = keras_logits(src)
    got = hf_logits(str(tmp_path / "hf"))
    assert got.shape == (1, TOKENS.shape[1], 384)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_to_keras_runs_in_keras_hub_like_transformers(tiny_models, tmp_path, family):
    src = tiny_models.get(family, "hf")
    convert(src, str(tmp_path / "k"), "keras")
    expected = hf_logits(src)
    got = keras_logits(str(tmp_path / "k"))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_keras_hub_loads_a_converted_causal_lm(tiny_models, tmp_path):
    import keras_hub

    convert(tiny_models.get("gemma2", "hf"), str(tmp_path / "k"), "keras")
    lm = keras_hub.models.CausalLM.from_preset(str(tmp_path / "k"))
    assert type(lm).__name__ == "GemmaCausalLM"
    assert lm.backbone.num_layers == 4 and lm.backbone.sliding_window_size == 6
    assert sorted(os.listdir(tmp_path / "k")) == ["assets", "config.json", "gemma-inspect-manifest.json",
                                                  "metadata.json", "model.weights.h5", "preprocessor.json",
                                                  "task.json", "tokenizer.json"]


# ----------------------------------------------------------------------------- bit-exact round trips
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_keras_hf_keras_is_bit_identical(tiny_models, tmp_path, family, dtype):
    src = tiny_models.get(family, "keras", dtype)
    convert(src, str(tmp_path / "hf"), "hf")
    convert(str(tmp_path / "hf"), str(tmp_path / "k"), "keras")
    r = run("diff", src, str(tmp_path / "k"), "--json")
    result = json.loads(r.output)
    assert result["identical"] and result["spec_differences"] == []
    assert all(t["bit_identical"] for t in result["tensors"])
    before = h5_datasets(os.path.join(src, "model.weights.h5"))
    after = h5_datasets(str(tmp_path / "k" / "model.weights.h5"))
    assert {k: v[:2] for k, v in after.items()} == {k: v[:2] for k, v in before.items()}
    if dtype == "bfloat16":  # stored opaque and tagged, as keras does
        assert all(v[0] == "|V2" and v[2] == {"dtype": "bfloat16"} for v in after.values())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hf_keras_hf_is_bit_identical(tiny_models, tmp_path, family, dtype):
    from safetensors.numpy import load_file

    src = tiny_models.get(family, "hf", dtype)
    convert(src, str(tmp_path / "k"), "keras")
    convert(str(tmp_path / "k"), str(tmp_path / "hf"), "hf")
    result = json.loads(run("diff", src, str(tmp_path / "hf"), "--json").output)
    assert result["identical"] and result["spec_differences"] == []
    if dtype == "float32":  # safetensors' numpy loader has no bfloat16: compare raw bytes below instead
        a, b = load_file(os.path.join(src, "model.safetensors")), load_file(str(tmp_path / "hf/model.safetensors"))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    from gemma_inspect.formats.safetensors_io import read_header

    ha, _ = read_header(os.path.join(src, "model.safetensors"))
    hb, _ = read_header(str(tmp_path / "hf/model.safetensors"))
    assert {k: (e.dtype, e.shape) for k, e in ha.items()} == {k: (e.dtype, e.shape) for k, e in hb.items()}
    assert {e.dtype for e in hb.values()} == {dtype}


def test_bfloat16_stays_bfloat16_and_the_same_size(tiny_models, tmp_path):
    src = tiny_models.get("gemma2", "keras", "bfloat16")
    convert(src, str(tmp_path / "hf"), "hf")
    out = load(str(tmp_path / "hf"))
    assert out.dtype_counts() == {"bfloat16": 46}
    assert out.size_bytes == load(src).size_bytes
    with open(tmp_path / "hf" / "config.json") as f:
        assert json.load(f)["dtype"] == "bfloat16"


def test_explicit_cast_is_exactly_numpy_round_to_nearest(tiny_models, tmp_path):
    import ml_dtypes

    src = tiny_models.get("gemma3", "hf", "float32")
    r = convert(src, str(tmp_path / "k"), "keras", "--dtype", "bfloat16")
    assert "cast to bfloat16" in r.output
    a, b = load(src), load(str(tmp_path / "k"))
    assert b.spec.dtype == "bfloat16" and b.dtype_counts() == {"bfloat16": 93}
    for name, ref in a.tensors.items():
        assert np.array_equal(b.tensors[name].load().view(np.uint16),
                              ref.load().astype(ml_dtypes.bfloat16).view(np.uint16)), name


# ----------------------------------------------------------------------------- shards
def test_sharded_inputs_and_outputs(tiny_models, tmp_path):
    hf_sharded = tiny_models.get("gemma2", "hf", shard=True)
    k_sharded = tiny_models.get("gemma2", "keras", shard=True)
    assert os.path.exists(os.path.join(hf_sharded, "model.safetensors.index.json"))
    assert os.path.exists(os.path.join(k_sharded, "model.weights.json"))
    convert(hf_sharded, str(tmp_path / "k"), "keras", "--max-shard-size", "40KB")
    convert(k_sharded, str(tmp_path / "hf"), "hf", "--max-shard-size", "40KB")
    with open(tmp_path / "hf" / "model.safetensors.index.json") as f:
        index = json.load(f)
    shard_files = sorted(set(index["weight_map"].values()))
    assert len(shard_files) > 1 and shard_files[0] == f"model-00001-of-{len(shard_files):05d}.safetensors"
    assert index["metadata"]["total_size"] == load(hf_sharded).size_bytes
    with open(tmp_path / "k" / "model.weights.json") as f:
        kindex = json.load(f)
    assert len(set(kindex["weight_map"].values())) > 1
    assert all(k.startswith("/layers/") and k.endswith("/vars") for k in kindex["weight_map"])
    expected = hf_logits(hf_sharded)
    np.testing.assert_allclose(hf_logits(str(tmp_path / "hf")), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(keras_logits(str(tmp_path / "k")), expected, atol=1e-5, rtol=0)
    assert json.loads(run("diff", hf_sharded, str(tmp_path / "k"), "--json").output)["identical"]


# ----------------------------------------------------------------------------- configs and tokenizers
def test_hf_config_is_complete_and_explicit(tiny_models, tmp_path):
    convert(tiny_models.get("gemma2", "keras"), str(tmp_path / "hf"), "hf")
    with open(tmp_path / "hf" / "config.json") as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "gemma2" and cfg["architectures"] == ["Gemma2ForCausalLM"]
    assert cfg["hidden_act"] == cfg["hidden_activation"] == "gelu_pytorch_tanh"
    assert cfg["query_pre_attn_scalar"] == 16 and cfg["sliding_window"] == 6
    assert cfg["layer_types"] == ["sliding_attention", "full_attention"] * 2
    assert (cfg["attn_logit_softcapping"], cfg["final_logit_softcapping"]) == (50.0, 30.0)
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert (cfg["rms_norm_eps"], cfg["tie_word_embeddings"], cfg["dtype"]) == (1e-6, True, "float32")
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (2, 1, 0)
    with open(tmp_path / "hf" / "generation_config.json") as f:
        gen = json.load(f)
    eot = load(tiny_models.get("gemma2", "keras")).tokenizer.token_to_id("<end_of_turn>")
    assert eot == 5 and gen["eos_token_id"] == [1, eot]


def test_gemma3_rope_parameters_are_written_in_both_spellings(tiny_models, tmp_path):
    convert(tiny_models.get("gemma3", "keras"), str(tmp_path / "hf"), "hf")
    with open(tmp_path / "hf" / "config.json") as f:
        cfg = json.load(f)
    assert cfg["rope_parameters"] == {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
    assert (cfg["rope_theta"], cfg["rope_local_base_freq"]) == (1000000.0, 10000.0)
    assert cfg["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    assert cfg["layer_types"] == ["sliding_attention"] * 5 + ["full_attention", "sliding_attention"]


@pytest.mark.parametrize("family", ["gemma", "gemma3"])
def test_tokenizers_travel_with_equal_ids(tiny_models, tmp_path, family, tiny_tokenizer):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=tiny_tokenizer)
    k_src, hf_src = tiny_models.get(family, "keras"), tiny_models.get(family, "hf")
    convert(k_src, str(tmp_path / "hf"), "hf")
    convert(hf_src, str(tmp_path / "k"), "keras")
    with open(tiny_tokenizer, "rb") as f:
        raw = f.read()
    with open(tmp_path / "hf" / "tokenizer.model", "rb") as f:
        assert f.read() == raw
    with open(tmp_path / "k" / "assets" / "tokenizer" / "vocabulary.spm", "rb") as f:
        assert f.read() == raw
    for text in PARITY_TEXTS:
        want = [2] + sp.EncodeAsIds(text)
        # Each library tokenizes the converted files exactly as it tokenizes the originals...
        assert hf_token_ids(str(tmp_path / "hf"), text) == hf_token_ids(hf_src, text), text
        assert keras_token_ids(str(tmp_path / "k"), text) == keras_token_ids(k_src, text) == want, text
        # ...and as SentencePiece does, except that HF's fast tokenizer reads "<bos>"/"<eos>"/"<pad>" typed
        # as text as the control tokens themselves (split_special_tokens=False), which SentencePiece never does.
        if not any(t in text for t in ("<bos>", "<eos>", "<pad>")):
            assert hf_token_ids(str(tmp_path / "hf"), text) == want, text
    chat = "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    assert hf_token_ids(str(tmp_path / "hf"), chat)[1] == 4  # <start_of_turn> is one token


def test_source_without_tokenizer_converts_weights_and_says_so(tiny_models, tmp_path):
    src = tiny_models.get("gemma", "keras", tokenizer=False)
    r = convert(src, str(tmp_path / "hf"), "hf")
    assert "note: the source has no tokenizer: weights and config converted, no tokenizer files written" in r.output
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "gemma-inspect-manifest.json",
                                                   "generation_config.json", "model.safetensors"]
    np.testing.assert_allclose(hf_logits(str(tmp_path / "hf")), keras_logits(src), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- refusals and bad input
def _hf_with(tiny_models, copy_dir, family: str, **changes) -> str:
    path = copy_dir(tiny_models.get(family, "hf"))
    edit_json(os.path.join(path, "config.json"), lambda cfg: cfg.update(changes))
    return path


def test_query_scale_keras_cannot_express_is_refused_unless_forced(tiny_models, copy_dir, tmp_path):
    src = _hf_with(tiny_models, copy_dir, "gemma2", query_pre_attn_scalar=20)
    r = run("convert", src, str(tmp_path / "k"), "--to", "keras", ok=False)
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        f"Error: {src}: keras-hub cannot express this checkpoint: query_pre_attn_scalar is 20, but keras-hub's "
        f"decoder blocks always scale queries by head_dim^-0.5 (16^-0.5) and ignore query_head_dim_normalize "
        f"(use --force to convert anyway)"]
    assert os.listdir(tmp_path) == ["copy"]  # the source copy only: no DEST, no temporary sibling
    r = convert(src, str(tmp_path / "k"), "keras", "--force")
    assert "note: converted with --force although keras-hub cannot express: query_pre_attn_scalar is 20" in r.output
    assert load(str(tmp_path / "k")).spec.query_pre_attn_scalar == 16


def test_layer_pattern_keras_cannot_express_is_refused(tiny_models, copy_dir, tmp_path):
    src = _hf_with(tiny_models, copy_dir, "gemma3", layer_types=["full_attention"] * 3 + ["sliding_attention"] * 4)
    r = run("convert", src, str(tmp_path / "k"), "--to", "keras", ok=False)
    assert r.exit_code == 2 and "a sliding-window layout other than keras-hub's fixed pattern (5 local : 1 global)" \
        in r.output


def test_existing_destination_is_refused_without_force(tiny_models, tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    r = run("convert", tiny_models.get("gemma", "hf"), str(dest), "--to", "keras", ok=False)
    assert r.exit_code == 2
    assert r.output.strip() == f"Error: {dest}: already exists (use --force to replace it)"
    assert (dest / "keep.txt").read_text() == "mine"
    convert(tiny_models.get("gemma", "hf"), str(dest), "keras", "--force")
    assert not (dest / "keep.txt").exists() and (dest / "model.weights.h5").exists()


@pytest.mark.parametrize("args, message", [
    (["gemma-7b", "OUT", "--to", "hf"], "Error: gemma-7b: a built-in card has no tensors to convert"),
    (["SRC", "OUT", "--to", "hf", "--dtype", "q8_0"],
     "Error: --dtype q8_0 is a GGUF quantization; choose one of keep, float32, bfloat16, float16 for HF"),
    (["SRC", "OUT", "--to", "keras", "--max-shard-size", "lots"],
     "Error: invalid size 'lots'; use e.g. 5GB, 500MB, 2GiB"),
])
def test_bad_convert_requests(tiny_models, tmp_path, args, message):
    args = [a.replace("SRC", tiny_models.get("gemma", "hf")).replace("OUT", str(tmp_path / "out")) for a in args]
    r = run("convert", *args, ok=False)
    assert r.exit_code == 2 and r.output.strip() == message
    assert os.listdir(tmp_path) == []  # nothing half-written, no temporary sibling left


def test_failed_write_leaves_no_destination(tiny_models, tmp_path, monkeypatch):
    from gemma_inspect.formats import keras as keras_fmt

    real = keras_fmt.create_h5

    def explode(*a, **k):
        real(*a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras_fmt, "create_h5", explode)
    r = run("convert", tiny_models.get("gemma", "hf"), str(tmp_path / "k"), "--to", "keras", ok=False)
    assert r.exit_code == 2
    assert r.output.strip() == f"Error: {tmp_path / 'k'}: cannot write (No space left on device)"
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- diff
def test_diff_reports_each_kind_of_difference(tiny_models, tmp_path):
    from gemma_inspect import tiny

    spec = tiny_models.spec("gemma")
    w = tiny_models.weights("gemma")
    w2 = {k: v.copy() for k, v in w.items()}
    w2["model.layers.1.mlp.up_proj.weight"][0, 0] += 1e-3
    w2["model.layers.0.self_attn.o_proj.weight"][3, 5] += 0.5
    tiny.write_hf(spec, w2, str(tmp_path / "b"))
    a = tiny_models.get("gemma", "keras")
    r = run("diff", a, str(tmp_path / "b"), "--json", ok=False)
    assert r.exit_code == 1
    result = json.loads(r.output)
    rows = {t["name"]: t for t in result["tensors"]}
    assert rows["model.layers.1.mlp.up_proj.weight"]["status"] == "different"
    assert rows["model.layers.1.mlp.up_proj.weight"]["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert rows["model.layers.0.self_attn.o_proj.weight"]["max_abs_diff"] == pytest.approx(0.5, rel=1e-6)
    assert result["counts"] == {"equal": 18, "close": 0, "different": 2, "missing_a": 0, "missing_b": 0,
                                "shape_mismatch": 0}
    r = run("diff", a, str(tmp_path / "b"), "--atol", "0.6", "--json")
    assert json.loads(r.output)["counts"]["close"] == 2
    human = run("diff", a, str(tmp_path / "b"), ok=False).output
    assert "model.layers.0.self_attn.o_proj.weight" in human and "18 equal, 2 different: different" in human


def test_diff_missing_and_shape_mismatch_and_spec_fields(tiny_models):
    r = run("diff", tiny_models.get("gemma", "hf"), tiny_models.get("gemma-mha", "hf"), "--json", ok=False)
    result = json.loads(r.output)
    assert r.exit_code == 1
    assert {"field": "num_key_value_heads", "a": 1, "b": 4} in result["spec_differences"]
    assert {t["name"]: t["status"] for t in result["tensors"]}["model.layers.0.self_attn.k_proj.weight"] \
        == "shape_mismatch"
    r = run("diff", tiny_models.get("gemma", "hf"), tiny_models.get("gemma2", "hf"), "--json", ok=False)
    statuses = {t["name"]: t["status"] for t in json.loads(r.output)["tensors"]}
    assert statuses["model.layers.0.post_attention_layernorm.weight"] == "missing_a"
    assert statuses["model.layers.2.self_attn.q_proj.weight"] == "missing_a"


def test_diff_compares_the_shared_rows_of_vocabularies_of_different_sizes(tiny_models, tmp_path):
    """An HF Gemma 3 with 64 rows beyond its tokenizer (as released) against the same weights without them, in
    HF, Keras and GGUF: a shape mismatch that says how the rows both have compare."""
    import dataclasses

    from gemma_inspect import tiny

    spec, w = tiny_models.spec("gemma3"), dict(tiny_models.weights("gemma3"))
    emb = w["model.embed_tokens.weight"]
    w["model.embed_tokens.weight"] = np.concatenate([emb, np.ones((64, emb.shape[1]), np.float32)])
    big = tiny.write_hf(dataclasses.replace(spec, vocab_size=spec.vocab_size + 64), w, str(tmp_path / "big"))
    gguf = convert(tiny_models.get("gemma3", "hf"), str(tmp_path / "small.gguf"), "gguf")
    assert gguf.exit_code == 0
    for small in (tiny_models.get("gemma3", "hf"), tiny_models.get("gemma3", "keras"), str(tmp_path / "small.gguf")):
        r = run("diff", big, small, "--json", "--atol", "1e-6", ok=False)  # GGUF norms: w + 1 - 1 in float32
        assert r.exit_code == 1
        result = json.loads(r.output)
        assert {"field": "vocab_size", "a": 448, "b": 384} in result["spec_differences"]
        row = next(t for t in result["tensors"] if t["name"] == "model.embed_tokens.weight")
        assert (row["status"], row["shared_rows"], row["shared_rows_max_abs_diff"]) == ("shape_mismatch", 384, 0.0)
        assert result["counts"]["equal"] + result["counts"]["close"] == len(result["tensors"]) - 1
    emb2 = w["model.embed_tokens.weight"].copy()
    emb2[7, 3] += 0.25
    w["model.embed_tokens.weight"] = emb2
    edited = tiny.write_hf(dataclasses.replace(spec, vocab_size=448), w, str(tmp_path / "edited"))
    human = run("diff", tiny_models.get("gemma3", "hf"), edited, ok=False).output
    assert ("model.embed_tokens.weight: A has 384 rows, B 448; the 384 rows both have: max |A-B| 0.250"
            in " ".join(human.split()))
    # Only vocabulary-indexed tensors get a row comparison (K/V projections of MQA vs MHA do not).
    r = run("diff", tiny_models.get("gemma", "hf"), tiny_models.get("gemma-mha", "hf"), "--json", ok=False)
    assert not any("shared_rows" in t for t in json.loads(r.output)["tensors"])


# ----------------------------------------------------------------------------- multimodal Gemma 3
def test_multimodal_gemma3_converts_its_text_decoder(tiny_models, tmp_path):
    from gemma_inspect.tiny import write_hf_multimodal_gemma3

    spec, w = tiny_models.spec("gemma3"), tiny_models.weights("gemma3")
    src = write_hf_multimodal_gemma3(spec, w, str(tmp_path / "mm"))
    r = convert(src, str(tmp_path / "k"), "keras")
    assert "note: multimodal source: only the text decoder was converted (" in r.output
    r = convert(src, str(tmp_path / "hf"), "hf")
    with open(tmp_path / "hf" / "config.json") as f:
        assert json.load(f)["architectures"] == ["Gemma3ForCausalLM"]
    expected = hf_logits(tiny_models.get("gemma3", "hf"))  # the same text weights, saved text-only
    np.testing.assert_allclose(hf_logits(str(tmp_path / "hf")), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(keras_logits(str(tmp_path / "k")), expected, atol=1e-5, rtol=0)


def test_hf_with_only_tokenizer_json_still_gives_keras_a_sentencepiece_model(tiny_models, copy_dir, tmp_path):
    src = copy_dir(tiny_models.get("gemma2", "hf"))
    os.remove(os.path.join(src, "tokenizer.model"))
    r = convert(src, str(tmp_path / "k"), "keras")
    assert "note: rebuilt the SentencePiece model from tokenizer.json (ids checked equal on the parity texts)" \
        in r.output
    for text in PARITY_TEXTS:
        if not any(t in text for t in ("<bos>", "<eos>", "<pad>")):
            assert keras_token_ids(str(tmp_path / "k"), text) == hf_token_ids(src, text), text
    # and converting on to HF copies the tokenizer.json as it was
    convert(src, str(tmp_path / "hf"), "hf")
    with open(os.path.join(src, "tokenizer.json"), "rb") as a, open(tmp_path / "hf" / "tokenizer.json", "rb") as b:
        assert a.read() == b.read()
    assert "tokenizer.model" not in os.listdir(tmp_path / "hf")


def test_no_manifest_flag_writes_only_the_model(tiny_models, tmp_path):
    src = tiny_models.get("gemma", "keras", tokenizer=False)
    r = convert(src, str(tmp_path / "hf"), "hf", "--no-manifest")
    assert "note: manifest:" not in r.output
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "generation_config.json", "model.safetensors"]
    r = convert(src, str(tmp_path / "hf2"), "hf", "--json")
    report = json.loads(r.output)
    assert report["manifest"] == str(tmp_path / "hf2" / "gemma-inspect-manifest.json")
    assert run("diff", str(tmp_path / "hf2"), "--manifest").exit_code == 0
