"""EmbeddingGemma, first part: its released layout read as data and `summary` / `compare` on it.

The fixture is a tiny sentence-transformers directory as sentence-transformers 5's `SentenceTransformer.save`
writes it (sentence-transformers is not installed here; the layout follows its source): transformers'
Gemma3TextModel with use_bidirectional_attention saved at the top level by save_pretrained (tensor names without
`model.`, no lm_head, float32), modules.json (indent 2), 1_Pooling/config.json (mean), 2_Dense and 3_Dense
(config.json, indent 4, and model.safetensors holding `linear.weight`, written by safetensors' save_model as
Module.save_torch_weights does), an empty 4_Normalize folder, config_sentence_transformers.json,
sentence_bert_config.json, tokenizer.model and tokenizer.json. (convert and diff: test_embeddinggemma_convert.py.)"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from gemma_inspect.cli import main

H, FF, LAYERS, HEADS, KV, HD, WINDOW, VOCAB = 64, 96, 7, 4, 2, 16, 6, 384
DENSE = ((H, 256), (256, H))  # the release's 768 -> 3072 -> 768, scaled down
IDENTITY = "torch.nn.modules.linear.Identity"


def _json(path: str, obj, indent: int) -> None:
    with open(path, "w", encoding="utf8") as f:
        json.dump(obj, f, indent=indent)


def write_embeddinggemma(out: str, spm: str) -> int:
    """A tiny EmbeddingGemma directory; returns transformers' own parameter count of its transformer."""
    import torch
    from safetensors.torch import save_model
    from transformers import Gemma3TextConfig, Gemma3TextModel

    from gemma_inspect.tokenizer import write_hf_fast_tokenizer

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=H, intermediate_size=FF, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HD, sliding_window=WINDOW,
                           query_pre_attn_scalar=HD, max_position_embeddings=512, use_bidirectional_attention=True,
                           dtype="float32")
    model = Gemma3TextModel(cfg).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # non-trivial norms: never the all-zero initial (1 + w) = 1
                p.copy_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    write_hf_fast_tokenizer(spm, out, has_mask=False)
    shutil.copyfile(spm, os.path.join(out, "tokenizer.model"))
    _json(os.path.join(out, "sentence_bert_config.json"), {"max_seq_length": 2048, "do_lower_case": False}, 4)
    _json(os.path.join(out, "config_sentence_transformers.json"),
          {"model_type": "SentenceTransformer", "__version__": {"sentence_transformers": "5.1.0"},
           "prompts": {"query": "task: search result | query: ", "document": "title: none | text: "},
           "default_prompt_name": None, "similarity_fn_name": "cosine"}, 2)
    os.makedirs(os.path.join(out, "1_Pooling"))
    _json(os.path.join(out, "1_Pooling", "config.json"),
          {"word_embedding_dimension": H, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
           "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
           "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True}, 4)

    class Dense(torch.nn.Module):  # sentence_transformers.models.Dense's parameters: `linear`, an Identity
        def __init__(self, n_in: int, n_out: int):
            super().__init__()
            self.linear = torch.nn.Linear(n_in, n_out, bias=False)
            self.activation_function = torch.nn.Identity()

    for idx, (n_in, n_out) in zip((2, 3), DENSE):
        folder = os.path.join(out, f"{idx}_Dense")
        os.makedirs(folder)
        _json(os.path.join(folder, "config.json"), {"in_features": n_in, "out_features": n_out, "bias": False,
                                                    "activation_function": IDENTITY}, 4)
        save_model(Dense(n_in, n_out), os.path.join(folder, "model.safetensors"))
    os.makedirs(os.path.join(out, "4_Normalize"))  # Normalize.save writes nothing; the folder exists
    kinds = ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]
    _json(os.path.join(out, "modules.json"),
          [{"idx": i, "name": str(i), "path": "" if i == 0 else f"{i}_{k}", "type": f"sentence_transformers.models.{k}"}
           for i, k in enumerate(kinds)], 2)
    return model.num_parameters()


@pytest.fixture(scope="module")
def emb(tmp_path_factory, tiny_tokenizer):
    out = str(tmp_path_factory.mktemp("embeddinggemma") / "emb")
    count = write_embeddinggemma(out, tiny_tokenizer)
    return out, count


@pytest.fixture
def emb_copy(emb, tmp_path):
    dst = str(tmp_path / "emb")
    shutil.copytree(emb[0], dst)
    return dst


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_the_fixture_is_the_released_layout(emb):
    from safetensors import safe_open

    path, _ = emb
    cfg = json.load(open(f"{path}/config.json"))
    assert cfg["architectures"] == ["Gemma3TextModel"] and cfg["model_type"] == "gemma3_text"
    assert cfg["use_bidirectional_attention"] is True and cfg["sliding_window"] == WINDOW  # stored as given
    with safe_open(f"{path}/model.safetensors", "np") as f:
        names = set(f.keys())
        assert {f.get_tensor(n).dtype.name for n in names} == {"float32"}
    assert "embed_tokens.weight" in names and not any(n.startswith(("model.", "lm_head")) for n in names)
    with safe_open(f"{path}/2_Dense/model.safetensors", "np") as f:
        assert list(f.keys()) == ["linear.weight"] and f.get_tensor("linear.weight").shape == (256, H)
    assert os.path.isfile(f"{path}/tokenizer.model") and os.path.isfile(f"{path}/tokenizer.json")


def test_summary_json(emb):
    path, transformers_count = emb
    r = _run("summary", path, "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert m["family"] == "embeddinggemma" and m["family_title"] == "EmbeddingGemma" and m["format"] == "hf"
    a, p = m["architecture"], m["parameters"]
    assert a["attention_mask"] == "bidirectional"
    assert (a["num_layers"], a["hidden_size"], a["num_attention_heads"], a["num_key_value_heads"], a["head_dim"],
            a["intermediate_size"], a["vocab_size"], a["sliding_window"]) == (LAYERS, H, HEADS, KV, HD, FF, VOCAB, 6)
    assert a["layer_types"] == ["sliding_attention"] * 5 + ["full_attention", "sliding_attention"]
    assert m["lm_head"] == "none" and m["dtypes"] == {"float32": 2 + LAYERS * 13}
    # the transformer as transformers counts it (and by hand: embedding, 7 x (q, k, v, o, q/k norms, GeGLU, 4 norms),
    # final norm); the heads apart: 64*256 + 256*64, no bias
    by_hand = VOCAB * H + LAYERS * (2 * 64 * H + 2 * 32 * H + 2 * HD + 3 * FF * H + 4 * H) + H
    assert p["total"] == transformers_count == by_hand == 241_696
    assert p["heads"] == 2 * 64 * 256 == 32_768
    assert p["total_with_heads"] == transformers_count + 32_768
    head = m["embedding_head"]
    assert head["pooling"] == "mean" and head["include_prompt"] is True and head["normalize"] is True
    assert head["word_embedding_dimension"] == H and head["output_dimension"] == H
    assert head["modules"] == ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]
    assert [(d["path"], d["in_features"], d["out_features"], d["bias"], d["activation"], d["parameters"], d["dtype"])
            for d in head["dense"]] == [("2_Dense", 64, 256, False, "identity", 16_384, "float32"),
                                        ("3_Dense", 256, 64, False, "identity", 16_384, "float32")]
    assert m["tokenizer"]["files"] == [f"{path}/tokenizer.model", f"{path}/tokenizer.json"]


def test_summary_text(emb):
    path, count = emb
    r = _run("summary", path)
    assert r.exit_code == 0, r.output
    out = r.output
    assert "Family              EmbeddingGemma" in out
    assert f"Parameters          241.7K ({count:,}) transformer" in out
    assert "  dense heads       32.8K (32,768)" in out
    assert f"  with heads        274.5K ({count + 32_768:,})" in out
    assert "Attention mask      bidirectional; sliding layers see |i - j| <= 3" in out
    assert "Tied embeddings     no LM head: an embedding model, its token states are pooled" in out
    assert "│ dense heads (after pooling)     │  32,768 │ +13.6% │" in out
    assert f"│ total with the heads            │ {count + 32_768:,} │        │" in out
    assert ("Pooling mean over the tokens, then dense 64 -> 256 (no bias, identity), then dense 256 -> 64 (no "
            "bias, identity), then L2 normalise Embedding 64, L2-normalised") in " ".join(out.split())


def test_the_card_counts_what_transformers_counts():
    """The card's transformer = transformers' own count of the published config (meta device: no memory); its heads
    = the published dense shapes 768 -> 3072 -> 768 without bias."""
    import torch
    from transformers import Gemma3TextConfig, Gemma3TextModel

    from gemma_inspect.checkpoint import card_checkpoint

    published = dict(vocab_size=262144, hidden_size=768, intermediate_size=1152, num_hidden_layers=24,
                      num_attention_heads=3, num_key_value_heads=1, head_dim=256, max_position_embeddings=2048,
                      query_pre_attn_scalar=256, sliding_window=512, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                      rope_local_base_freq=10_000.0, use_bidirectional_attention=True)
    with torch.device("meta"):
        model = Gemma3TextModel(Gemma3TextConfig(**published))
    ckpt = card_checkpoint("embeddinggemma-300m")
    assert ckpt.spec.num_parameters == model.num_parameters() == 302_863_104
    assert ckpt.embedding_head.parameters == 768 * 3072 + 3072 * 768 == 4_718_592
    assert ckpt.spec.attention_mask == "bidirectional" and ckpt.lm_head == "none"
    assert ckpt.spec.layer_types == tuple(model.config.layer_types)


def test_compare_against_the_card(emb):
    path, count = emb
    r = _run("compare", path, "embeddinggemma-300m", "--json")
    assert r.exit_code == 0, r.output
    tiny, card = json.loads(r.output)["models"]
    assert card["card"] == "embeddinggemma-300m" and card["family"] == tiny["family"] == "embeddinggemma"
    assert card["parameters"]["total"] == 302_863_104 and card["parameters"]["heads"] == 4_718_592
    assert card["parameters"]["total_with_heads"] == 307_581_696
    assert card["embedding_head"]["dense"][0]["out_features"] == 3072 and card["embedding_head"]["pooling"] == "mean"
    assert card["architecture"]["max_position_embeddings"] == 2048 and card["architecture"]["dtype"] == "float32"
    r = _run("compare", "gemma3-270m", path, "embeddinggemma-300m")
    assert r.exit_code == 0, r.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.rstrip("│").split("│")[2:]]
            for line in r.output.splitlines() if line.startswith("│ ") and line.split("│")[1].strip()}
    assert rows["Attention mask"] == ["causal", "bidirectional", "bidirectional"]
    assert rows["dense heads"] == ["-", "32.8K", "4.7M"]
    assert rows["with heads"] == ["-", "274.5K", "307.6M"]


def test_normalize_needs_no_folder(emb_copy):
    """Normalize saves nothing; a hub repository has no 4_Normalize folder at all (git keeps no empty folders)."""
    os.rmdir(f"{emb_copy}/4_Normalize")
    m = json.loads(_run("summary", emb_copy, "--json").output)
    assert m["embedding_head"]["normalize"] is True and m["parameters"]["heads"] == 32_768


def test_from_the_hub(emb, tmp_path):
    """Headers only (summary): the transformer, and a note that the heads were not read; downloaded (summary --scan):
    the modules come with the snapshot and read as the directory does."""
    import subprocess
    import sys

    import hubfake

    path, _ = emb
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with hubfake.FakeHub() as hub:
        hub.add("google/tiny-embeddinggemma", path)
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(tmp_path / "hf-cache"),
                   PYTHONPATH=root, HF_HUB_DISABLE_PROGRESS_BARS="1", HF_TOKEN="", HF_HUB_DISABLE_XET="1")
        runs = [subprocess.run([sys.executable, "-m", "gemma_inspect", "summary", "google/tiny-embeddinggemma",
                                *extra, "--json"], env=env, capture_output=True, text=True, timeout=120)
                for extra in ([], ["--scan"])]
    for p in runs:
        assert p.returncode == 0, p.stderr
    headers, full = (json.loads(p.stdout) for p in runs)
    local = json.loads(_run("summary", path, "--json").output)
    assert headers["family"] == full["family"] == "embeddinggemma"
    assert headers["parameters"]["total"] == local["parameters"]["total"] and "embedding_head" not in headers
    assert any("sentence-transformers modules (pooling, dense heads) are not read" in n for n in headers["notes"])
    assert full["embedding_head"] == {**local["embedding_head"]} and full["parameters"] == local["parameters"]


def test_a_causal_gemma3_text_is_still_gemma3(tiny_models, copy_dir):
    path = copy_dir(tiny_models.get("gemma3", tokenizer=False))
    cfg = json.load(open(f"{path}/config.json"))
    cfg["use_bidirectional_attention"] = False
    _json(f"{path}/config.json", cfg, 2)
    m = json.loads(_run("summary", path, "--json").output)
    assert m["family"] == "gemma3" and m["architecture"]["attention_mask"] == "causal" and "embedding_head" not in m


def test_bidirectional_is_refused_where_the_family_is_causal(tiny_models, copy_dir):
    path = copy_dir(tiny_models.get("gemma2", tokenizer=False))
    cfg = json.load(open(f"{path}/config.json"))
    cfg["use_bidirectional_attention"] = True
    _json(f"{path}/config.json", cfg, 2)
    r = _run("summary", path)
    assert r.exit_code == 2
    assert r.output == (f"Error: {path}/config.json: use_bidirectional_attention=true is not a Gemma causal-LM "
                        f"configuration this tool supports\n")


def _edit(path: str, rel: str, change) -> None:
    obj = json.load(open(os.path.join(path, rel)))
    obj = change(obj) or obj
    _json(os.path.join(path, rel), obj, 2)


def test_missing_dense_weights(emb_copy):
    os.remove(f"{emb_copy}/2_Dense/model.safetensors")
    r = _run("summary", emb_copy)
    assert r.exit_code == 2
    assert r.output == f"Error: {emb_copy}/2_Dense: no model.safetensors: the Dense module's weights are missing\n"


def test_modules_json_pointing_outside(emb_copy):
    _edit(emb_copy, "modules.json", lambda ms: ms[2].update(path="../2_Dense"))
    r = _run("summary", emb_copy)
    assert r.exit_code == 2
    assert r.output == (f"Error: {emb_copy}/modules.json: refers to '../2_Dense', which leaves the checkpoint "
                        f"directory\n")


def test_dense_config_contradicting_its_weights(emb_copy):
    _edit(emb_copy, "3_Dense/config.json", lambda c: c.update(out_features=32))
    r = _run("summary", emb_copy)
    assert r.exit_code == 2
    assert r.output == (f"Error: {emb_copy}/3_Dense/model.safetensors: linear.weight has shape [64, 256] but "
                        f"3_Dense/config.json (in_features 256, out_features 32) implies [32, 256]\n")


def test_dense_chain_that_does_not_connect(emb_copy):
    _edit(emb_copy, "1_Pooling/config.json", lambda c: c.update(word_embedding_dimension=32))
    r = _run("summary", emb_copy)
    assert r.exit_code == 2
    assert r.output == (f"Error: {emb_copy}/1_Pooling/config.json: word_embedding_dimension 32 is not the "
                        f"transformer's hidden_size 64\n")


def test_an_unknown_module_type(emb_copy):
    _edit(emb_copy, "modules.json", lambda ms: ms[4].update(type="my_package.Whiten"))
    r = _run("summary", emb_copy)
    assert r.exit_code == 2
    assert r.output.startswith(f"Error: {emb_copy}/modules.json: module 4 has type 'my_package.Whiten'; supported: ")
    assert r.output.count("\n") == 1
