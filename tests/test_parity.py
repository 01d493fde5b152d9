"""`parity`: every pair of runtimes agrees on tiny models of every family (float32 strictly, bfloat16 by
its own rules), seeded defects are caught at the right layer, and the CLI's exit codes, JSON and plot."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from defects import embedding_scale_in_float32, scrambled_ffn_gguf
from gemma_inspect import load
from gemma_inspect.cli import main
from gemma_inspect.errors import InputError, UnsupportedError
from gemma_inspect.parity import default_tokens, parity, plot_layers
from gemma_inspect.runtimes import reference
from gemma_inspect.tiny import random_weights, tiny_spec, train_tokenizer, write_hf

FAMILIES = ("gemma", "gemma-mha", "gemma2", "gemma3")
PAIRS = (("transformers", "reference"), ("transformers", "keras"), ("reference", "keras"))
LAYER_KEYS = {"index", "name", "max_abs_diff", "relative_diff", "bound", "status"}
NOISE_LAYER_KEYS = LAYER_KEYS | {"noise_floor", "error_a", "error_b"}  # float32 judged on the measured noise
TOP_KEYS = {"passed", "a", "b", "device", "dtype", "tokens", "logits", "layers", "first_divergent_layer",
            "first_divergent_name", "tokenizer", "tolerance", "advice"}
LOGIT_KEYS = {"max_abs_diff", "mean_abs_diff", "kl_divergence", "top1_agreement", "top5_overlap"}
PNG = b"\x89PNG\r\n\x1a\n"


def _defect_copy(tiny_models, tmp_path, family: str, edit, name: str = "defect") -> str:
    """An HF checkpoint with the fixture's weights, edited by `edit(weights)`, written by transformers."""
    spec = tiny_models.spec(family)
    w = {k: v.copy() for k, v in random_weights(spec, 0).items()}
    edit(w)
    return write_hf(spec, w, str(tmp_path / name), tiny_models.spm)


# ----------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("runtime_a,runtime_b", PAIRS)
def test_runtime_pairs_agree_float32(tiny_models, family, runtime_a, runtime_b):
    """The HF and the Keras checkpoint of the same weights, each pair of runtimes, default tokens."""
    hf, keras = load(tiny_models.get(family, "hf")), load(tiny_models.get(family, "keras"))
    r = parity(hf, keras, runtime_a, runtime_b, "cpu", "float32")
    assert set(r) >= TOP_KEYS
    assert r["passed"] is True, r["layers"]
    assert r["first_divergent_layer"] is None
    assert r["a"] == {"source": hf.source, "runtime": runtime_a}
    assert r["b"] == {"source": keras.source, "runtime": runtime_b}
    assert (r["device"], r["dtype"]) == ("cpu", "float32")
    n = hf.spec.num_layers
    assert [row["index"] for row in r["layers"]] == list(range(-1, n + 1))
    assert [row["name"] for row in r["layers"]] == ["embedding"] + [f"block {i}" for i in range(n)] + ["final norm"]
    assert all(set(row) == NOISE_LAYER_KEYS and row["status"] == "ok" for row in r["layers"])
    assert all(row["max_abs_diff"] <= row["bound"] for row in r["layers"])
    assert all(row["relative_diff"] < 1e-5 for row in r["layers"])
    assert r["layers"][0]["max_abs_diff"] == 0.0  # the embedding output is bit-identical
    assert set(r["logits"]) == LOGIT_KEYS | {"noise_floor", "error_a", "error_b", "bound"}
    assert r["logits"]["max_abs_diff"] < 1e-4
    assert r["logits"]["top1_agreement"] == 1.0 and r["logits"]["top5_overlap"] == 1.0
    assert r["logits"]["kl_divergence"] < 1e-9
    assert r["tokens"][0] == 2 and len(r["tokens"]) == 32
    assert r["tokenizer"]["passed"] is True and r["tokenizer"]["mismatches"] == []
    tol = r["tolerance"]
    assert (tol["mode"], tol["dtype"], tol["noise_factor"]) == ("noise floor", "float32", 10.0)
    assert tol["oracle"]["runtime"] == "reference" and tol["oracle"]["dtype"] == "float64"
    assert "float64" in tol["reason"] and r["advice"] == []
    # correct implementations sit within a few times the measured noise, far below the factor of 10
    assert all(row["max_abs_diff"] <= row["bound"] / 3 for row in r["layers"])
    json.dumps(r)  # the JSON object is plain data


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_parity_passes_on_every_family(tiny_models, family):
    """A bfloat16 checkpoint run in bfloat16: transformers (HF) vs keras-hub (Keras preset)."""
    hf = load(tiny_models.get(family, "hf", dtype="bfloat16"))
    keras = load(tiny_models.get(family, "keras", dtype="bfloat16"))
    r = parity(hf, keras, "transformers", "keras", "cpu", "bfloat16")
    assert r["passed"] is True, (r["logits"], r["layers"])
    assert r["dtype"] == "bfloat16"
    assert r["layers"][0]["max_abs_diff"] == 0.0  # bit-identical embedding in bfloat16 too
    assert all(row["relative_diff"] < 0.05 for row in r["layers"])
    lg = r["logits"]
    assert lg["kl_divergence"] < 1e-3 and lg["top1_agreement_outside_ties"] >= 0.95
    tol = r["tolerance"]
    assert (tol["min_top1_agreement"], tol["max_kl_divergence"], tol["atol"]) == (0.95, 0.01, 0.1)
    assert tol["embedding_atol"] == 2.0 ** -9
    assert 0 < tol["top1_tie_logits"] <= 0.25


def test_bfloat16_reference_equals_keras_within_one_bfloat16_step(tiny_models):
    """Same op order (eager attention, float32 softmax and norms) through different kernels (torch's reference vs
    keras-hub's ops): bit-identical on some CPUs, one bfloat16 step apart on others (0.015625 on an AMD EPYC). What
    holds on every CPU: every logit within one bfloat16 step of the logit scale, and the same top-1 token wherever
    the top two logits are more than that step apart."""
    import numpy as np

    from gemma_inspect.parity import bf16_step
    from gemma_inspect.runtimes import run

    hf = load(tiny_models.get("gemma3", "hf", dtype="bfloat16"))
    keras = load(tiny_models.get("gemma3", "keras", dtype="bfloat16"))
    r = parity(hf, keras, "reference", "keras", "cpu", "bfloat16")
    assert r["passed"] is True
    ids = r["tokens"]
    a = run(hf, ids, "reference", "cpu", "bfloat16").logits[0].float().numpy()
    b = run(keras, ids, "keras", "cpu", "bfloat16").logits[0].float().numpy()
    step = bf16_step(float(np.abs(a).max()))
    assert float(np.abs(a - b).max()) <= step
    top2 = np.sort(a, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * step
    assert clear.sum() >= len(ids) // 2  # the check below is not vacuous
    assert np.array_equal(a.argmax(-1)[clear], b.argmax(-1)[clear])


# ----------------------------------------------------------------------------- seeded defects
def test_defect_norm_offset_baked_into_one_layer(tiny_models, tmp_path):
    """Layer 1's input_layernorm stored as w + 1 (a converter that adds the offset) -> block 1."""
    def bake(w):
        w["model.layers.1.input_layernorm.weight"] += 1.0

    bad = _defect_copy(tiny_models, tmp_path, "gemma2", bake)
    r = parity(load(tiny_models.get("gemma2", "hf")), load(bad), "transformers", "transformers", "cpu", "float32")
    assert r["passed"] is False
    assert r["first_divergent_layer"] == 1
    statuses = [row["status"] for row in r["layers"]]
    assert statuses[:2] == ["ok", "ok"]  # embedding and block 0 untouched
    assert statuses[2] == "mismatch" and r["layers"][2]["relative_diff"] > 1e-2
    assert r["layers"][1]["max_abs_diff"] == 0.0
    assert r["tokenizer"]["passed"] is True  # the weights are wrong, not the tokenizer


@pytest.mark.parametrize("family,layer", [("gemma2", 2), ("gemma3", 5), ("gemma", 0)])
def test_defect_two_query_heads_swapped(tiny_models, tmp_path, family, layer):
    """Rows of query heads 0 and 2 exchanged in q_proj of one layer -> exactly that block."""
    d = tiny_models.spec(family).head_dim

    def swap(w):
        q = w[f"model.layers.{layer}.self_attn.q_proj.weight"]
        q[0:d], q[2 * d:3 * d] = q[2 * d:3 * d].copy(), q[0:d].copy()

    bad = _defect_copy(tiny_models, tmp_path, family, swap)
    # A through keras-hub, B through the reference runtime: the defect is found across implementations
    r = parity(load(tiny_models.get(family, "keras")), load(bad), "keras", "reference", "cpu", "float32")
    assert r["passed"] is False
    assert r["first_divergent_layer"] == layer
    assert all(row["status"] == "ok" for row in r["layers"][: layer + 1])
    assert r["layers"][layer + 1]["relative_diff"] > 1e-2


def test_defect_embedding_scale_in_float32_in_a_bfloat16_model(tmp_path, tiny_tokenizer, monkeypatch):
    """sqrt(48) applied exactly (6.9282) instead of as bfloat16 (6.9375): the 0.13% of Gemma 7B's
    55.4256 -> 55.5. Caught at the embedding output (-1), where correct implementations agree exactly."""
    spec = tiny_spec("gemma", hidden_size=48, dtype="bfloat16")
    ckpt = load(write_hf(spec, random_weights(spec, 0), str(tmp_path / "hf48"), tiny_tokenizer))
    good = parity(ckpt, ckpt, "transformers", "reference", "cpu", "bfloat16")
    assert good["passed"] is True and good["layers"][0]["max_abs_diff"] == 0.0
    monkeypatch.setattr(reference, "embed", embedding_scale_in_float32)  # B, the reference runtime, has the bug
    bad = parity(ckpt, ckpt, "transformers", "reference", "cpu", "bfloat16")
    assert bad["passed"] is False
    assert bad["first_divergent_layer"] == -1
    assert bad["layers"][0]["status"] == "mismatch"
    assert 2.0 ** -9 < bad["layers"][0]["relative_diff"] < 0.05  # one bfloat16 step, not a gross error


def test_defect_only_in_the_output_points_at_the_final_norm(tiny_models, tmp_path):
    """Only the final norm weight changed: every block agrees, first_divergent_layer == num_layers."""
    def bake(w):
        w["model.norm.weight"] += 1.0

    bad = _defect_copy(tiny_models, tmp_path, "gemma", bake)
    r = parity(load(tiny_models.get("gemma", "hf")), load(bad), "reference", "reference", "cpu", "float32")
    assert r["first_divergent_layer"] == 2 == tiny_models.spec("gemma").num_layers
    assert [row["status"] for row in r["layers"]] == ["ok", "ok", "ok", "mismatch"]
    assert r["logits"]["max_abs_diff"] > 1e-2 and r["passed"] is False


@pytest.mark.parametrize("to,name", [("gguf", "model.gguf"), ("gemma-pytorch", "model.ckpt")])
def test_conversions_to_other_formats_run_on_the_reference_runtime(tiny_models, tmp_path, to, name):
    """`auto` runs a GGUF or gemma_pytorch file on the reference runtime; transformers can run it too,
    built in memory from the canonical tensors."""
    from gemma_inspect.convert import convert

    src = tiny_models.get("gemma3", "hf")
    dest = str(tmp_path / name)
    convert(src, dest, to)
    r = parity(load(src), load(dest), device="cpu")
    assert (r["a"]["runtime"], r["b"]["runtime"]) == ("transformers", "reference")
    assert r["passed"] is True and r["first_divergent_layer"] is None
    assert r["logits"]["max_abs_diff"] < 1e-4
    assert r["tokenizer"] is not None and r["tokenizer"]["passed"] is True
    same_lib = parity(load(src), load(dest), "transformers", "transformers", "cpu", "float32")
    assert same_lib["logits"]["max_abs_diff"] == 0.0  # the same float32 weights through the same library


def test_quantized_side_is_judged_by_the_next_token_distribution(tiny_models, tmp_path):
    """A Q8_0 GGUF differs from its source in every weight: strict float32 tolerances cannot hold, the
    next-token distributions can. A weight that is really wrong still fails."""
    from gemma_inspect.convert import WriteOptions, convert

    src = tiny_models.get("gemma3", "hf")
    dest = str(tmp_path / "q8.gguf")
    convert(src, dest, "gguf", WriteOptions(dtype="q8_0"))
    r = parity(load(src), load(dest), device="cpu")
    assert r["tolerance"]["mode"] == "quantized" and r["tolerance"]["dtype"] == "float32"
    assert r["passed"] is True, (r["logits"], [x["relative_diff"] for x in r["layers"]])
    assert 0 < r["logits"]["kl_divergence"] <= 0.02
    assert r["logits"]["top1_agreement_outside_ties"] >= 0.9
    assert max(x["relative_diff"] for x in r["layers"]) < 0.25
    # the same quantization of a checkpoint whose layer-2 FFN is scrambled does not pass
    bad = parity(load(src), load(scrambled_ffn_gguf(tiny_models, tmp_path, "q8_0")), device="cpu")
    assert bad["passed"] is False and bad["first_divergent_layer"] == 2


# ----------------------------------------------------------------------------- logits metrics
def _whole_tensor_metrics(la, lb, tie):
    """The metrics computed over the whole tensors at once, the plain way, to check the blockwise version."""
    import torch

    pa, pb = torch.log_softmax(la.double(), -1), torch.log_softmax(lb.double(), -1)
    ta, tb = la.topk(5, -1).indices, lb.topk(5, -1).indices
    gap = la.max(-1).values - la.gather(-1, lb.argmax(-1, keepdim=True)).squeeze(-1)
    return {"max_abs_diff": float((la - lb).abs().max()), "mean_abs_diff": float((la - lb).abs().double().mean()),
            "kl_divergence": float((pa.exp() * (pa - pb)).sum(-1).mean()),
            "top1_agreement": float((la.argmax(-1) == lb.argmax(-1)).double().mean()),
            "top5_overlap": float((ta[..., None] == tb[..., None, :]).any(-1).double().sum(-1).mean() / 5),
            "top1_agreement_outside_ties": float((gap <= tie).double().mean())}


@pytest.mark.parametrize("chunk_elements", [1, 7 * 50, 10**9])
def test_logits_metrics_are_the_same_in_blocks_of_positions(monkeypatch, chunk_elements):
    """Blocks of 1 position, of 7 (not dividing 2 x 23 positions) and all at once give the same figures."""
    import torch

    from gemma_inspect import parity as P

    g = torch.Generator().manual_seed(7)
    la = torch.randn(2, 23, 50, generator=g) * 3
    lb = la + torch.randn(2, 23, 50, generator=g) * 0.3
    monkeypatch.setattr(P, "METRIC_CHUNK_ELEMENTS", chunk_elements)
    got = P.logits_metrics(la, lb, tie=0.1)
    want = _whole_tensor_metrics(la, lb, 0.1)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15), key
    assert 0 < got["top1_agreement"] < 1 and 0 < got["top5_overlap"] < 1  # the sample exercises both


def test_logits_metrics_keep_nan_visible(monkeypatch):
    """A NaN in any block makes max_abs_diff and the KL divergence NaN (never a clamped 0)."""
    import math

    import torch

    from gemma_inspect import parity as P

    monkeypatch.setattr(P, "METRIC_CHUNK_ELEMENTS", 10)
    la = torch.zeros(1, 6, 10)
    lb = la.clone()
    lb[0, 2, 3] = float("nan")
    got = P.logits_metrics(la, lb)
    assert math.isnan(got["max_abs_diff"]) and math.isnan(got["kl_divergence"])


def test_logits_metrics_over_vocabularies_of_different_sizes():
    """B has 3 rows more than A: differences and KL over the shared rows; an argmax on a row only B has is a
    disagreement; the probability B puts on its extra rows is reported."""
    import math

    import torch

    from gemma_inspect.parity import logits_metrics

    la = torch.tensor([[[2.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]]])
    extra = torch.tensor([[[-50.0, -50.0, -50.0], [5.0, -50.0, -50.0]]])
    lb = torch.cat([la, extra], -1)  # the same shared logits; position 1's best token is row 4, which A lacks
    m = logits_metrics(la, lb, tie=0.1)
    assert (m["max_abs_diff"], m["mean_abs_diff"], m["kl_divergence"]) == (0.0, 0.0, 0.0)
    assert m["top1_agreement"] == 0.5 and m["top1_agreement_outside_ties"] == 0.5
    assert m["vocab_compared"] == 4 and m["excluded_mass_a"] == 0.0
    z = math.exp(3) + 3 + math.exp(5) + 2 * math.exp(-50)  # position 1 of B
    assert m["excluded_mass_b"] == pytest.approx((math.exp(5) + 2 * math.exp(-50)) / z, rel=1e-12)
    assert set(logits_metrics(la, la)) == LOGIT_KEYS  # equal vocabularies: no extra keys


def _with_extra_rows(tiny_models, tmp_path, rows, name):
    """The gemma3 fixture's weights with 64 rows appended to the (tied) embedding, as the HF Gemma 3 releases
    have beyond their tokenizer, written by transformers."""
    import dataclasses

    import numpy as np

    spec = tiny_models.spec("gemma3")
    w = dict(random_weights(spec, 0))
    w["model.embed_tokens.weight"] = np.concatenate([w["model.embed_tokens.weight"], rows]).astype(np.float32)
    return write_hf(dataclasses.replace(spec, vocab_size=spec.vocab_size + 64), w, str(tmp_path / name),
                    tiny_models.spm)


def test_parity_across_vocabulary_sizes(tiny_models, tmp_path):
    """Gemma 3 as llama.cpp stores it (the out-of-vocabulary rows dropped) against the checkpoint with them:
    it holds when the extra rows take no probability, and fails at the output when they do."""
    import numpy as np

    from gemma_inspect.runtimes import run

    a = load(tiny_models.get("gemma3", "hf"))
    ids = default_tokens(a)
    h = run(a, ids, "reference", "cpu").hidden_states[-1][0].double().numpy()  # [T, d] after the final norm
    row = np.linalg.lstsq(h, np.full(len(ids), -40.0), rcond=None)[0]  # a row whose logit is -40 everywhere
    quiet = _with_extra_rows(tiny_models, tmp_path, np.tile(row, (64, 1)), "extra-quiet")
    r = parity(a, load(quiet), "transformers", "transformers", "cpu", "float32")
    assert r["passed"] is True and r["first_divergent_layer"] is None
    assert r["vocab"] == {"a": 384, "b": 448, "compared": 384}
    assert r["logits"]["max_abs_diff"] == 0.0 and r["logits"]["top1_agreement"] == 1.0
    assert r["logits"]["excluded_mass_a"] == 0.0 and r["logits"]["excluded_mass_b"] < 1e-12
    assert r["tolerance"]["max_excluded_mass"] == 0.01
    zero = _with_extra_rows(tiny_models, tmp_path, np.zeros((64, a.spec.hidden_size)), "extra-zero")
    r = parity(load(zero), a, "reference", "transformers", "cpu", "float32")
    assert r["passed"] is False and r["first_divergent_layer"] == a.spec.num_layers  # only the output differs
    assert all(row["status"] == "ok" for row in r["layers"])
    assert r["logits"]["excluded_mass_a"] == pytest.approx(0.101, abs=0.001)  # 64 logits of 0 in a tiny model
    text = CliRunner().invoke(main, ["parity", zero, tiny_models.get("gemma3", "hf")])
    assert text.exit_code == 1
    assert ("Vocabulary: A has 448 rows, B 384: differences and KL over the 384 both have; probability on the "
            "rows only one side has: at most 0.101 (limit 0.01)") in " ".join(text.stdout.split())


# ----------------------------------------------------------------------------- inputs and tokenizers
def test_default_tokens_are_fixed_and_longer_than_the_window(tiny_models):
    ckpt = load(tiny_models.get("gemma3", "hf"))
    t1, t2 = default_tokens(ckpt), default_tokens(ckpt)
    assert t1 == t2 and t1[0] == 2 and len(t1) == 32 > ckpt.spec.sliding_window
    assert all(4 <= t < ckpt.spec.vocab_size for t in t1[1:])
    big = load("gemma2-2b")  # a card has a spec: the default length follows its window (4096)
    assert len(default_tokens(big)) == 4096 + 8


def test_prompt_is_tokenized_with_a_tokenizer(tiny_models):
    hf, keras = load(tiny_models.get("gemma", "hf")), load(tiny_models.get("gemma", "keras"))
    r = parity(hf, keras, device="cpu", prompt="Gemma adds one to the stored weight.")
    assert r["tokens"] == hf.tokenizer.encode("Gemma adds one to the stored weight.")
    assert r["tokens"][0] == 2 and len(r["tokens"]) > 3
    assert r["passed"] is True and (r["a"]["runtime"], r["b"]["runtime"]) == ("transformers", "keras")


def test_tokenizer_mismatch_fails_parity(tiny_models, tmp_path):
    other = train_tokenizer(str(tmp_path / "other.model"), vocab_size=420)
    spec = tiny_models.spec("gemma")
    b = load(write_hf(spec, random_weights(spec, 0), str(tmp_path / "hf-other-tok"), other))
    r = parity(load(tiny_models.get("gemma", "hf")), b, "reference", "reference", "cpu", "float32")
    assert r["first_divergent_layer"] is None  # same weights
    assert r["passed"] is False
    tok = r["tokenizer"]
    assert tok["passed"] is False and tok["vocab_size"] == {"a": 384, "b": 420}
    assert tok["mismatches"] and all(m["a"] != m["b"] for m in tok["mismatches"])
    assert tok["texts"] == 7


def test_no_tokenizer_on_one_side_means_no_tokenizer_verdict(tiny_models):
    r = parity(load(tiny_models.get("gemma", "hf")), load(tiny_models.get("gemma", "keras", tokenizer=False)),
               device="cpu", tokens=[2, 17, 99, 5])
    assert r["tokenizer"] is None and r["passed"] is True and r["tokens"] == [2, 17, 99, 5]


def test_incompatible_specs_and_bad_inputs(tiny_models):
    g1, g2 = load(tiny_models.get("gemma", "hf")), load(tiny_models.get("gemma2", "hf"))
    with pytest.raises(UnsupportedError, match="cannot compare .* layer by layer: num_layers 2 vs 4"):
        parity(g1, g2, device="cpu")
    with pytest.raises(InputError, match="either tokens or a prompt"):
        parity(g1, g1, device="cpu", tokens=[2], prompt="x")
    with pytest.raises(InputError, match="has no tokenizer to encode --prompt"):
        nt = load(tiny_models.get("gemma", "keras", tokenizer=False))
        parity(nt, g1, device="cpu", prompt="hello")
    with pytest.raises(InputError, match="--atol must be positive"):
        parity(g1, g1, device="cpu", tokens=[2, 5], atol=0)


def test_atol_override_is_reported_and_applied(tiny_models):
    hf, keras = load(tiny_models.get("gemma2", "hf")), load(tiny_models.get("gemma2", "keras"))
    r = parity(hf, keras, "transformers", "keras", "cpu", "float32", atol=1e-9)
    assert r["tolerance"]["atol"] == 1e-9
    assert r["passed"] is False and r["first_divergent_layer"] == 0  # float32 rounding exceeds 1e-9


def test_plot_layers_writes_a_png(tiny_models, tmp_path):
    def bake(w):
        w["model.layers.1.input_layernorm.weight"] += 1.0

    bad = _defect_copy(tiny_models, tmp_path, "gemma2", bake)
    r = parity(load(tiny_models.get("gemma2", "hf")), load(bad), "reference", "reference", "cpu", "float32")
    out = plot_layers(r, str(tmp_path / "layers.png"))
    with open(out, "rb") as f:
        assert f.read(8) == PNG
    assert os.path.getsize(out) > 5000


# ----------------------------------------------------------------------------- CLI
def _cli(*args: str):
    return CliRunner().invoke(main, ["parity", *args])


def test_cli_parity_json_passes(tiny_models):
    hf, keras = tiny_models.get("gemma3", "hf"), tiny_models.get("gemma3", "keras")
    res = _cli(hf, keras, "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert set(obj) >= TOP_KEYS
    assert obj["passed"] is True and obj["first_divergent_layer"] is None
    assert obj["a"] == {"source": hf, "runtime": "transformers"}
    assert obj["b"] == {"source": keras, "runtime": "keras"}
    assert len(obj["layers"]) == 7 + 2 and obj["tokens"][0] == 2


def test_cli_parity_defect_exits_1_with_the_layer(tiny_models, tmp_path):
    def bake(w):
        w["model.layers.1.input_layernorm.weight"] += 1.0

    bad = _defect_copy(tiny_models, tmp_path, "gemma2", bake)
    png = str(tmp_path / "p.png")
    res = _cli(tiny_models.get("gemma2", "keras"), bad, "--device", "cpu", "--tokens", "2,10,20,30,40,50,60,70,80",
               "--plot", png, "--json")
    assert res.exit_code == 1
    obj = json.loads(res.stdout)
    assert obj["passed"] is False and obj["first_divergent_layer"] == 1
    assert obj["tokens"] == [2, 10, 20, 30, 40, 50, 60, 70, 80]
    with open(png, "rb") as f:
        assert f.read(8) == PNG


def test_cli_parity_text_report(tiny_models, tmp_path):
    def swap(w):
        q = w["model.layers.0.self_attn.q_proj.weight"]
        q[0:32], q[32:64] = q[32:64].copy(), q[0:32].copy()

    bad = _defect_copy(tiny_models, tmp_path, "gemma", swap)
    res = _cli(tiny_models.get("gemma", "hf"), bad, "--device", "cpu", "--runtime-b", "reference")
    assert res.exit_code == 1
    out = res.stdout
    assert "block 0" in out and "<- first divergent" in out
    assert "FAIL: first divergent layer 0 (decoder block 0)" in out
    assert "Tokenizer: identical ids on 7 texts" in out
    ok = _cli(tiny_models.get("gemma", "hf"), tiny_models.get("gemma", "keras"), "--device", "cpu",
              "--dtype", "bfloat16")
    assert ok.exit_code == 0, ok.output
    assert "PASS: A and B compute the same thing within tolerance" in ok.stdout
    assert "bfloat16" in ok.stdout and "KL <= 0.01" in ok.stdout


@pytest.mark.parametrize("args,message", [
    (["--tokens", "2,x"], "--tokens must be comma-separated integers, got '2,x'"),
    (["--tokens", "2,5", "--prompt", "hi"], "give --prompt or --tokens, not both"),
    (["--tokens", "2,99999"], "token id 99999 is outside the vocabulary of {hf} (0..383)"),
])
def test_cli_parity_usage_errors_exit_2(tiny_models, args, message):
    hf = tiny_models.get("gemma", "hf")
    res = _cli(hf, hf, "--device", "cpu", *args)
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.splitlines()[-1] == "Error: " + message.format(hf=hf)  # after any usage or step lines


def test_cli_parity_card_is_an_input_error():
    res = _cli("gemma-2b", "gemma-2b", "--device", "cpu")
    assert res.exit_code == 2
    assert res.stderr.strip() == ("Error: gemma-2b: is a built-in card: it has an architecture but no weights "
                                  "to run")


# ----------------------------------------------------------------------------- the CI example
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "ci")


def test_ci_workflow_example_runs_parity_json_and_the_gate():
    import yaml

    with open(os.path.join(EXAMPLES, "parity.yml")) as f:
        wf = yaml.safe_load(f)
    steps = wf["jobs"]["parity"]["steps"]
    runs = [s.get("run", "") for s in steps]
    assert any("gemma-inspect parity" in r and "--json" in r and "--plot" in r for r in runs)
    assert any("pytest" in r and "test_checkpoint_parity.py" in r for r in runs)
    assert {"TRAINED", "EXPORTED"} <= set(wf["jobs"]["parity"]["env"])
    assert any(s.get("uses", "").startswith("actions/upload-artifact") for s in steps)


@pytest.mark.slow
def test_ci_pytest_example_passes_a_good_export_and_fails_a_bad_one(tiny_models, tmp_path):
    import subprocess
    import sys

    good_env = dict(os.environ, TRAINED=tiny_models.get("gemma2", "keras"), EXPORTED=tiny_models.get("gemma2", "hf"),
                    PARITY_DEVICE="cpu", PARITY_REPORT_DIR=str(tmp_path / "reports"))
    test_file = os.path.join(EXAMPLES, "test_checkpoint_parity.py")
    good = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
                          env=good_env, capture_output=True, text=True, cwd=str(tmp_path))
    assert good.returncode == 0, good.stdout[-3000:]
    assert "4 passed" in good.stdout
    with open(tmp_path / "reports" / "float32-native.json") as f:
        assert json.load(f)["passed"] is True
    with open(tmp_path / "reports" / "float32-native.png", "rb") as f:
        assert f.read(8) == PNG

    def bake(w):
        w["model.layers.1.input_layernorm.weight"] += 1.0

    bad_env = dict(good_env, EXPORTED=_defect_copy(tiny_models, tmp_path, "gemma2", bake))
    bad = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file, "-k",
                          "float32_every_layer"], env=bad_env, capture_output=True, text=True, cwd=str(tmp_path))
    assert bad.returncode == 1
    assert "first divergent: block 1" in bad.stdout
