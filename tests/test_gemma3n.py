"""Gemma 3n (text decoder): `summary` / `compare` / `convert --to hf` of tiny seeded checkpoints written by
transformers itself (Gemma3nForCausalLM, and the same weights under Gemma3nForConditionalGeneration's names), the
cards against transformers' own counts on the meta device, and the commands that refuse it.

Every expected value is taken from the transformers model that wrote the files (its modules, num_parameters,
state_dict), never from this package. The tiny model keeps vocab_size_per_layer_input (80) below vocab_size (96),
as the releases do (262,144 of 262,400), has FFN widths per layer, two sparse layers and KV sharing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from gemma_inspect.cli import main
from gemma_inspect.spec import card

SLIDING, FULL = "sliding_attention", "full_attention"
LAYERS = ([SLIDING] * 4 + [FULL]) * 2  # transformers' default layout (every 5th layer global)
WIDTHS = [48, 48, 64] + [48] * 7
SPARSITY = [0.95, 0.95] + [0.0] * 8
# 10 layers: the last 5 share K/V (a sliding and a full layer among them, as in the releases)
TINY = dict(vocab_size=96, vocab_size_per_layer_input=80, hidden_size=32, intermediate_size=WIDTHS,
            num_hidden_layers=10, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            hidden_size_per_layer_input=4, laurel_rank=4, sliding_window=4, num_kv_shared_layers=5,
            activation_sparsity_pattern=SPARSITY, max_position_embeddings=128, final_logit_softcapping=30.0)
# longer than the window (4), ids 80-95 beyond the per-layer table (80 rows)
TOKENS = [2, 5, 90, 81, 7, 33, 64, 12, 95, 3, 17, 44, 80, 61, 9, 27, 88, 50, 1, 72, 14, 93, 38, 6]


def randomise(model: "torch.nn.Module", seed: int) -> None:
    """Norm weights around 1 (Gemma 3n applies w, no +1), AltUp's output scale around 1, the rest small and
    random (a converter that drops or offsets any of them must not pass)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if "norm" in name or name.endswith("correct_output_scale"):
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
            elif t.dtype.is_floating_point:
                t.copy_(0.05 * torch.randn(t.shape, generator=g))


def build(path: str, seed: int = 0, **overrides):
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    torch.manual_seed(seed)
    model = Gemma3nForCausalLM(Gemma3nTextConfig(**{**TINY, **overrides})).float().eval()
    randomise(model, seed)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("g3n"))
    return d, build(d)


@pytest.fixture(scope="module")
def wrapped(tiny, tmp_path_factory):
    """The same weights as Gemma3nForConditionalGeneration names them (model.language_model.*), its wrapper config
    (text_config), and a tensor of each tower (reported, counted and left out)."""
    from safetensors.torch import load_file, save_file

    d, m = tiny
    out = tmp_path_factory.mktemp("g3nwrapped")
    tensors = {("model.language_model." + n[len("model."):]): t for n, t in load_file(f"{d}/model.safetensors").items()}
    tensors["model.vision_tower.timm_model.conv_stem.conv.weight"] = torch.zeros(8, 3, 3, 3)
    tensors["model.audio_tower.conformer.0.ffw_layer_start.ffw_layer_1.weight"] = torch.zeros(4, 6)
    tensors["model.embed_vision.embedding.weight"] = torch.zeros(2, 5)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    text = json.loads(open(f"{d}/config.json").read())
    cfg = {"architectures": ["Gemma3nForConditionalGeneration"], "model_type": "gemma3n", "dtype": "float32",
           "text_config": text, "vision_config": {"model_type": "gemma3n_vision"},
           "audio_config": {"model_type": "gemma3n_audio"}}
    (out / "config.json").write_text(json.dumps(cfg))
    return str(out), m


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def summary_json(path: str) -> dict:
    r = run("summary", path, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _count(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


# ----------------------------------------------------------------------------- summary
def test_summary_json_is_what_transformers_built(tiny):
    d, m = tiny
    s = summary_json(d)
    a, p = s["architecture"], s["parameters"]
    layers = m.model.layers
    assert s["family"] == "gemma3n" and s["format"] == "hf"
    assert "layer_scalars_stored" not in s  # Gemma 4's: Gemma 3n's layers have no layer_scalar
    assert p["total"] == m.num_parameters() == 96_828
    ple = m.model.embed_tokens_per_layer.weight.numel()
    assert p["per_layer_embedding"] == ple == 80 * 10 * 4
    assert p["effective"] == m.num_parameters() - ple
    altup = _count([layer.altup for layer in layers]) - sum(layer.altup.router_norm.weight.numel() for layer in layers)
    altup += _count([m.model.altup_projections, m.model.altup_unembed_projections])
    assert p["altup"] == altup == 8_544
    laurel = sum(layer.laurel.linear_left.weight.numel() + layer.laurel.linear_right.weight.numel() for layer in layers)
    assert p["laurel"] == laurel == 2_560
    assert p["total"] == p["embedding"] + p["attention"] + p["feedforward"] + p["norms"] + p["output"]
    assert "buffers" not in p  # the scales transformers keeps as buffers (router_input_scale, ...) are not stored
    assert a["layer_intermediate_sizes"] == [layer.mlp.intermediate_size for layer in layers] == WIDTHS
    assert a["activation_sparsity"] == [layer.mlp.activation_sparsity for layer in layers] == SPARSITY
    assert a["sparse_layers"] == [0, 1]
    assert a["altup_num_inputs"] == 4 and a["altup_active_idx"] == 0 and a["altup_correct_scale"] is True
    assert a["laurel_rank"] == layers[0].laurel.linear_left.out_features == 4
    assert a["num_kv_shared_layers"] == 5 and a["kv_sources"] == [0, 1, 2, 3, 4, 3, 3, 3, 3, 4]
    assert [layer.self_attn.is_kv_shared_layer for layer in layers] == [False] * 5 + [True] * 5
    assert a["per_layer_input_size"] == 4 and a["per_layer_vocab_size"] == 80 and a["vocab_size"] == 96
    assert a["norm_offset"] == 0 and a["query_scale"] == 1.0 and a["final_logit_softcap"] == 30.0
    assert a["layer_types"] == LAYERS and a["sliding_window"] == 4
    kv = sum(2 * layer.self_attn.k_proj.out_features * 4 for layer in layers if not layer.self_attn.is_kv_shared_layer)
    assert s["kv_cache_bytes_per_token"] == kv == 640
    assert s["notes"] == ["the 5 KV-shared layers 5-9 store no k/v tensors (as save_pretrained writes them)"]


def test_summary_text(tiny):
    d, _ = tiny
    r = run("summary", d)
    assert r.exit_code == 0, r.output
    lines = [" ".join(line.split()) for line in r.stdout.splitlines()]
    for want in ("Family Gemma 3n (text)", "Parameters 96.8K (96,828) tied", "per-layer embedding 3.2K (3,200)",
                 "effective 93.6K (93,628) without the per-layer table", "Norm RMSNorm, applies w",
                 "Query scale 1 (queries unscaled; QK-norm sets their size)",
                 "effective (without the per-layer embedding table) │ 93,628 │ 96.7% │"):
        assert any(want in line for line in lines), (want, lines)
    text = " ".join(" ".join(lines).split())
    for want in ("FFN GeGLU, width 48 per branch; 64 on layer 2",
                 "Per-layer inputs 4 per layer; table 80 x 40 = 3.2K; ids >= 80 look up row 0",
                 "AltUp 4 streams, block runs on stream 0; the others predicted and corrected per layer, corrected "
                 "stream scaled; 8.5K parameters",
                 "LAuReL rank 4 residual beside attention, (x + attn + laurel) / sqrt(2); 2.6K parameters",
                 "Act. sparsity 0.95 on layers 0, 1 (gate kept above mean + std x Phi^-1(0.95))",
                 "KV sharing last 5 layers (5-9) compute no K/V and reuse layer 3 (sliding) / 4 (full)",
                 "Sliding window 4 tokens on 8/10 layers; global: 4, 9",
                 "of which AltUp (stream projections, router, coefficients) │ 8,544",
                 "of which LAuReL (low-rank residual) │ 2,560"):
        assert want in text, (want, text)


def test_multimodal_wrapper_reads_the_text_decoder(tiny, wrapped):
    d, _ = tiny
    w, m = wrapped
    s, want = summary_json(w), summary_json(d)
    assert s["architecture"] == want["architecture"] and s["parameters"] == want["parameters"]
    assert s["parameters"]["total"] == m.num_parameters()
    assert s["ignored_tensors"] == 3
    assert s["notes"] == [
        "multimodal Gemma 3n: vision/audio towers (3 tensors, 250 parameters) reported and ignored; only the text "
        "decoder is read",
        "the 5 KV-shared layers 5-9 store no k/v tensors (as save_pretrained writes them)"]


def test_unused_kv_of_shared_layers_are_set_aside(tiny, tmp_path):
    """Google's original files store k/v/k_norm for the KV-shared layers (transformers ignores them on load)."""
    from safetensors.torch import load_file, save_file

    d, _ = tiny
    out = tmp_path / "with-kv"
    shutil.copytree(d, out)
    tensors = load_file(str(out / "model.safetensors"))
    for i in range(5, 10):
        for name, shape in (("k_proj.weight", (16, 32)), ("v_proj.weight", (16, 32)), ("k_norm.weight", (8,))):
            tensors[f"model.layers.{i}.self_attn.{name}"] = torch.zeros(shape)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    s = summary_json(str(out))
    assert s["parameters"] == summary_json(d)["parameters"] and s["ignored_tensors"] == 15


def test_config_without_sparsity_pattern_reads_transformers_default(tiny, tmp_path):
    """Absent activation_sparsity_pattern: transformers makes the first 10 layers sparse (0.95) on a model deeper
    than 10 layers, none on this 10-layer one; read so and said."""
    from transformers import Gemma3nTextConfig

    d, _ = tiny
    out = tmp_path / "nosparsity"
    shutil.copytree(d, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("activation_sparsity_pattern")
    (out / "config.json").write_text(json.dumps(cfg))
    s = summary_json(str(out))
    want = Gemma3nTextConfig.from_pretrained(str(out)).activation_sparsity_pattern
    assert s["architecture"]["activation_sparsity"] == want == [0.0] * 10
    assert ("config has no activation_sparsity_pattern: read as transformers fills it in (every layer dense, the "
            "model having 10 layers or fewer)") in s["notes"]


def test_released_query_pre_attn_scalar_is_not_used(tiny, tmp_path):
    """The released configs carry query_pre_attn_scalar 256 (a Gemma 3 leftover); transformers' Gemma 3n attention
    ignores it (scaling 1.0): read so, and said."""
    from transformers import Gemma3nForCausalLM

    d, m = tiny
    out = tmp_path / "qpas"
    shutil.copytree(d, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["query_pre_attn_scalar"] = 256
    (out / "config.json").write_text(json.dumps(cfg))
    s = summary_json(str(out))
    assert s["architecture"]["query_scale"] == 1.0 and s["architecture"]["query_pre_attn_scalar"] == 1
    assert ("query_pre_attn_scalar 256 in the config is not used: Gemma 3n (text) scales queries by 1 (the q/k norms "
            "set their size), as transformers does") in s["notes"]
    back = Gemma3nForCausalLM.from_pretrained(str(out)).float().eval()
    assert back.model.layers[0].self_attn.scaling == 1.0
    with torch.no_grad():
        assert torch.equal(back(torch.tensor([TOKENS])).logits, m(torch.tensor([TOKENS])).logits)


def test_bad_sparsity_pattern_is_one_line(tiny, tmp_path):
    d, _ = tiny
    out = tmp_path / "bad"
    shutil.copytree(d, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["activation_sparsity_pattern"] = [0.95, 1.5] + [0.0] * 8
    (out / "config.json").write_text(json.dumps(cfg))
    r = run("summary", str(out))
    assert r.exit_code == 2
    assert r.output == f"Error: {out}/config.json: config activation_sparsity_pattern[1] is 1.5, not a sparsity in [0, 1)\n"


# ----------------------------------------------------------------------------- convert --to hf
def _same_tensors(a: str, b: str) -> None:
    from safetensors.torch import load_file

    x, y = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
    assert sorted(x) == sorted(y)
    for n in x:
        assert x[n].dtype == y[n].dtype and torch.equal(x[n], y[n]), n


@pytest.mark.parametrize("source", ["tiny", "wrapped"])
def test_convert_to_hf_is_bit_exact_and_loads_in_transformers(tiny, wrapped, tmp_path, source):
    from transformers import Gemma3nForCausalLM

    d, m = tiny
    src = {"tiny": d, "wrapped": wrapped[0]}[source]
    out = tmp_path / "out"
    r = run("convert", src, str(out), "--to", "hf")
    assert r.exit_code == 0, r.output
    _same_tensors(d, str(out))  # the wrapper's text decoder comes out under Gemma3nForCausalLM's names
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma3nForCausalLM"] and cfg["model_type"] == "gemma3n_text"
    back = Gemma3nForCausalLM.from_pretrained(str(out)).float().eval()
    for key in ("intermediate_size", "activation_sparsity_pattern", "altup_num_inputs", "laurel_rank",
                "num_kv_shared_layers", "vocab_size_per_layer_input", "hidden_size_per_layer_input", "layer_types",
                "sliding_window", "final_logit_softcapping", "rope_parameters"):
        assert getattr(back.config, key) == getattr(m.config, key), key
    ids = torch.tensor([TOKENS])
    with torch.no_grad():
        assert torch.equal(back(ids).logits, m(ids).logits)
    assert summary_json(str(out))["parameters"] == summary_json(d)["parameters"]


def test_convert_to_gemma_pytorch_refuses_with_the_rows_reason(tiny, tmp_path):
    """(Keras and GGUF: tests/test_gemma3n_formats.py.)"""
    d, _ = tiny
    out = tmp_path / "out"
    r = run("convert", d, str(out), "--to", "gemma-pytorch")
    assert r.exit_code == 2
    assert r.output == ("Error: gemma3n checkpoints cannot be written as gemma_pytorch: gemma_pytorch has no Gemma 3n "
                        "architecture (it knows GEMMA_1, GEMMA_2 and GEMMA_3, none with AltUp, LAuReL, per-layer "
                        "embeddings or KV sharing)\n")
    assert not out.exists()


# ----------------------------------------------------------------------------- compare and cards
def test_compare_puts_gemma3n_beside_gemma4(tiny):
    d, _ = tiny
    r = run("compare", d, "gemma4-e2b", "--json")
    assert r.exit_code == 0, r.output
    assert [m["family"] for m in json.loads(r.stdout)["models"]] == ["gemma3n", "gemma4"]
    text = run("compare", "gemma3n-e2b", "gemma4-e2b").stdout
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
            for line in text.splitlines() if line.count("│") == 4 and line.split("│")[1].strip()}
    assert rows["AltUp"] == ["4 streams, 25.5M", "-"]
    assert rows["LAuReL"] == ["rank 64", "-"]
    assert rows["Act. sparsity"] == ["0.95 on 0-9", "-"]
    assert rows["effective"] == ["2.4B", "2.3B"]


def _hf_config(spec):
    from transformers import Gemma3nTextConfig

    return Gemma3nTextConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
        intermediate_size=[spec.layer_intermediate(i) for i in range(spec.num_layers)],
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, head_dim=spec.head_dim, layer_types=list(spec.layer_types),
        sliding_window=spec.sliding_window, hidden_size_per_layer_input=spec.per_layer_input_size,
        vocab_size_per_layer_input=spec.per_layer_vocab_size, num_kv_shared_layers=spec.num_kv_shared_layers,
        altup_num_inputs=spec.altup_num_inputs, laurel_rank=spec.laurel_rank,
        activation_sparsity_pattern=list(spec.activation_sparsity), final_logit_softcapping=spec.final_logit_softcap)


@pytest.mark.parametrize("name,layers,shared", [("gemma3n-e2b", 30, 10), ("gemma3n-e4b", 35, 15)])
def test_card_counts_are_transformers_counts(name, layers, shared):
    from transformers import Gemma3nForCausalLM

    from gemma_inspect.checkpoint import expected_tensors

    spec = card(name)
    assert (spec.num_layers, spec.num_kv_shared_layers, spec.vocab_size, spec.per_layer_vocab_size) == \
        (layers, shared, 262_400, 262_144)
    with torch.device("meta"):
        model = Gemma3nForCausalLM(_hf_config(spec))
    b = spec.parameter_breakdown()
    assert b["total"] == model.num_parameters()
    assert b["per_layer_embedding"] == model.model.embed_tokens_per_layer.weight.numel()
    assert b["effective"] == b["total"] - b["per_layer_embedding"]
    hf = {n: tuple(t.shape) for n, t in model.state_dict().items() if n != "lm_head.weight"}
    assert expected_tensors(spec) == hf  # every name and shape, layer by layer
    assert [layer.mlp.activation_sparsity for layer in model.model.layers] == [0.95] * 10 + [0.0] * (layers - 10)


def test_card_totals():
    """Total (what transformers counts) and effective (without the per-layer table): E2B 4.44 B / 2.42 B, E4B
    6.84 B / 4.49 B; the vision and audio towers of the released models are not part of a text-decoder card."""
    e2b, e4b = card("gemma3n-e2b").parameter_breakdown(), card("gemma3n-e4b").parameter_breakdown()
    assert (e2b["total"], e2b["effective"]) == (4_435_182_688, 2_421_916_768)
    assert (e4b["total"], e4b["effective"]) == (6_835_235_568, 4_486_425_328)


def test_diff_names_a_changed_altup_tensor(tiny, tmp_path):
    """diff of the tiny model against its HF -> HF conversion: every tensor equal (and the conversion matches its
    manifest); against a copy with one AltUp coefficient changed: that tensor, and only it."""
    from safetensors.torch import load_file, save_file

    d, _ = tiny
    out = tmp_path / "out"
    assert run("convert", d, str(out), "--to", "hf").exit_code == 0
    r = run("diff", d, str(out), "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["identical"] is True and res["counts"]["equal"] == 236 and res["spec_differences"] == []
    assert run("diff", str(out), "--manifest").exit_code == 0
    changed = tmp_path / "changed"
    shutil.copytree(d, changed)
    tensors = load_file(str(changed / "model.safetensors"))
    tensors["model.layers.3.altup.correction_coefs.weight"][1, 2] += 0.5
    save_file(tensors, str(changed / "model.safetensors"), metadata={"format": "pt"})
    r = run("diff", d, str(changed), "--json")
    assert r.exit_code == 1
    res = json.loads(r.stdout)
    assert res["counts"]["different"] == 1 and res["counts"]["equal"] == 235
    bad = [t for t in res["tensors"] if not t["bit_identical"]]
    assert [t["name"] for t in bad] == ["model.layers.3.altup.correction_coefs.weight"]
    assert bad[0]["max_abs_diff"] == pytest.approx(0.5, abs=1e-6)


# ----------------------------------------------------------------------------- parity: reference vs transformers
def test_reference_and_transformers_agree(tiny):
    """Every hidden state (the active AltUp stream after each block) and the logits, float32, on a sequence past the
    window with ids beyond the per-layer table; and both against the model that wrote the files."""
    from gemma_inspect.formats import load
    from gemma_inspect.runtimes import run

    d, m = tiny
    ckpt = load(d)
    ref = run(ckpt, TOKENS, "reference", "cpu", "float32")
    hf = run(ckpt, TOKENS, "transformers", "cpu", "float32")
    assert len(ref.hidden_states) == len(hf.hidden_states) == 10 + 2
    for a, b in zip(ref.hidden_states, hf.hidden_states):
        assert a.shape == b.shape == (1, len(TOKENS), 32)
        assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())
    with torch.no_grad():
        want = m(torch.tensor([TOKENS])).logits
    assert float((ref.logits - want).abs().max()) <= 1e-4
    assert float((hf.logits - want).abs().max()) <= 1e-5


def test_parity_json(tiny):
    d, _ = tiny
    r = run("parity", d, d, "--runtime-a", "reference", "--runtime-b", "transformers", "--device", "cpu",
            "--tokens", ",".join(map(str, TOKENS)), "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["passed"] is True and res["a"]["runtime"] == "reference" and res["b"]["runtime"] == "transformers"
    assert [row["status"] for row in res["layers"]] == ["ok"] * 12
    assert res["logits"]["max_abs_diff"] <= 1e-4 and res["logits"]["top1_agreement"] == 1.0


def test_parity_fails_without_the_altup_correction_offset(tiny, monkeypatch):
    """The reference runtime with AltUp's correction coefficients used without their + 1: parity names block 0."""
    from gemma_inspect.runtimes import gemma3n

    def correct(self, predictions, activated):
        innovation = activated - predictions[self.active]
        coefs = self.correction_coefs(self.modalities(activated))  # the defect: no + 1
        return predictions + coefs.permute(2, 0, 1).unsqueeze(-1) * innovation

    monkeypatch.setattr(gemma3n.AltUp, "correct", correct)
    d, _ = tiny
    r = run("parity", d, d, "--runtime-a", "reference", "--runtime-b", "transformers", "--device", "cpu",
            "--tokens", ",".join(map(str, TOKENS)), "--json")
    assert r.exit_code == 1, r.output
    res = json.loads(r.stdout)
    assert res["passed"] is False and res["layers"][0]["status"] == "ok" and res["layers"][1]["status"] != "ok"


# ----------------------------------------------------------------------------- verify
def _checks(result) -> dict:
    return {c["name"]: c for c in result["checks"]}


@pytest.mark.parametrize("runtime", ["reference", "transformers"])
def test_verify_observes_altup_laurel_sparsity_and_norms(tiny, runtime):
    from gemma_inspect.verify import verify

    d, _ = tiny
    res = verify(d, runtime=runtime, device="cpu")
    c = _checks(res)
    assert res["passed"] is True, [x for x in res["checks"] if x["status"] == "fail"]
    assert {n for n, x in c.items() if x["status"] == "fail"} == set()
    assert c["altup"]["status"] == "pass" and c["altup"]["observed"] == 4
    assert "block 0 receives 4 streams" in c["altup"]["evidence"]
    assert c["laurel"]["status"] == "pass" and c["laurel"]["observed"] == 4
    assert c["activation_sparsity"]["status"] == "pass" and c["activation_sparsity"]["observed"] == SPARSITY
    assert "block 0: cutoff 5.818 = mean 0 + 1.6449 std" in c["activation_sparsity"]["evidence"]
    assert c["activation"]["status"] == "pass" and "(block 2, the first without activation sparsity)" in \
        c["activation"]["evidence"]
    assert c["norm_offset"]["status"] == "pass" and c["norm_offset"]["observed"] == 0
    # block 0's four norms, its per-layer-input norm, q/k norms, AltUp's router norm, LAuReL's norm, the final norm
    assert c["norm_offset"]["evidence"].startswith("10 norms called on x = +-1 (unit RMS) apply w")
    assert c["norm_placement"]["status"] == "pass" and c["norm_placement"]["observed"] == "pre+post"
    assert c["qk_norm"]["observed"] is True and c["query_scale"]["observed"] == 1.0
    assert c["logit_softcap"]["observed"] == 30.0
    assert c["sliding_window"]["status"] == "pass" and c["sliding_window"]["observed"]["global_layers"] == [4, 9]
    assert c["embedding_scale"]["status"] == "pass"


@pytest.mark.parametrize("defect,check,observed", [
    ("no_sparsity", "activation_sparsity", [0.0] * 10),
    ("no_laurel", "laurel", 0),
    ("plus_one", "norm_offset", 1),
    ("no_prediction", "altup", 4),
])
def test_verify_fails_a_runtime_that_drops_a_gemma3n_piece(tiny, monkeypatch, defect, check, observed):
    """The reference runtime with one piece removed or a +1 added to its norms: the matching check fails."""
    from gemma_inspect.runtimes import gemma3n, reference
    from gemma_inspect.verify import verify

    if defect == "no_sparsity":
        monkeypatch.setattr(gemma3n, "gaussian_top_k", lambda gate, sparsity: gate)
    elif defect == "no_laurel":
        monkeypatch.setattr(gemma3n.Laurel, "forward", lambda self, x: x)
    elif defect == "plus_one":
        monkeypatch.setattr(reference.RMSNorm, "forward", lambda self, x: reference.rms_norm(x, self.weight,
                                                                                             self.eps, 1))
    else:
        monkeypatch.setattr(gemma3n.AltUp, "predict", lambda self, streams: streams + 0)
    d, _ = tiny
    c = _checks(verify(d, runtime="reference", device="cpu"))[check]
    assert c["status"] == "fail", c
    assert c["observed"] == observed


# ----------------------------------------------------------------------------- header-only E4B, as released
def test_header_only_e4b_wrapper_reads_as_the_card(tmp_path):
    """The E4B text decoder under Gemma3nForConditionalGeneration's names (sparse file, headers only) with its
    config spelled as released (query_pre_attn_scalar 256, rope_theta / rope_local_base_freq, per-layer lists),
    the unused k/v/k_norm of the 15 KV-shared layers stored as Google's files store them, and a tower tensor."""
    from test_big_headers import hf_names, write_sparse_safetensors

    spec = card("gemma3n-e4b")
    names = [("model.language_model." + n[len("model."):], s) for n, s in hf_names(spec)]
    for i in range(20, 35):
        names += [(f"model.language_model.layers.{i}.self_attn.{p}", s) for p, s in
                  (("k_proj.weight", (512, 2048)), ("v_proj.weight", (512, 2048)), ("k_norm.weight", (256,)))]
    names += [("model.audio_tower.conformer.0.ffw_layer_start.ffw_layer_1.weight", (6144, 1536))]
    write_sparse_safetensors(str(tmp_path / "model.safetensors"), names)
    text = {"model_type": "gemma3n_text", "vocab_size": 262400, "vocab_size_per_layer_input": 262144,
            "hidden_size": 2048, "hidden_size_per_layer_input": 256, "intermediate_size": [16384] * 35,
            "num_hidden_layers": 35, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256,
            "max_position_embeddings": 32768, "sliding_window": 512, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0, "rope_scaling": None, "hidden_activation": "gelu_pytorch_tanh",
            "final_logit_softcapping": 30.0, "altup_active_idx": 0, "altup_coef_clip": 120.0,
            "altup_correct_scale": True, "altup_lr_multiplier": 1.0, "altup_num_inputs": 4, "laurel_rank": 64,
            "num_kv_shared_layers": 15, "query_pre_attn_scalar": 256, "torch_dtype": "bfloat16",
            "layer_types": LAYERS * 3 + [SLIDING] * 4 + [FULL],  # (i + 1) % 5 == 0 global, 35 layers
            "activation_sparsity_pattern": [0.95] * 10 + [0.0] * 25}
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Gemma3nForConditionalGeneration"],
                                                      "model_type": "gemma3n", "text_config": text,
                                                      "vision_config": {"model_type": "gemma3n_vision"}}))
    s = summary_json(str(tmp_path))
    want = card("gemma3n-e4b")
    assert s["parameters"] == {**want.parameter_breakdown()} and s["parameters"]["total"] == 6_835_235_568
    assert s["architecture"] == {**want.architecture_dict()}
    assert s["ignored_tensors"] == 45 + 1
    assert s["notes"] == [
        "query_pre_attn_scalar 256 in the config is not used: Gemma 3n (text) scales queries by 1 (the q/k norms set "
        "their size), as transformers does",
        "multimodal Gemma 3n: vision/audio towers (1 tensors, 9,437,184 parameters) reported and ignored; only the "
        "text decoder is read",
        "the file stores k/v tensors for the 15 KV-shared layers 20-34 (45 tensors), which never use them (as "
        "Google's original files do): set aside"]
