"""Gemma 4 (text decoder) run: the reference runtime against transformers, `parity` across runtimes (with the
experts' routing compared), and `verify` observing Gemma 4's pieces in the running model.

The tiny seeded checkpoints are test_gemma4.py's (`dense`: PLE, KV sharing, double-wide MLP, mixed head geometry;
`moe`: experts beside the dense MLP, K=V); every expected logit comes from the transformers model that wrote them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_gemma4 import dense, moe, run  # noqa: F401  (module fixtures)

# BOS, then ids past the 4-token sliding window: every sliding layer's last queries see only part of the sequence
TOKENS = [2, 17, 40, 5, 63, 9, 31, 12, 50, 7, 44, 26, 3, 58, 21, 36, 11, 60, 29, 48]


def _agree(ckpt_dir: str, model) -> None:
    """Reference and transformers runs of `ckpt_dir`: every hidden state within 1e-4 of its scale, the logits
    within 1e-4 of the model that wrote the files."""
    from gemma_inspect.formats import load
    from gemma_inspect.runtimes import run as run_model

    ckpt = load(ckpt_dir)
    ref = run_model(ckpt, TOKENS, "reference", "cpu", "float32")
    hf = run_model(ckpt, TOKENS, "transformers", "cpu", "float32")
    n = ckpt.spec.num_layers
    assert len(ref.hidden_states) == len(hf.hidden_states) == n + 2
    for a, b in zip(ref.hidden_states, hf.hidden_states):
        assert a.shape == b.shape == (1, len(TOKENS), 32)
        assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())
    with torch.no_grad():
        want = model(torch.tensor([TOKENS])).logits
    scale = float(want.abs().max())
    assert float((ref.logits - want).abs().max()) <= 1e-4 * scale
    assert float((hf.logits - want).abs().max()) <= 1e-5 * scale


# ----------------------------------------------------------------------------- reference vs transformers
def test_reference_and_transformers_agree_dense(dense):
    """PLE, KV sharing (layers 4-5 attend with 3's and 2's K/V), double-wide MLP, head_dim 8 / 16."""
    _agree(*dense)


def test_reference_and_transformers_agree_moe(moe):
    """Experts beside the dense MLP on every layer, K=V on the full layers with their own K/V head count."""
    _agree(*moe)


def test_unused_kv_of_shared_layers_are_not_read(dense, tmp_path):
    """Google's original files store k/v/k_norm for the KV-shared layers: both runtimes run such a file, and the
    stored (here: garbage) tensors change nothing - a shared layer attends with its source layer's K/V."""
    from safetensors.torch import load_file, save_file

    d, m = dense
    out = tmp_path / "with-kv"
    shutil.copytree(d, out)
    tensors = load_file(str(out / "model.safetensors"))
    for i, head_dim in ((4, 8), (5, 16)):
        for name, shape in (("k_proj.weight", (2 * head_dim, 32)), ("v_proj.weight", (2 * head_dim, 32)),
                            ("k_norm.weight", (head_dim,))):
            tensors[f"model.layers.{i}.self_attn.{name}"] = 5 * torch.ones(shape)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _agree(str(out), m)
    from gemma_inspect.formats import load
    from gemma_inspect.lint import lint

    found = {r["name"]: r for r in lint(load(str(out)))}["lint:unused_kv"]
    assert found["status"] == "pass" and found["observed"] == "6 unused k/v tensors"  # information only


# ----------------------------------------------------------------------------- verify
def _checks(result) -> dict:
    return {c["name"]: c for c in result["checks"]}


def _stored_scalars(model) -> list[float]:
    return [round(float(layer.layer_scalar), 4) for layer in model.model.layers]


@pytest.mark.parametrize("runtime", ["reference", "transformers"])
def test_verify_observes_gemma4_dense(dense, runtime):
    from gemma_inspect.verify import verify

    d, m = dense
    res = verify(d, runtime=runtime, device="cpu")
    c = _checks(res)
    assert res["passed"] is True, [x for x in res["checks"] if x["status"] == "fail"]
    assert c["norm_offset"]["status"] == "pass" and c["norm_offset"]["observed"] == 0
    # the per-layer input's residual (no pre norm) is a third branch, left out of the placement
    assert c["norm_placement"]["status"] == "pass" and c["norm_placement"]["observed"] == "pre+post"
    assert c["logit_softcap"]["observed"] == 30.0 and c["attention_softcap"]["observed"] is None
    assert c["query_scale"]["observed"] == 1.0 and c["qk_norm"]["observed"] is True
    assert c["sliding_window"]["status"] == "pass" and c["sliding_window"]["observed"]["global_layers"] == [2, 5]
    assert c["layer_scalar"]["status"] == "pass"
    assert c["layer_scalar"]["observed"] == c["layer_scalar"]["expected"] == _stored_scalars(m)
    assert c["per_layer_inputs"]["status"] == "pass" and c["per_layer_inputs"]["observed"] == 4
    assert c["kv_sharing"]["status"] == "pass" and c["kv_sharing"]["observed"] == {"4": 3, "5": 2}
    assert c["rope_fraction"]["status"] == "pass" and c["rope_fraction"]["observed"] == {"full": 0.25, "sliding": 1.0}
    assert c["k_eq_v"]["status"] == "skip" and c["moe_routing"]["status"] == "skip"
    assert c["lint:layer_scalar"]["status"] == "pass" and c["lint:norm_weights"]["status"] == "pass"
    assert c["lint:global_geometry"]["status"] == "warn" and c["lint:global_geometry"]["observed"] == "per_layer_config"
    assert c["lint:unused_kv"]["observed"] == "none"


@pytest.mark.parametrize("runtime", ["reference", "transformers"])
def test_verify_observes_gemma4_moe(moe, runtime):
    from gemma_inspect.verify import verify

    d, m = moe
    res = verify(d, runtime=runtime, device="cpu")
    c = _checks(res)
    assert res["passed"] is True, [x for x in res["checks"] if x["status"] == "fail"]
    assert c["layer_scalar"]["observed"] == _stored_scalars(m)
    # the feed-forward's post norm reads the sum of the normed MLP and normed expert outputs
    assert c["norm_placement"]["status"] == "pass" and c["norm_placement"]["observed"] == "pre+post"
    assert c["k_eq_v"]["status"] == "pass" and c["k_eq_v"]["observed"] == [1, 3]
    assert c["moe_routing"]["status"] == "pass"
    assert c["moe_routing"]["observed"] == {"top_k": 2, "renormalised": True, "per_expert_scale": True,
                                            "router_input": "residual"}
    assert "block 0's expert output recomputed from gate_up (gate rows first)" in c["moe_routing"]["evidence"]
    assert c["rope_fraction"]["observed"] == {"full": 0.25, "sliding": 1.0}
    assert c["per_layer_inputs"]["status"] == c["kv_sharing"]["status"] == "skip"


def _no_scalar(monkeypatch, g4):
    forward = g4.DecoderBlock.forward
    monkeypatch.setattr(g4.DecoderBlock, "forward", lambda self, *a: forward(self, *a) / self.layer_scalar)


def _wrong_source(monkeypatch, g4):
    forward = g4.Attention.forward

    def attend(self, x, positions, kv):  # layer 4 (sliding) reads layer 1's K/V instead of layer 3's
        if self.shared and self.layer == 4:
            kv = {**kv, 3: kv[1]}
        return forward(self, x, positions, kv)
    monkeypatch.setattr(g4.Attention, "forward", attend)


def _rope_over_rotated_dims(monkeypatch, g4):
    inv_freq = g4.rope_inv_freq

    def wrong(spec, layer, device=None):  # the denominator the rotated dimensions, not the head's
        out = inv_freq(spec, layer, device)
        d, r = spec.layer_head_dim(layer), int((out != 0).sum())
        if r < d // 2:
            out[:r] = 1.0 / (spec.rope_theta ** (torch.arange(0, 2 * r, 2, dtype=torch.float32) / (2 * r)))
        return out
    monkeypatch.setattr(g4, "rope_inv_freq", wrong)


def _no_renormalisation(monkeypatch, g4):
    def route(self, x):
        probs = torch.softmax(self.proj(self.norm(x) * self.scale * self.scalar_root_size).float(), dim=-1)
        weights, index = torch.topk(probs, k=self.top_k, dim=-1)
        return probs, weights * self.per_expert_scale[index], index
    monkeypatch.setattr(g4.Router, "forward", route)


@pytest.mark.parametrize("defect,fixture,check_name,observed", [
    (_no_scalar, "dense", "layer_scalar", [1.0] * 6),
    (_wrong_source, "dense", "kv_sharing", {"4": 1, "5": 2}),
    (_rope_over_rotated_dims, "moe", "rope_fraction", {"full": None, "sliding": 1.0}),
    (_no_renormalisation, "moe", "moe_routing", {"top_k": 2, "renormalised": False, "per_expert_scale": True,
                                                 "router_input": "residual"}),
])
def test_verify_fails_a_runtime_without_a_gemma4_piece(request, monkeypatch, defect, fixture, check_name, observed):
    """The reference runtime with one Gemma 4 piece removed or wrong: the matching check fails, naming what ran."""
    from gemma_inspect.runtimes import gemma4 as g4
    from gemma_inspect.verify import verify

    defect(monkeypatch, g4)
    d, _ = request.getfixturevalue(fixture)
    res = verify(d, runtime="reference", device="cpu")
    c = _checks(res)[check_name]
    assert res["passed"] is False and c["status"] == "fail", c
    assert c["observed"] == observed


def test_verify_fails_on_reset_scalars_and_norms_stored_as_one_plus_w(dense, tmp_path):
    """A converter that resets layer_scalar to 1 and adds Gemma 1-3's +1 to every norm weight: the model runs as
    stored, so the lint says it (exit 1), naming both."""
    from safetensors.torch import load_file, save_file

    d, _ = dense
    out = tmp_path / "broken"
    shutil.copytree(d, out)
    tensors = load_file(str(out / "model.safetensors"))
    for name, t in tensors.items():
        if name.endswith("layer_scalar"):
            tensors[name] = torch.ones_like(t)
        elif name.endswith("norm.weight"):
            tensors[name] = t + 1
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    r = run("verify", str(out), "--runtime", "reference", "--device", "cpu", "--json")
    assert r.exit_code == 1, r.output
    c = _checks(json.loads(r.stdout))
    assert c["lint:layer_scalar"]["status"] == "fail" and c["lint:layer_scalar"]["observed"] == "6 stored, 1..1"
    assert c["lint:norm_weights"]["status"] == "fail"
    assert c["lint:norm_weights"]["evidence"].startswith("every norm weight has a mean near 2")
    assert c["layer_scalar"]["status"] == "pass" and c["layer_scalar"]["observed"] == [1.0] * 6  # runs as stored


def test_verify_refuses_v_proj_on_k_eq_v_layers(moe, tmp_path):
    """K=V layers have no v_proj: a file that stores one contradicts its config - unusable input, exit 2."""
    from safetensors.torch import load_file, save_file

    d, _ = moe
    out = tmp_path / "v-proj"
    shutil.copytree(d, out)
    tensors = load_file(str(out / "model.safetensors"))
    for i in (1, 3):
        tensors[f"model.layers.{i}.self_attn.v_proj.weight"] = torch.zeros(16, 32)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    r = run("verify", str(out), "--device", "cpu", "--json")
    assert r.exit_code == 2
    assert "model.layers.1.self_attn.v_proj.weight, model.layers.3.self_attn.v_proj.weight" in r.output
    assert r.output.count("\n") == 1 and r.output.startswith("Error: ")


# ----------------------------------------------------------------------------- parity across runtimes
def _parity(a: str, b: str, *extra: str):
    r = run("parity", a, b, "--runtime-a", "reference", "--runtime-b", "transformers", "--device", "cpu",
            "--tokens", ",".join(map(str, TOKENS)), "--json", *extra)
    return r.exit_code, json.loads(r.stdout) if r.stdout.strip().startswith("{") else r.output


def test_parity_dense_json(dense):
    d, _ = dense
    code, res = _parity(d, d)
    assert code == 0 and res["passed"] is True, res
    assert [row["status"] for row in res["layers"]] == ["ok"] * 8
    assert res["tolerance"]["mode"] == "noise floor" and res["logits"]["top1_agreement"] == 1.0
    assert "moe" not in res


def test_parity_moe_reports_expert_agreement(moe):
    d, _ = moe
    code, res = _parity(d, d)
    assert code == 0 and res["passed"] is True, res
    m = res["moe"]
    assert m["top_k"] == 2 and m["agreement"] == 1.0 and m["flips"] == 0
    assert [(r["index"], r["tokens"], r["agreement"]) for r in m["layers"]] == [(i, len(TOKENS), 1.0) for i in range(4)]


def test_parity_fails_without_layer_scalars(dense, monkeypatch):
    """The reference runtime dropping the layer scalar: parity names block 0, exit 1."""
    from gemma_inspect.runtimes import gemma4 as g4

    _no_scalar(monkeypatch, g4)
    d, _ = dense
    code, res = _parity(d, d)
    assert code == 1 and res["passed"] is False
    assert res["first_divergent_layer"] == 0 and res["layers"][0]["status"] == "ok"


def _twin_experts(src: str, dst, router_edit) -> str:
    """`src` with expert 1 made a copy of expert 0 (weights and per-expert scale) and the router edited."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    for i in range(4):
        p = f"model.layers.{i}."
        for name in ("experts.gate_up_proj", "experts.down_proj", "router.per_expert_scale"):
            tensors[p + name][1] = tensors[p + name][0]
        router_edit(tensors[p + "router.proj.weight"])
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return str(dst)


def test_parity_reports_a_near_tie_flip_without_counting_it(moe, tmp_path):
    """Twin experts 0 and 1 whose router rows differ by 1e-7 (A favours 1, B favours 0 where the logit is positive):
    tokens whose second slot they compete for flip between the runs; the outputs agree within the noise floor, so
    parity passes and reports the flips as near-ties."""
    d, _ = moe

    def lean(sign):
        def edit(w):
            w[1] = w[0] * (1 + sign * 1e-7)
        return edit
    a = _twin_experts(d, tmp_path / "a", lean(1))
    b = _twin_experts(d, tmp_path / "b", lean(-1))
    code, res = _parity(a, b)
    assert code == 0 and res["passed"] is True, res
    m = res["moe"]
    assert m["flips"] > 0 and m["near_tie_flips"] == m["flips"] and m["agreement"] < 1.0
    flipped = [r for r in m["layers"] if r["flips"]]
    for r in flipped:
        assert res["layers"][r["index"] + 1]["status"] == "ok"
        assert res["layers"][r["index"] + 1]["near_tie_flips"] == r["flips"]
        for e in r["examples"]:
            assert e["near_tie"] and e["gap"] <= 1e-4 and set(e["a"]) ^ set(e["b"]) == {0, 1}
    assert res["first_divergent_layer"] is None


def test_parity_counts_a_decisive_flip_even_when_the_outputs_agree(moe, tmp_path):
    """B routes to twin expert 1 wherever A routes to 0 (their router rows swapped): the outputs agree, but the
    routing differs by whole probabilities, so block 0 diverges (status routing), exit 1."""
    d, _ = moe

    def keep(w):
        pass

    def swap(w):
        w[[0, 1]] = w[[1, 0]]
    a = _twin_experts(d, tmp_path / "a", keep)
    b = _twin_experts(d, tmp_path / "b", swap)
    code, res = _parity(a, b)
    assert code == 1 and res["passed"] is False
    assert res["layers"][1]["status"] == "routing" and res["first_divergent_layer"] == 0
    assert res["layers"][1]["max_abs_diff"] <= res["layers"][1]["bound"]  # the hidden state itself agrees
    m = res["moe"]["layers"][0]
    assert m["flips"] > 0 and m["near_tie_flips"] < m["flips"]
    assert res["advice"][0].startswith(f"block 0: A and B sent {m['flips'] - m['near_tie_flips']} token(s) to "
                                       f"different experts by more than a near-tie")


@pytest.mark.parametrize("runtime", ["reference", "transformers"])
def test_verify_runs_a_bfloat16_file_in_bfloat16(moe, tmp_path, runtime):
    """Released Gemma 4 files are bfloat16 and verify runs them so: the Gemma 4 checks hold at bfloat16's tolerance."""
    from safetensors.torch import load_file, save_file

    from gemma_inspect.verify import verify

    d, m = moe
    out = tmp_path / "bf16"
    shutil.copytree(d, out)
    tensors = {n: t.to(torch.bfloat16) for n, t in load_file(str(out / "model.safetensors")).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(cfg))
    res = verify(str(out), runtime=runtime, device="cpu")
    c = _checks(res)
    assert res["passed"] is True, [x for x in res["checks"] if x["status"] == "fail"]
    stored = [round(float(layer.layer_scalar.bfloat16()), 4) for layer in m.model.layers]
    assert c["layer_scalar"]["expected"] == stored
    assert c["layer_scalar"]["observed"] == pytest.approx(stored, abs=2e-3)  # a fit, in bfloat16
    assert c["moe_routing"]["status"] == c["k_eq_v"]["status"] == c["rope_fraction"]["status"] == "pass"
    assert c["moe_routing"]["observed"]["renormalised"] is True
