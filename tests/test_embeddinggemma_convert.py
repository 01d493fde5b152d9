"""EmbeddingGemma, `convert` and `diff`: the sentence-transformers directory to HF (the same layout again), to
keras-hub's Gemma3Backbone as an embedding model, to GGUF as llama.cpp's converter writes `gemma-embedding`, and
back; `diff` across them in canonical names, the dense heads included (head.dense.0.weight, head.dense.1.weight).

Every output is loaded by its own library (sentence-transformers and transformers' AutoModel, keras-hub's
from_preset, the gguf package's reader) and its values checked: tensors bit-exact after round trips (GGUF's norms,
stored as 1 + w in float32, within float32 rounding of the sum), token states and the pooled embedding within
1e-4 in float32 of transformers / sentence-transformers on the source, on 20 tokens, past the window (6).

The fixture is tests/test_embeddinggemma.py's tiny directory (7 layers, hidden 64, heads 64 -> 256 -> 64)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from gemma_inspect.cli import main
from tests.test_embeddinggemma import DENSE, H, LAYERS, WINDOW, write_embeddinggemma

TOKENS = [2, 17, 40, 5, 99, 250, 31, 8, 77, 120, 64, 3, 200, 11, 45, 9, 150, 60, 22, 301]  # 20 > the window (6)
F32_EPS = float(np.finfo(np.float32).eps)
N_TENSORS = 2 + LAYERS * 13  # embedding, final norm, 13 per layer
N_NORMS = 1 + LAYERS * 6  # final norm; input, post-attention, pre/post-FFN, q and k norms per layer


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def _convert(src: str, dest: str, to: str, *extra: str) -> None:
    r = _run("convert", src, dest, "--to", to, "--no-manifest", *extra)
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_tokenizer):
    """The source and every conversion of it: HF, Keras, GGUF, and each of those back to HF."""
    root = tmp_path_factory.mktemp("embeddinggemma-convert")
    p = {"src": str(root / "emb")}
    write_embeddinggemma(p["src"], tiny_tokenizer)
    for key, to in (("hf", "hf"), ("keras", "keras"), ("gguf", "gguf")):
        p[key] = str(root / (key + (".gguf" if to == "gguf" else "")))
        _convert(p["src"], p[key], to)
        p[f"{key}_hf"] = str(root / f"{key}-hf")
        _convert(p[key], p[f"{key}_hf"], "hf")
    return p


def _reference(path: str):
    """transformers' token states (AutoModel) and sentence-transformers' embedding of TOKENS, float32."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(model).__name__ == "Gemma3TextModel"
    with torch.no_grad():
        states = model.eval()(input_ids=torch.tensor([TOKENS])).last_hidden_state[0].numpy()
    st = SentenceTransformer(path, device="cpu")
    with torch.no_grad():
        out = st.forward({"input_ids": torch.tensor([TOKENS]), "attention_mask": torch.ones(1, len(TOKENS),
                                                                                          dtype=torch.long)})
    return states, out["sentence_embedding"][0].numpy(), st


@pytest.fixture(scope="module")
def reference(outputs):
    return _reference(outputs["src"])


def _safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(path)


def _assert_same_directory_tensors(a: str, b: str, norms_close: bool = False) -> None:
    """Every transformer tensor (stored names) and every Dense weight of two sentence-transformers directories:
    bit-identical (`norms_close`: norm weights within float32 rounding of 1 + w)."""
    ta, tb = _safetensors(f"{a}/model.safetensors"), _safetensors(f"{b}/model.safetensors")
    assert sorted(ta) == sorted(tb) and len(ta) == N_TENSORS
    assert not any(n.startswith(("model.", "lm_head")) for n in tb)  # saved as Gemma3TextModel saves itself
    inexact = []
    for name, x in ta.items():
        assert tb[name].dtype == x.dtype == np.float32, name
        if not np.array_equal(tb[name], x):
            assert norms_close and name.endswith("norm.weight"), name
            np.testing.assert_allclose(tb[name], x, rtol=0, atol=F32_EPS * (1 + np.abs(x).max()))
            inexact.append(name)
    if norms_close:
        assert 0 < len(inexact) <= N_NORMS
    for folder in ("2_Dense", "3_Dense"):
        da, db = _safetensors(f"{a}/{folder}/model.safetensors"), _safetensors(f"{b}/{folder}/model.safetensors")
        assert list(db) == ["linear.weight"] and np.array_equal(da["linear.weight"], db["linear.weight"])


# ----------------------------------------------------------------------------- HF -> HF
def test_hf_to_hf_is_the_released_layout_again(outputs, reference):
    src, out = outputs["src"], outputs["hf"]
    _assert_same_directory_tensors(src, out)
    cfg = json.load(open(f"{out}/config.json"))
    assert cfg["architectures"] == ["Gemma3TextModel"] and cfg["model_type"] == "gemma3_text"
    assert cfg["use_bidirectional_attention"] is True and cfg["sliding_window"] == WINDOW  # as stored, not halved
    assert json.load(open(f"{out}/modules.json")) == json.load(open(f"{src}/modules.json"))
    for f in ("1_Pooling/config.json", "2_Dense/config.json", "3_Dense/config.json", "config_sentence_transformers.json",
              "sentence_bert_config.json"):
        assert json.load(open(f"{out}/{f}")) == json.load(open(f"{src}/{f}")), f
    assert os.path.isdir(f"{out}/4_Normalize") and os.path.isfile(f"{out}/tokenizer.model")
    states, emb, st = _reference(out)
    want_states, want_emb, want_st = reference
    assert np.array_equal(states, want_states) and np.array_equal(emb, want_emb)  # the same weights, the same code
    assert st.prompts == want_st.prompts and st.prompts["query"] == "task: search result | query: "
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]


# ----------------------------------------------------------------------------- Keras
def _keras_outputs(preset: str):
    import keras_hub

    backbone = keras_hub.models.Gemma3Backbone.from_preset(preset)
    out = backbone({"token_ids": np.array([TOKENS], dtype="int32"),
                    "padding_mask": np.ones((1, len(TOKENS)), dtype="int32")})
    as_np = lambda t: np.asarray(t.detach().cpu() if hasattr(t, "detach") else t)  # noqa: E731
    return as_np(out["sequence_output"])[0], as_np(out["pooled_output"])[0]


def test_keras_preset_is_an_embedding_backbone(outputs):
    k = outputs["keras"]
    c = json.load(open(f"{k}/config.json"))
    assert c["class_name"] == "Gemma3Backbone"
    cfg = c["config"]
    assert (cfg["is_embedding_model"], cfg["use_bidirectional_attention"]) == (True, True)
    assert (cfg["pooling_intermediate_dim"], cfg["embedding_dim"]) == DENSE[0][1:] + DENSE[1][1:] == (256, 64)
    # transformers' stored window 6 lets a token see 3 positions on either side; keras-hub's window S sees
    # S - S // 2 - 1 before and S // 2 after: S = 7
    assert (cfg["use_sliding_window_attention"], cfg["sliding_window_size"]) == (True, 7)
    meta = json.load(open(f"{k}/metadata.json"))
    assert meta["tasks"] == ["TextEmbedder"] and meta["gemma_inspect"]["sliding_window"] == WINDOW
    assert meta["gemma_inspect"]["sentence_transformers"]["config_sentence_transformers.json"]["prompts"]["query"] \
        == "task: search result | query: "
    assert not os.path.exists(f"{k}/task.json")  # no CausalLM: keras-hub's is an LM head the encoder lacks
    import h5py

    with h5py.File(f"{k}/model.weights.h5") as f:
        assert f["layers/dense/vars"].attrs["name"] == "pooling_dense_1"
        assert f["layers/dense_1/vars"].attrs["name"] == "embedding_projection"
        w2 = _safetensors(f"{outputs['src']}/2_Dense/model.safetensors")["linear.weight"]
        assert np.array_equal(f["layers/dense/vars/0"][()], w2.T)  # Keras kernels are [in, out]


def test_keras_runs_as_transformers_and_sentence_transformers(outputs, reference):
    want_states, want_emb, _ = reference
    states, pooled = _keras_outputs(outputs["keras"])
    assert states.shape == (len(TOKENS), H) and pooled.shape == (64,)
    assert float(np.abs(states - want_states).max()) <= 1e-4
    assert float(np.abs(pooled - want_emb).max()) <= 1e-4
    assert float(np.linalg.norm(pooled)) == pytest.approx(1.0, abs=1e-5)


def test_keras_hubs_own_window_convention_would_not_match(outputs, reference, tmp_path):
    """keras-hub's importer passes the stored window unchanged (S = 6: 2 positions before, 3 after): the first
    sliding layers then differ from transformers past the window - why the writer chooses S = 7."""
    copy = str(tmp_path / "k")
    shutil.copytree(outputs["keras"], copy)
    c = json.load(open(f"{copy}/config.json"))
    c["config"]["sliding_window_size"] = WINDOW
    json.dump(c, open(f"{copy}/config.json", "w"))
    states, _ = _keras_outputs(copy)
    assert float(np.abs(states - reference[0]).max()) > 1e-2


def test_keras_back_to_hf_is_bit_exact(outputs, reference):
    _assert_same_directory_tensors(outputs["src"], outputs["keras_hf"])
    assert json.load(open(f"{outputs['keras_hf']}/config.json"))["sliding_window"] == WINDOW
    assert json.load(open(f"{outputs['keras_hf']}/config_sentence_transformers.json")) == \
        json.load(open(f"{outputs['src']}/config_sentence_transformers.json"))
    states, emb, _ = _reference(outputs["keras_hf"])
    assert np.array_equal(states, reference[0]) and np.array_equal(emb, reference[1])


def test_an_even_keras_window_is_read_with_a_note(outputs, tmp_path):
    """A preset keras-hub's own importer made (S = the stored window, even) reads as that window, said in a note."""
    from gemma_inspect.formats import load

    copy = str(tmp_path / "k")
    shutil.copytree(outputs["keras"], copy)
    c = json.load(open(f"{copy}/config.json"))
    c["config"]["sliding_window_size"] = 8
    json.dump(c, open(f"{copy}/config.json", "w"))
    ckpt = load(copy)
    assert ckpt.spec.sliding_window == 8
    assert ("sliding_window_size 8 is even: keras-hub's bidirectional window sees 3 positions before a token and 4 "
            "after, transformers' window 8 sees 4 on either side; read as 8") in ckpt.notes


# ----------------------------------------------------------------------------- GGUF
def test_gguf_is_what_llama_cpps_converter_writes(outputs):
    from gguf import GGUFReader

    r = GGUFReader(outputs["gguf"])
    md = {k: f.contents() for k, f in r.fields.items()}
    assert md["general.architecture"] == "gemma-embedding"
    assert md["gemma-embedding.pooling_type"] == 1  # gguf.PoolingType.MEAN
    assert md["gemma-embedding.attention.sliding_window"] == WINDOW  # config.json's value, as the converter writes
    assert (md["gemma-embedding.dense_2_feat_in"], md["gemma-embedding.dense_2_feat_out"],
            md["gemma-embedding.dense_3_feat_in"], md["gemma-embedding.dense_3_feat_out"]) == (64, 256, 256, 64)
    assert md["gemma-embedding.block_count"] == LAYERS and md["gemma-embedding.rope.freq_base"] == 1e6
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == N_TENSORS + 2 and "output.weight" not in tensors
    src = _safetensors(f"{outputs['src']}/model.safetensors")
    for gname, folder in (("dense_2.weight", "2_Dense"), ("dense_3.weight", "3_Dense")):
        w = _safetensors(f"{outputs['src']}/{folder}/model.safetensors")["linear.weight"]
        t = tensors[gname]
        assert t.tensor_type.name == "F32" and np.array_equal(np.asarray(t.data).reshape(w.shape), w)
    norm = tensors["blk.0.attn_norm.weight"]
    w = src["layers.0.input_layernorm.weight"]
    assert np.array_equal(np.asarray(norm.data), w + np.float32(1))  # llama.cpp applies x * stored: 1 + w


def test_gguf_back_to_hf(outputs, reference):
    """Back to a sentence-transformers directory: every tensor and head weight exact but the norms (float32
    rounding of 1 + w); the settings GGUF does not keep come back as defaults; the same states and embedding."""
    _assert_same_directory_tensors(outputs["src"], outputs["gguf_hf"], norms_close=True)
    out = outputs["gguf_hf"]
    assert json.load(open(f"{out}/modules.json")) == json.load(open(f"{outputs['src']}/modules.json"))
    assert json.load(open(f"{out}/config.json"))["sliding_window"] == WINDOW
    assert json.load(open(f"{out}/config_sentence_transformers.json"))["prompts"] == {}
    # transformers computes 1 + w in float32, which is the stored 1 + w again: the same states, bit for bit
    states, emb, _ = _reference(out)
    assert np.array_equal(states, reference[0]) and np.array_equal(emb, reference[1])


def test_gguf_to_hf_to_gguf_is_bit_exact(outputs, tmp_path):
    """(1 + w) - 1 + 1 gives the stored 1 + w back exactly (Sterbenz): a GGUF survives the trip through HF."""
    from gguf import GGUFReader

    again = str(tmp_path / "again.gguf")
    _convert(outputs["gguf_hf"], again, "gguf")
    a = {t.name: np.asarray(t.data) for t in GGUFReader(outputs["gguf"]).tensors}
    b = {t.name: np.asarray(t.data) for t in GGUFReader(again).tensors}
    assert list(a) == list(b)
    assert all(a[n].dtype == b[n].dtype and np.array_equal(a[n], b[n]) for n in a)


# ----------------------------------------------------------------------------- diff
def _diff(a: str, b: str) -> dict:
    r = _run("diff", a, b, "--json")
    assert r.exit_code in (0, 1), r.output
    return json.loads(r.stdout)


def test_diff_across_formats_in_canonical_names(outputs):
    heads = ["head.dense.0.weight", "head.dense.1.weight"]
    for other in ("hf", "keras", "keras_hf"):
        d = _diff(outputs["src"], outputs[other])
        assert d["identical"] is True and d["spec_differences"] == [], other
        assert d["counts"]["equal"] == N_TENSORS + 2
        rows = {t["name"]: t for t in d["tensors"]}
        assert [n for n in rows if n.startswith("head.")] == heads
        assert rows[heads[0]]["shape_a"] == rows[heads[0]]["shape_b"] == [256, 64]
        assert all(rows[n]["bit_identical"] for n in heads)
    d = _diff(outputs["src"], outputs["gguf"])
    assert d["b"]["format"] == "gguf" and d["spec_differences"] == []
    rows = {t["name"]: t for t in d["tensors"]}
    assert d["counts"]["equal"] + d["counts"]["different"] == N_TENSORS + 2 and d["counts"]["different"] <= N_NORMS
    assert all(rows[n]["status"] == "equal" for n in heads)
    assert all(t["name"].endswith("norm.weight") and t["max_abs_diff"] <= 2 * F32_EPS
               for t in d["tensors"] if t["status"] != "equal")


def test_diff_sees_a_changed_head(outputs, tmp_path):
    from safetensors.numpy import save_file

    copy = str(tmp_path / "emb")
    shutil.copytree(outputs["hf"], copy)
    w = _safetensors(f"{copy}/3_Dense/model.safetensors")["linear.weight"]
    w[5, 7] += np.float32(0.25)
    save_file({"linear.weight": w}, f"{copy}/3_Dense/model.safetensors", metadata={"format": "pt"})
    d = _diff(outputs["keras"], copy)
    assert d["identical"] is False and d["counts"]["different"] == 1
    row = next(t for t in d["tensors"] if t["status"] == "different")
    assert row["name"] == "head.dense.1.weight" and row["max_abs_diff"] == 0.25
    # and a head of another shape is a spec difference, named as such
    cfg = json.load(open(f"{copy}/4_Normalize/../modules.json"))
    json.dump(cfg[:-1], open(f"{copy}/modules.json", "w"))  # no Normalize module
    d = _diff(outputs["src"], copy)
    assert [s["field"] for s in d["spec_differences"]] == ["embedding_head"]
    assert (d["spec_differences"][0]["a"]["normalize"], d["spec_differences"][0]["b"]["normalize"]) == (True, False)


def test_the_manifest_lists_the_heads(outputs, tmp_path):
    dest = str(tmp_path / "k")
    r = _run("convert", outputs["src"], dest, "--to", "keras")
    assert r.exit_code == 0, r.output
    listed = [t["name"] for t in json.load(open(f"{dest}/gemma-inspect-manifest.json"))["tensors"]]
    assert len(listed) == N_TENSORS + 2 and listed[-2:] == ["head.dense.0.weight", "head.dense.1.weight"]
    r = _run("diff", dest, "--manifest", "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["identical"] is True and len(m["tensors"]) == N_TENSORS + 2
    assert all(t["status"] == "equal" for t in m["tensors"])


# ----------------------------------------------------------------------------- what the targets cannot hold
def test_a_head_keras_hub_cannot_hold_is_refused_in_one_line(outputs, tmp_path):
    copy = str(tmp_path / "emb")
    shutil.copytree(outputs["src"], copy)
    cfg = json.load(open(f"{copy}/2_Dense/config.json"))
    cfg["activation_function"] = "torch.nn.modules.activation.Tanh"
    json.dump(cfg, open(f"{copy}/2_Dense/config.json", "w"))
    r = _run("convert", copy, str(tmp_path / "k"), "--to", "keras")
    assert r.exit_code == 2
    assert r.output == (f"Error: {copy}: keras-hub cannot express this checkpoint: 2 dense layer(s) (tanh, bias false, "
                        f"identity, bias false): keras-hub has exactly two, without bias or activation (use --force "
                        f"to convert anyway)\n")
    r = _run("convert", copy, str(tmp_path / "g.gguf"), "--to", "gguf")
    assert r.exit_code == 2
    assert r.output == ("Error: GGUF cannot express this embedding head faithfully: dense layers tanh, bias false, "
                        "identity, bias false: llama.cpp's converter keeps at most 2 weights (dense_2, dense_3), "
                        "without bias or activation (use --force to write it anyway)\n")
    assert not os.path.exists(tmp_path / "k") and not os.path.exists(tmp_path / "g.gguf")


def test_a_dense_bias_travels_to_hf_and_is_refused_by_keras(outputs, tmp_path, reference):
    """A Dense module with a bias (sentence-transformers' default) converts to HF with it (head.dense.0.bias) and
    sentence-transformers applies it; keras-hub's bias-free head refuses it."""
    from safetensors.numpy import save_file

    copy, out = str(tmp_path / "emb"), str(tmp_path / "hf")
    shutil.copytree(outputs["src"], copy)
    cfg = json.load(open(f"{copy}/2_Dense/config.json"))
    json.dump({**cfg, "bias": True}, open(f"{copy}/2_Dense/config.json", "w"))
    w = _safetensors(f"{copy}/2_Dense/model.safetensors")["linear.weight"]
    bias = np.linspace(-0.5, 0.5, 256, dtype=np.float32)
    save_file({"linear.weight": w, "linear.bias": bias}, f"{copy}/2_Dense/model.safetensors", metadata={"format": "pt"})
    _convert(copy, out, "hf")
    d = _diff(copy, out)
    assert d["identical"] is True and {t["name"] for t in d["tensors"] if t["name"].startswith("head.")} == \
        {"head.dense.0.weight", "head.dense.0.bias", "head.dense.1.weight"}
    assert np.array_equal(_safetensors(f"{out}/2_Dense/model.safetensors")["linear.bias"], bias)
    _, emb, st = _reference(out)
    assert st[2].linear.bias is not None and float(np.abs(emb - reference[1]).max()) > 1e-3  # the bias acts
    r = _run("convert", copy, str(tmp_path / "k"), "--to", "keras")
    assert r.exit_code == 2 and "2 dense layer(s) (identity, bias true, identity, bias false)" in r.output


def test_gemma_pytorch_is_refused_with_the_reason(outputs, tmp_path):
    r = _run("convert", outputs["src"], str(tmp_path / "e.ckpt"), "--to", "gemma-pytorch")
    assert r.exit_code == 2
    assert r.output == ("Error: embeddinggemma checkpoints cannot be written as gemma_pytorch: gemma_pytorch has no "
                        "encoder (its GEMMA_3 model attends causally, ends in the LM head, and holds no pooling or "
                        "dense heads)\n")
    assert not os.path.exists(tmp_path / "e.ckpt")


@pytest.mark.slow
def test_parity_across_formats_passes(outputs):
    """`parity` runs the Keras preset in keras-hub and the GGUF in the reference runtime against transformers on the
    source: every hidden state within the measured float32 noise, the embeddings' cosine >= 1 - 1e-6."""
    for other in ("keras", "gguf"):
        r = _run("parity", outputs["src"], outputs[other], "--json")
        assert r.exit_code == 0, r.output
        m = json.loads(r.stdout)
        assert m["passed"] is True and m["logits"] is None, other
        assert (m["a"]["runtime"], m["b"]["runtime"]) == ("transformers", {"keras": "keras", "gguf": "reference"}[other])
        assert m["embedding"]["cosine_similarity"] >= 1 - 1e-6


# ----------------------------------------------------------------------------- llama.cpp
@pytest.mark.slow
def test_llama_cpp_pools_as_sentence_transformers(outputs, reference):
    """llama.cpp loads the GGUF as gemma-embedding and gives the pooled, projected, normalised embedding of the
    same tokens (a loose tolerance: its kernels and float32 accumulation order differ)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=outputs["gguf"], embedding=True, n_ctx=64, n_batch=64, n_ubatch=64,
                          verbose=False)
    llm.tokenize = lambda *args, **kwargs: list(TOKENS)  # the very ids given to sentence-transformers
    got = np.asarray(llm.embed("the ids above", normalize=True), dtype=np.float64).reshape(-1)
    want = reference[1].astype(np.float64)
    assert got.shape == want.shape == (64,)
    assert float(np.dot(got, want) / np.linalg.norm(got) / np.linalg.norm(want)) >= 0.999
    assert float(np.abs(got - want).max()) <= 1e-2


# ----------------------------------------------------------------------------- the tokenizer's <eos>
def test_a_tokenizer_that_appends_eos_keeps_doing_so_in_every_format(outputs, tmp_path, tiny_tokenizer):
    """EmbeddingGemma's release tokenizes every input as <bos> text <eos> (tokenizer.json's post-processor,
    tokenizer_config.json's add_eos_token). The GGUF says tokenizer.ggml.add_eos_token = true, the Keras preset keeps
    it in metadata.json, the HF tokenizer rebuilt from either appends <eos> under AutoTokenizer, and our own encode
    appends it. (Found on the real release: without it llama.cpp pooled one token fewer, cosine 0.974.)"""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from gemma_inspect.formats import load
    from gemma_inspect.tokenizer import write_hf_fast_tokenizer

    src = str(tmp_path / "eos")
    shutil.copytree(outputs["src"], src)
    write_hf_fast_tokenizer(tiny_tokenizer, src, has_mask=False, add_eos=True)
    want = AutoTokenizer.from_pretrained(src)("Hello world")["input_ids"]
    assert want[0] == 2 and want[-1] == 1
    ckpt = load(src)
    assert ckpt.tokenizer.adds_eos is True and ckpt.tokenizer.encode("Hello world") == want
    assert load(outputs["src"]).tokenizer.adds_eos is False  # the fixture's tokenizer: BOS only, as Gemma's LMs
    for to, ext in (("gguf", ".gguf"), ("keras", "")):
        out = str(tmp_path / f"eos-{to}{ext}")
        _convert(src, out, to)
        if to == "gguf":
            md = {k: f.contents() for k, f in GGUFReader(out).fields.items()}
            assert md["tokenizer.ggml.add_eos_token"] is True
        else:
            assert json.load(open(f"{out}/metadata.json"))["gemma_inspect"]["add_eos_token"] is True
        assert load(out).tokenizer.encode("Hello world") == want, to
        back = str(tmp_path / f"eos-{to}-hf")
        _convert(out, back, "hf")
        assert AutoTokenizer.from_pretrained(back)("Hello world")["input_ids"] == want, to
        assert json.load(open(f"{back}/tokenizer_config.json"))["add_eos_token"] is True
    # and a GGUF of the fixture (no <eos> appended) says so
    md = {k: f.contents() for k, f in GGUFReader(outputs["gguf"]).fields.items()}
    assert md["tokenizer.ggml.add_eos_token"] is False
