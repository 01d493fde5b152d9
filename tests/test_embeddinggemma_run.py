"""EmbeddingGemma run: the reference runtime's bidirectional mask (sliding layers |i - j| <= window // 2, as
transformers applies the stored window), the transformers runtime on Gemma3TextModel (token states, no logits),
and `parity` comparing per-token hidden states and the pooled, projected, normalised sentence embedding.

The fixture is tests/test_embeddinggemma.py's tiny sentence-transformers directory (window 6, 7 layers)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gemma_inspect.cli import main
from tests.test_embeddinggemma import WINDOW, write_embeddinggemma

TOKENS = [2, 17, 40, 5, 99, 250, 31, 8, 77, 120, 64, 3, 200, 11, 45, 9, 150, 60, 22, 301]  # 20 > the window (6)


@pytest.fixture(scope="module")
def emb(tmp_path_factory, tiny_tokenizer):
    out = str(tmp_path_factory.mktemp("embeddinggemma-run") / "emb")
    write_embeddinggemma(out, tiny_tokenizer)
    return out


def _independent_embedding(path: str, ids: list[int]):
    """transformers' Gemma3TextModel, mean pooling, the two Dense layers and L2 normalisation written out here
    (sentence-transformers' pipeline for this modules.json), in float64 after the model."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        states = model(input_ids=torch.tensor([ids])).last_hidden_state.double()
    e = states.mean(dim=1)
    for folder in ("2_Dense", "3_Dense"):
        e = e @ load_file(f"{path}/{folder}/model.safetensors")["linear.weight"].double().T
    return type(model).__name__, torch.nn.functional.normalize(e, dim=-1)


def test_reference_and_transformers_agree_past_the_window(emb):
    import torch

    from gemma_inspect.formats import load
    from gemma_inspect.runtimes import run

    ckpt = load(emb)
    ref = run(ckpt, TOKENS, "reference", "cpu", "float32")
    hf = run(ckpt, TOKENS, "transformers", "cpu", "float32")
    assert ref.logits is None and hf.logits is None  # no LM head: token states only
    assert len(ref.hidden_states) == len(hf.hidden_states) == 7 + 2
    for a, b in zip(ref.hidden_states, hf.hidden_states):
        assert a.shape == (1, len(TOKENS), 64)
        assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())
    name, want = _independent_embedding(emb, TOKENS)
    assert name == "Gemma3TextModel"
    for r in (ref, hf):
        assert r.embedding.shape == (1, 64)
        assert float(torch.linalg.norm(r.embedding.double())) == pytest.approx(1.0, abs=1e-6)
        assert float((r.embedding.double() - want).abs().max()) <= 1e-5


def test_the_mask_is_bidirectional_and_the_sliding_window_symmetric(emb):
    """Layer 0 is a sliding layer (window 6: |i - j| <= 3). Token 0's state after it moves when token 3 changes
    and not when token 4 does; after the last (global) layer it moves when the last token changes."""
    from gemma_inspect.formats import load
    from gemma_inspect.runtimes import run

    ckpt = load(emb)
    assert ckpt.spec.layer_types[0] == "sliding_attention" and ckpt.spec.sliding_window == WINDOW == 6
    for runtime in ("reference", "transformers"):
        base = run(ckpt, TOKENS, runtime, "cpu", "float32").hidden_states
        changed = {}
        for pos in (3, 4, len(TOKENS) - 1):
            ids = list(TOKENS)
            ids[pos] = 123
            changed[pos] = run(ckpt, ids, runtime, "cpu", "float32").hidden_states
        first = lambda hs, layer: hs[layer][0, 0]  # noqa: E731  token 0 after block `layer - 1`
        assert float((first(changed[3], 1) - first(base, 1)).abs().max()) > 1e-3, runtime
        assert float((first(changed[4], 1) - first(base, 1)).abs().max()) <= 1e-6, runtime
        assert float((first(changed[len(TOKENS) - 1], 8) - first(base, 8)).abs().max()) > 1e-3, runtime


def test_parity_json_and_text(emb, tmp_path):
    tokens = ",".join(map(str, TOKENS))
    r = CliRunner().invoke(main, ["parity", emb, emb, "--runtime-a", "reference", "--runtime-b", "transformers",
                                  "--device", "cpu", "--tokens", tokens, "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["passed"] is True and res["logits"] is None and res["vocab"] is None
    assert res["a"]["runtime"] == "reference" and res["b"]["runtime"] == "transformers"
    emb_ = res["embedding"]
    assert emb_["dimension"] == 64 and emb_["passed"] is True and emb_["min_cosine"] == pytest.approx(1 - 1e-6)
    assert 1 - 1e-6 <= emb_["cosine_similarity"] <= 1 + 1e-9 and emb_["max_abs_diff"] <= 1e-5
    assert [row["status"] for row in res["layers"]] == ["ok"] * 9
    assert res["tolerance"]["mode"] == "noise floor" and res["tolerance"]["embedding_min_cosine"] == emb_["min_cosine"]
    r = CliRunner().invoke(main, ["parity", emb, emb, "--runtime-a", "reference", "--runtime-b", "transformers",
                                  "--device", "cpu", "--tokens", tokens, "--plot", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    assert open(tmp_path / "p.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "Embedding (pooled, projected, normalised; 64 dimensions): cosine similarity" in " ".join(r.stdout.split())
    assert "Logits" not in r.stdout and "PASS" in r.stdout


def test_parity_fails_on_a_changed_dense_head(emb, tmp_path):
    """B's second Dense layer scaled by -1: every token state agrees, the embedding does not."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    other = str(tmp_path / "emb")
    shutil.copytree(emb, other)
    path = f"{other}/3_Dense/model.safetensors"
    w = load_file(path)
    save_file({"linear.weight": -w["linear.weight"].contiguous()}, path)
    r = CliRunner().invoke(main, ["parity", emb, other, "--runtime-a", "reference", "--runtime-b", "reference",
                                  "--device", "cpu", "--tokens", ",".join(map(str, TOKENS)), "--json"])
    assert r.exit_code == 1, r.output
    res = json.loads(r.stdout)
    assert res["passed"] is False and [row["status"] for row in res["layers"]] == ["ok"] * 9
    assert res["embedding"]["cosine_similarity"] == pytest.approx(-1.0, abs=1e-6)
    assert res["embedding"]["passed"] is False
    del torch


# ============================================================================= verify
def _checks(result) -> dict:
    return {c["name"]: c for c in result["checks"]}


@pytest.mark.parametrize("runtime", ["reference", "transformers"])
def test_verify_sees_bidirectional_attention_and_the_heads(emb, runtime):
    from gemma_inspect.verify import CHECK_NAMES, verify

    res = verify(emb, runtime=runtime, device="cpu")
    c = _checks(res)
    assert res["passed"] is True and list(c)[:len(CHECK_NAMES)] == list(CHECK_NAMES)
    assert c["attention_mask"]["status"] == "pass" and c["attention_mask"]["observed"] == "bidirectional"
    assert "block 0's first query attends to later keys" in c["attention_mask"]["evidence"]
    assert c["sliding_window"]["status"] == "pass"
    assert c["sliding_window"]["observed"] == {"window": 6, "sliding_layers": [0, 1, 2, 3, 4, 6], "global_layers": [5]}
    assert "0: 4, 1: 4, 2: 4, 3: 4, 4: 4, 5: 32, 6: 4" in c["sliding_window"]["evidence"]  # itself + 3 before
    head = c["embedding_head"]
    assert head["status"] == "pass"
    assert head["observed"] == head["expected"] == {
        "pooling": "mean", "dense": [[64, 256, "identity", False], [256, 64, "identity", False]], "normalize": True,
        "output_dimension": 64}
    assert "give 64 values of L2 norm 1.000000; expected: as declared" in head["evidence"]
    for name in ("tied_embeddings", "logit_softcap"):
        assert c[name]["status"] == "skip" and "no LM head" in c[name]["evidence"]


def test_verify_fails_a_causal_mask_on_a_bidirectional_model(emb, monkeypatch):
    """The reference runtime with the causal mask swapped in: the first token no longer hears the last."""
    import dataclasses

    from gemma_inspect.runtimes import reference
    from gemma_inspect.verify import verify

    original = reference.attention_mask
    monkeypatch.setattr(reference, "attention_mask", lambda spec, layer, t, device: original(
        dataclasses.replace(spec, attention_mask="causal"), layer, t, device))
    c = _checks(verify(emb, runtime="reference", device="cpu"))
    assert c["attention_mask"]["status"] == "fail" and c["attention_mask"]["observed"] == "causal"
    assert c["attention_mask"]["evidence"].startswith("changing the last of 32 tokens moved the first token's final "
                                                      "state by 0 (0 of its scale)")


def test_verify_compares_the_heads_with_the_published_card(emb, monkeypatch):
    """Against the published embeddinggemma-300m heads (768 -> 3072 -> 768) the tiny model's do not match."""
    from gemma_inspect import checks
    from gemma_inspect.spec import card
    from gemma_inspect.verify import verify

    monkeypatch.setattr(checks, "published_card", lambda spec: card("embeddinggemma-300m"))
    c = _checks(verify(emb, runtime="reference", device="cpu"))["embedding_head"]
    assert c["status"] == "fail"
    assert c["expected"]["dense"] == [[768, 3072, "identity", False], [3072, 768, "identity", False]]
    assert c["observed"]["output_dimension"] == 64
    assert c["evidence"].endswith("expected: the published embeddinggemma-300m")
