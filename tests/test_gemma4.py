"""Gemma 4 (text decoder): `summary` / `compare` of tiny seeded checkpoints written by transformers itself, the
cards against transformers' own counts, a header-only 31B in under a second, and the commands that refuse it.

Every expected value is taken from the transformers model that wrote the files (its modules, num_parameters,
state_dict), never from this package."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from gemma_inspect.cli import main
from gemma_inspect.spec import card

SLIDING, FULL = "sliding_attention", "full_attention"
DENSE_LAYERS = [SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL]


def _randomise(model: "torch.nn.Module", seed: int) -> None:
    """Norm weights around 1 and layer scalars in [0.3, 0.9] (a converter dropping them must not pass)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("layer_scalar"):
                t.copy_(0.3 + 0.6 * torch.rand(t.shape, generator=g))
            elif "norm" in name or name.endswith(("router.scale", "per_expert_scale")):
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
            elif t.dtype.is_floating_point:
                t.copy_(0.05 * torch.randn(t.shape, generator=g))


def _build(tmp: str, seed: int, **cfg):
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    torch.manual_seed(seed)
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                head_dim=8, global_head_dim=16, sliding_window=4, max_position_embeddings=128,
                final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh")
    base.update(cfg)
    model = Gemma4ForCausalLM(Gemma4TextConfig(**base)).float().eval()
    _randomise(model, seed)
    model.save_pretrained(tmp)
    return model


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """PLE, KV sharing of the last two layers, double-wide MLP there, head_dim 8 sliding / 16 full."""
    d = str(tmp_path_factory.mktemp("g4dense"))
    m = _build(d, 1, num_hidden_layers=6, layer_types=DENSE_LAYERS, vocab_size_per_layer_input=64,
               hidden_size_per_layer_input=4, num_kv_shared_layers=2, use_double_wide_mlp=True)
    return d, m


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """Experts beside the dense MLP, K=V on full layers with their own K/V head count, no PLE."""
    d = str(tmp_path_factory.mktemp("g4moe"))
    m = _build(d, 2, num_hidden_layers=4, layer_types=[SLIDING, FULL, SLIDING, FULL], hidden_size_per_layer_input=0,
               attention_k_eq_v=True, num_global_key_value_heads=1, enable_moe_block=True, num_experts=4,
               top_k_experts=2, moe_intermediate_size=8)
    return d, m


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def summary_json(path: str) -> dict:
    r = run("summary", path, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _kv_bytes(model, per_elem: int) -> int:
    """K and V cached per token, from transformers' own attention modules (shared layers have no k_proj)."""
    return sum(2 * layer.self_attn.k_proj.out_features * per_elem for layer in model.model.layers
               if not layer.self_attn.is_kv_shared_layer)


def test_dense_summary_json_is_what_transformers_built(dense):
    d, m = dense
    s = summary_json(d)
    a, p = s["architecture"], s["parameters"]
    layers = m.model.layers
    assert s["family"] == "gemma4" and s["format"] == "hf"
    assert p["total"] == m.num_parameters() == 65_356
    ple = m.model.embed_tokens_per_layer.weight.numel()
    assert p["per_layer_embedding"] == ple == 1536
    assert p["effective"] == m.num_parameters() - ple
    assert p["buffers"] == len(layers)  # one layer_scalar per layer, not a parameter
    assert p["total"] == p["embedding"] + p["attention"] + p["feedforward"] + p["norms"] + p["output"]
    assert a["layer_head_dims"] == [layer.self_attn.head_dim for layer in layers] == [8, 8, 16, 8, 8, 16]
    assert a["layer_kv_heads"] == [2] * 6
    assert a["layer_intermediate_sizes"] == [layer.mlp.intermediate_size for layer in layers] == [48] * 4 + [96] * 2
    assert a["num_kv_shared_layers"] == 2 and a["kv_sources"] == [0, 1, 2, 3, 3, 2]
    assert a["attention_k_eq_v"] is False and a["moe_experts"] == 0
    assert a["per_layer_input_size"] == 4 and a["per_layer_vocab_size"] == 64
    assert a["norm_offset"] == 0 and a["query_scale"] == 1.0 and a["final_logit_softcap"] == 30.0
    assert a["rope_partial_factor"] == 0.25
    assert s["kv_cache_bytes_per_token"] == _kv_bytes(m, 4) == 640
    assert s["layer_scalars_stored"] == 6
    assert s["notes"] == [
        "full-layer head geometry read from per_layer_config (as transformers 5.24 saves it; llama.cpp and "
        "keras-hub read global_head_dim / num_global_key_value_heads instead)",
        "the 2 KV-shared layers 4-5 store no k/v tensors (as save_pretrained writes them)"]


def test_dense_summary_text(dense):
    d, _ = dense
    r = run("summary", d)
    assert r.exit_code == 0, r.output
    lines = [" ".join(line.split()) for line in r.stdout.splitlines()]
    for want in ("Family Gemma 4 (text)", "Parameters 65.4K (65,356) tied", "per-layer embedding 1.5K (1,536)",
                 "effective 63.8K (63,820) without the per-layer table", "K=V no",
                 "Head geometry sliding 2 K/V x head_dim 8; full 2 K/V x head_dim 16",
                 "Experts none", "Norm RMSNorm, applies w", "Layer scalars stored on 6 of 6 layers",
                 "Per-layer inputs 4 per layer; table 64 x 24 = 1.5K", "KV cache / token 640 B (float32)",
                 "Query scale 1 (queries unscaled; QK-norm sets their size)"):
        assert want in lines, (want, lines)
    text = " ".join(" ".join(lines).split())
    assert "KV sharing last 2 layers (4, 5) compute no K/V and reuse layer 2 (full) / 3 (sliding)" in text
    assert "width 48 per branch; 96 on the KV-shared layers 4, 5 (double-wide)" in text


def test_moe_k_eq_v_summary(moe):
    d, m = moe
    s = summary_json(d)
    a, p = s["architecture"], s["parameters"]
    assert p["total"] == m.num_parameters()
    experts = [layer.experts for layer in m.model.layers]
    stacked = sum(e.gate_up_proj.numel() + e.down_proj.numel() for e in experts)
    assert p["experts_active"] == m.num_parameters() - stacked + stacked * 2 // 4
    assert p["experts"] == stacked + sum(layer.router.proj.weight.numel() + layer.router.scale.numel()
                                         + layer.router.per_expert_scale.numel() for layer in m.model.layers)
    assert "per_layer_embedding" not in p and "effective" not in p
    assert [layer.self_attn.v_proj is None for layer in m.model.layers] == [False, True, False, True]
    assert a["attention_k_eq_v"] is True and a["layer_kv_heads"] == [2, 1, 2, 1]
    assert a["moe_experts"] == 4 and a["moe_top_k"] == 2 and a["moe_intermediate_size"] == 8
    assert s["kv_cache_bytes_per_token"] == _kv_bytes(m, 4)
    lines = [" ".join(line.split()) for line in run("summary", d).stdout.splitlines()]
    assert "K=V full layers: no v_proj, V = v_norm(K projection)" in lines
    assert "Head geometry sliding 2 K/V x head_dim 8; full 1 K/V x head_dim 16" in lines


def test_config_spellings_agree(dense, moe, tmp_path):
    """global_head_dim / num_global_key_value_heads (what llama.cpp and keras-hub read) and a per_layer_config
    with zero-padded keys read as the same model."""
    d, _ = moe
    want = summary_json(d)
    for name, edit in (("plain", lambda c: (c.pop("per_layer_config"), c.update(global_head_dim=16,
                                                                             num_global_key_value_heads=1))),
                       ("padded", lambda c: c.update(per_layer_config={f"{int(k):02d}": v for k, v in
                                                                       c["per_layer_config"].items()}))):
        out = tmp_path / name
        shutil.copytree(d, out)
        cfg = json.loads((out / "config.json").read_text())
        edit(cfg)
        (out / "config.json").write_text(json.dumps(cfg))
        got = summary_json(str(out))
        assert got["architecture"] == want["architecture"] and got["parameters"] == want["parameters"], name


def test_k_eq_v_tensors_under_a_config_without_the_flag(moe, tmp_path):
    """keras-hub 0.32's exporter writes no attention_k_eq_v: read as transformers reads it, the file lacks v_proj."""
    d, _ = moe
    out = tmp_path / "noflag"
    shutil.copytree(d, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["attention_k_eq_v"] = False
    (out / "config.json").write_text(json.dumps(cfg))
    r = run("summary", str(out))
    assert r.exit_code == 2
    assert r.output.startswith(f"Error: {out}/model.safetensors: tensors required by {out}/config.json are "
                               f"missing: model.layers.1.self_attn.v_proj.weight, model.layers.3.self_attn.v_proj")


def test_unused_kv_of_shared_layers_are_accepted_and_named(dense, tmp_path):
    """Google's original E2B/E4B files store k/v/k_norm for the KV-shared layers: accepted, set aside, said."""
    from safetensors.torch import load_file, save_file

    d, m = dense
    out = tmp_path / "with-kv"
    shutil.copytree(d, out)
    tensors = load_file(str(out / "model.safetensors"))
    for i in (4, 5):
        hd = m.model.layers[i].self_attn.head_dim
        for name, shape in (("k_proj.weight", (2 * hd, 32)), ("v_proj.weight", (2 * hd, 32)), ("k_norm.weight", (hd,))):
            tensors[f"model.layers.{i}.self_attn.{name}"] = torch.zeros(shape)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    s = summary_json(str(out))
    assert s["parameters"] == summary_json(d)["parameters"]
    assert s["ignored_tensors"] == 6
    assert ("the file stores k/v tensors for the 2 KV-shared layers 4-5 (6 tensors), which never use them (as "
            "Google's original files do): set aside") in s["notes"]
    # a wrong shape there is still an error
    tensors["model.layers.5.self_attn.k_norm.weight"] = torch.zeros(8)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    r = run("summary", str(out))
    assert r.exit_code == 2
    assert r.output == (f"Error: {out}/model.safetensors: model.layers.5.self_attn.k_norm.weight (unused: layer 5 "
                        f"shares its K/V) has shape [8] but {out}/config.json implies [16] (head_dim=16 on layer "
                        f"5)\n")


def test_gemma_pytorch_refuses_gemma4(dense, tmp_path):
    d, _ = dense
    out = tmp_path / "out.ckpt"
    r = run("convert", d, str(out), "--to", "gemma-pytorch")
    assert r.exit_code == 2
    assert r.output == ("Error: gemma4 checkpoints cannot be written as gemma_pytorch: gemma_pytorch has no Gemma 4 "
                        "architecture (it knows GEMMA_1, GEMMA_2 and GEMMA_3, none with per-layer embeddings, KV "
                        "sharing, K=V, experts or layer scalars)\n")
    assert not out.exists()


def test_compare_puts_gemma4_beside_gemma3(dense):
    d, _ = dense
    r = run("compare", d, "gemma3-1b", "--json")
    assert r.exit_code == 0, r.output
    models = json.loads(r.stdout)["models"]
    assert [m["family"] for m in models] == ["gemma4", "gemma3"]
    text = run("compare", "gemma4-e2b", "gemma3-1b").stdout
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
            for line in text.splitlines() if line.count("│") == 4 and line.split("│")[1].strip()}
    assert rows["per-layer embedding"] == ["2.3B", "-"]
    assert rows["effective"] == ["2.3B", "-"]
    assert rows["Experts"] == ["none", "none"]
    assert rows["K=V"] == ["no", "no"]


# ----------------------------------------------------------------------------- cards vs transformers
def _hf_config(spec):
    from transformers import Gemma4TextConfig

    return Gemma4TextConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, head_dim=spec.head_dim, global_head_dim=spec.global_head_dim,
        num_global_key_value_heads=spec.num_global_key_value_heads, attention_k_eq_v=spec.attention_k_eq_v,
        layer_types=list(spec.layer_types), sliding_window=spec.sliding_window,
        hidden_size_per_layer_input=spec.per_layer_input_size,
        vocab_size_per_layer_input=spec.per_layer_vocab_size or spec.vocab_size,
        num_kv_shared_layers=spec.num_kv_shared_layers, use_double_wide_mlp=spec.double_wide_mlp,
        enable_moe_block=bool(spec.moe_experts), num_experts=spec.moe_experts or None,
        top_k_experts=spec.moe_top_k or None, moe_intermediate_size=spec.moe_intermediate_size or None,
        final_logit_softcapping=spec.final_logit_softcap)


@pytest.mark.parametrize("name", ["gemma4-e2b", "gemma4-e4b", "gemma4-26b-a4b", "gemma4-31b"])
def test_card_counts_are_transformers_counts(name):
    from transformers import Gemma4ForCausalLM

    spec = card(name)
    with torch.device("meta"):
        model = Gemma4ForCausalLM(_hf_config(spec))
    b = spec.parameter_breakdown()
    assert b["total"] == model.num_parameters()
    assert b["buffers"] == sum(x.numel() for x in model.buffers() if x.ndim == 1 and x.shape == (1,))
    assert spec.kv_cache_bytes_per_token() == _kv_bytes(model, 2)
    from gemma_inspect.checkpoint import expected_tensors

    hf = {n: tuple(t.shape) for n, t in model.state_dict().items() if n != "lm_head.weight"}
    assert expected_tensors(spec) == hf  # every name and shape, layer by layer
    if spec.per_layer_input_size:
        assert b["effective"] == b["total"] - model.model.embed_tokens_per_layer.weight.numel()


def test_google_quoted_counts():
    """E2B: Google quotes 2.3 B effective (the text decoder's total without the per-layer table); 26B-A4B:
    3.8 B active per token."""
    e2b = card("gemma4-e2b").parameter_breakdown()
    assert round(e2b["effective"] / 1e9, 1) == 2.3
    assert round(card("gemma4-26b-a4b").parameter_breakdown()["experts_active"] / 1e9, 1) == 3.8


# ----------------------------------------------------------------------------- header-only 31B
GEMMA4_31B_CONFIG = {
    "architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4", "dtype": "bfloat16",
    "text_config": {
        "model_type": "gemma4_text", "vocab_size": 262144, "hidden_size": 5376, "intermediate_size": 21504,
        "num_hidden_layers": 60, "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 256,
        "global_head_dim": 512, "num_global_key_value_heads": 4, "attention_k_eq_v": True,
        "hidden_size_per_layer_input": 0, "sliding_window": 1024, "final_logit_softcapping": 30.0,
        "max_position_embeddings": 262144, "use_bidirectional_attention": "vision",
        "layer_types": ([SLIDING] * 5 + [FULL]) * 10,
        "rope_parameters": {FULL: {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0,
                                   "rope_type": "proportional"},
                            SLIDING: {"rope_theta": 10000.0, "rope_type": "default"}},
    },
    "vision_config": {"model_type": "gemma4_vision"},
}


def test_header_only_31b_summary_is_fast(tmp_path):
    from test_big_headers import assert_fast_and_small, best_of, hf_names, write_sparse_safetensors

    spec = card("gemma4-31b")
    names = [("model.language_model." + n[len("model."):], s) for n, s in hf_names(spec)]
    names += [("model.vision_tower.encoder.layers.0.mlp.up_proj.linear.weight", (4304, 1152))]
    size = write_sparse_safetensors(str(tmp_path / "model.safetensors"), names)
    assert size > 61e9
    (tmp_path / "config.json").write_text(json.dumps(GEMMA4_31B_CONFIG))
    r = best_of(2, "summary", str(tmp_path), "--json")
    assert_fast_and_small(r)
    s = json.loads(r["stdout"])
    assert s["parameters"]["total"] == card("gemma4-31b").num_parameters == 30_697_345_280
    assert s["kv_cache_bytes_per_token"] == card("gemma4-31b").kv_cache_bytes_per_token()
    assert s["ignored_tensors"] == 1
    assert s["notes"] == [
        "use_bidirectional_attention='vision' makes only image tokens attend both ways: the text decoder is causal, "
        "as read here",
        "multimodal Gemma 4: vision/audio towers (1 tensors, 4,958,208 parameters) reported and ignored; only the "
        "text decoder is read"]
    assert os.path.getsize(tmp_path / "model.safetensors") == size


def test_a_file_without_layer_scalars_reads_as_transformers_loads_it(dense, tmp_path):
    """transformers initialises a missing layer_scalar buffer to 1: read so, and said (no release has that)."""
    from safetensors.torch import load_file, save_file

    d, _ = dense
    out = tmp_path / "no-scalars"
    shutil.copytree(d, out)
    tensors = {n: t for n, t in load_file(str(out / "model.safetensors")).items() if not n.endswith("layer_scalar")}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    s = summary_json(str(out))
    assert s["architecture"]["layer_scalar"] is False and s["layer_scalars_stored"] == 0
    assert "buffers" not in s["parameters"] and s["parameters"]["total"] == 65_356
    assert ("no layer_scalar is stored: transformers runs every layer with scalar 1 (its initial value), which no "
            "released Gemma 4 has") in s["notes"]
    lines = [" ".join(line.split()) for line in run("summary", str(out)).stdout.splitlines()]
    assert "Layer scalars none" in lines


# ----------------------------------------------------------------------------- HF -> HF
@pytest.mark.parametrize("variant", ["dense", "moe"])
def test_hf_to_hf_writes_both_spellings_and_transformers_computes_the_same(variant, request, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    d, m = request.getfixturevalue(variant)
    out = tmp_path / "hf"
    r = run("convert", d, str(out), "--to", "hf")
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    full = [i for i, t in enumerate(m.config.layer_types) if t == FULL]
    assert cfg["global_head_dim"] == 16
    assert cfg["per_layer_config"] == {str(i): ({"head_dim": 16, "num_key_value_heads": 1} if variant == "moe"
                                                else {"head_dim": 16}) for i in full}
    assert cfg["rope_parameters"][FULL] == {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                            "rope_theta": 1_000_000.0}
    assert cfg["enable_moe_block"] is (variant == "moe")
    src, got = load_file(os.path.join(d, "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert src.keys() == got.keys() and all(torch.equal(src[k], got[k]) for k in src)
    back = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, m(ids).logits, rtol=0, atol=1e-6)
    assert summary_json(str(out))["notes"] == [n for n in summary_json(d)["notes"] if "per_layer_config" not in n]


def test_spellings_that_disagree_are_an_error(moe, tmp_path):
    d, _ = moe
    out = tmp_path / "both"
    shutil.copytree(d, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["global_head_dim"] = 32
    (out / "config.json").write_text(json.dumps(cfg))
    r = run("summary", str(out))
    assert r.exit_code == 2
    assert r.output == (f"Error: {out}/config.json: config per_layer_config gives full layers head_dim 16 and 1 K/V "
                        f"heads but global_head_dim=32: transformers reads the former, llama.cpp and keras-hub the "
                        f"latter\n")
