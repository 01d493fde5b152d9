"""`verify`: healthy tiny checkpoints of every family pass under every runtime that can run them, with the
observed values asserted exactly; seeded defects are each flagged by the right check; the lint rules on
spec-only checkpoints; the recorded layer graph; the CLI's JSON, exit codes and tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from files import edit_json
from defects import embedding_scale_in_float32
from gemma_inspect import load
from gemma_inspect.checkpoint import NORM_ROLES, Checkpoint, parse_canonical
from gemma_inspect.cli import main
from gemma_inspect.errors import InputError
from gemma_inspect.parity import default_tokens
from gemma_inspect.runtimes import load_model, reference
from gemma_inspect.spec import card
from gemma_inspect.tiny import random_weights, tiny_spec, write_hf
from gemma_inspect.verify import CHECK_NAMES, architecture_checks, lint, observe, verify

FAMILIES = ("gemma", "gemma-mha", "gemma2", "gemma3")
TOP_KEYS = {"passed", "source", "runtime", "checks"}
CHECK_KEYS = {"name", "status", "expected", "observed", "evidence"}

# What each tiny family must be observed to do (tiny_spec: d = 64, so the embedding scale is sqrt(64) = 8).
OBSERVED = {
    "gemma": dict(norm_placement="pre", attention_kind="MQA", logit_softcap=None, attention_softcap=None,
                  qk_norm=False, query_scale=0.176777,  # 1/sqrt(head_dim 32)
                  sliding_window={"window": None, "sliding_layers": [], "global_layers": [0, 1]}),
    "gemma-mha": dict(norm_placement="pre", attention_kind="MHA", logit_softcap=None, attention_softcap=None,
                      qk_norm=False, query_scale=0.25,
                      sliding_window={"window": None, "sliding_layers": [], "global_layers": [0, 1]}),
    "gemma2": dict(norm_placement="pre+post", attention_kind="GQA", logit_softcap=30.0, attention_softcap=50.0,
                   qk_norm=False, query_scale=0.25,
                   sliding_window={"window": 6, "sliding_layers": [0, 2], "global_layers": [1, 3]}),
    "gemma3": dict(norm_placement="pre+post", attention_kind="GQA", logit_softcap=None, attention_softcap=None,
                   qk_norm=True, query_scale=0.25,
                   sliding_window={"window": 6, "sliding_layers": [0, 1, 2, 3, 4, 6], "global_layers": [5]}),
}
COMMON = dict(norm_offset=1, embedding_scale=8.0, tied_embeddings=True, activation="gelu_tanh")

# The norms a runtime is seen to run around each sub-layer of block 0 (names are the runtime's own).
PLACEMENT_EVIDENCE = {
    ("gemma", "transformers"): "attention: input_layernorm -> self_attn -> + x; "
                               "feed-forward: post_attention_layernorm -> mlp -> + residual 1",
    ("gemma2", "transformers"): "attention: input_layernorm -> self_attn -> post_attention_layernorm -> + x; "
                                "feed-forward: pre_feedforward_layernorm -> mlp -> post_feedforward_layernorm "
                                "-> + residual 1",
    ("gemma", "reference"): "attention: input_layernorm -> self_attn -> + x; "
                            "feed-forward: pre_feedforward_layernorm -> mlp -> + residual 1",
    ("gemma", "keras"): "attention: pre_attention_norm -> attention -> + x; "
                        "feed-forward: pre_ffw_norm -> gating_ffw .. ffw_linear -> + residual 1",
    ("gemma3", "keras"): "attention: pre_attention_norm -> attention -> post_attention_norm -> + x; "
                         "feed-forward: pre_ffw_norm -> gating_ffw .. ffw_linear -> post_ffw_norm -> + residual 1",
}


def _by_name(result: dict | list) -> dict[str, dict]:
    return {c["name"]: c for c in (result["checks"] if isinstance(result, dict) else result)}


def _write(tiny_models, path, family: str, edit=None, config=None, **spec_changes) -> str:
    """An HF checkpoint of the fixture's weights with `spec_changes`, `edit(weights)` and `config(cfg)`
    applied, written by transformers."""
    spec = tiny_spec(family, **spec_changes)
    w = {k: v.copy() for k, v in random_weights(spec, 0).items()}
    if edit:
        edit(w)
    out = write_hf(spec, w, str(path), tiny_models.spm)
    if config:
        edit_json(os.path.join(out, "config.json"), config)
    return out


@pytest.fixture(scope="module")
def defects(tiny_models, tmp_path_factory):
    """The seeded defects, written once for the module."""
    root = tmp_path_factory.mktemp("verify-defects")

    def tie_flag(cfg):
        cfg["tie_word_embeddings"] = True

    def legacy_gelu(cfg):
        cfg["hidden_act"] = "gelu"
        del cfg["hidden_activation"]

    def plus_one(w):
        for name in w:
            parsed = parse_canonical(name)
            if parsed and parsed[0] in NORM_ROLES:
                w[name] += 1.0

    return {
        # Gemma 2 config says hidden_activation = "gelu" (exact erf), as some ports write it.
        "exact_gelu": _write(tiny_models, root / "exact-gelu", "gemma2", activation="gelu"),
        # Gemma 1 with the release's legacy hidden_act = "gelu" (transformers reads it as tanh).
        "legacy_gelu": _write(tiny_models, root / "legacy-gelu", "gemma", config=legacy_gelu),
        # A separate lm_head.weight stored, different from the embedding, under tie_word_embeddings = true.
        "untied_head": _write(tiny_models, root / "untied-head", "gemma", tied_embeddings=False, config=tie_flag),
        # Gemma 2 whose config has lost both soft caps.
        "no_caps": _write(tiny_models, root / "no-caps", "gemma2", attention_logit_softcap=None,
                          final_logit_softcap=None),
        # Every norm weight stored as 1 + w (a GGUF import that did not subtract llama.cpp's +1).
        "plus_one": _write(tiny_models, root / "plus-one", "gemma3", edit=plus_one),
    }


# ============================================================================= healthy checkpoints
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fmt,runtime", [("hf", "reference"), ("hf", "transformers"), ("keras", "keras"),
                                         ("keras", "reference")])
def test_healthy_checkpoints_pass_with_exact_observations(tiny_models, family, fmt, runtime):
    r = verify(tiny_models.get(family, fmt), runtime, "cpu")
    assert set(r) == TOP_KEYS
    assert r["runtime"] == runtime and r["source"] == tiny_models.get(family, fmt)
    assert all(set(c) == CHECK_KEYS for c in r["checks"])
    checks = _by_name(r)
    assert [c["name"] for c in r["checks"][:len(CHECK_NAMES)]] == list(CHECK_NAMES)
    for name, value in {**COMMON, **OBSERVED[family]}.items():
        assert checks[name]["observed"] == value, (name, checks[name])
        assert checks[name]["expected"] == value, (name, checks[name])
        assert checks[name]["status"] == "pass", (name, checks[name])
    # Lint: everything passes, except what a tiny fixture legitimately lacks.
    lint_status = {c["name"]: c["status"] for c in r["checks"] if c["name"].startswith("lint:")}
    if fmt == "hf":
        assert lint_status.pop("lint:end_of_turn") == "warn"  # generation_config eos is [1] only: a base model
    else:
        assert lint_status.pop("lint:special_ids") == "skip"  # a Keras preset does not store bos/eos/pad
    assert set(lint_status.values()) == {"pass"}, lint_status
    assert r["passed"] is True
    key = (family, runtime)
    if key in PLACEMENT_EVIDENCE:
        assert PLACEMENT_EVIDENCE[key] in checks["norm_placement"]["evidence"]
    emb = checks["embedding_scale"]["evidence"]
    assert "sqrt(64) = 8, 8 in float32" in emb and "max deviation 0.0e+00" in emb
    json.dumps(r)


def test_healthy_gemma2_evidence_numbers(tiny_models):
    checks = _by_name(verify(tiny_models.get("gemma2", "hf"), "transformers", "cpu"))
    assert checks["sliding_window"]["evidence"] == ("keys attended by the last of 32 queries, per layer: "
                                                    "0: 6, 1: 32, 2: 6, 3: 32")
    assert "saturated at c = 30 (c * tanh(x / c))" in checks["logit_softcap"]["evidence"]
    assert "saturated at c = 50 (c * tanh(x / c))" in checks["attention_softcap"]["evidence"]
    assert "q 64 = 4 x 16 per token (4 query heads from 4 score maps in the softmax), k 32 = 2 x 16, " \
           "v 32 = 2 x 16" in checks["attention_kind"]["evidence"]
    assert "logits = c * tanh(h @ E^T / c), c = 30 to" in checks["tied_embeddings"]["evidence"]
    assert "soft cap 50 undone first" in checks["query_scale"]["evidence"]


def test_bfloat16_embedding_scale_rounding_and_the_float32_factor_bug(tiny_tokenizer, tmp_path, monkeypatch):
    """d = 48 in bfloat16: sqrt(48) = 6.9282 is applied as 6.9375. A runtime multiplying by the exact factor
    in float32 (the porting bug, seeded into the reference runtime) is observed doing so."""
    spec = tiny_spec("gemma", hidden_size=48, dtype="bfloat16")
    ckpt = load(write_hf(spec, random_weights(spec, 0), str(tmp_path / "hf48"), tiny_tokenizer))
    r = _by_name(verify(ckpt, "transformers", "cpu"))
    assert (r["embedding_scale"]["status"], r["embedding_scale"]["observed"]) == ("pass", 6.9375)
    assert "sqrt(48) = 6.9282, 6.9375 in bfloat16; the runtime used sqrt(48) rounded to bfloat16 (bit-exact)" \
           in r["embedding_scale"]["evidence"]
    assert (r["activation"]["status"], r["activation"]["observed"]) == ("pass", "gelu_tanh")  # tanh vs erf in bf16
    monkeypatch.setattr(reference, "embed", embedding_scale_in_float32)
    model = load_model(ckpt, "reference", "cpu", "bfloat16")
    try:
        bad = _by_name(architecture_checks(ckpt, observe(model, default_tokens(ckpt))))
    finally:
        model.close()
    assert (bad["embedding_scale"]["status"], bad["embedding_scale"]["observed"]) == ("fail", 6.9282)
    assert "used the exact sqrt(48) in float32, rounding the product (bit-exact): not Gemma's" \
           in bad["embedding_scale"]["evidence"]


def test_recorded_graph_of_a_gemma_block(tiny_models):
    r = verify(tiny_models.get("gemma", "hf"), "transformers", "cpu", graph=True)
    g = r["graph"]
    assert (g["block"], g["class"], g["input"], g["output"], g["shape"]) == (
        "model.layers.0", "GemmaDecoderLayer", "x", "residual 2", [1, 32, 64])
    assert [(n["kind"], n["name"], n.get("input") or n.get("inputs")) for n in g["nodes"]] == [
        ("module", "input_layernorm", "x"),
        ("module", "self_attn", "input_layernorm"),
        ("residual", "add", ["x", "self_attn"]),
        ("module", "post_attention_layernorm", "residual 1"),
        ("module", "mlp", "post_attention_layernorm"),
        ("residual", "add", ["residual 1", "mlp"]),
    ]
    attn = g["nodes"][1]["children"]
    assert [(n["name"], n["shape"]) for n in attn] == [
        ("self_attn.q_proj", [1, 32, 128]), ("self_attn.k_proj", [1, 32, 32]), ("self_attn.v_proj", [1, 32, 32]),
        ("softmax", [1, 4, 32, 32]), ("self_attn.o_proj", [1, 32, 64])]
    act = [n for n in g["nodes"][4]["children"] if n["name"] == "mlp.act_fn"][0]
    assert act["children"] == [{"kind": "op", "name": "gelu_tanh", "shape": [1, 32, 96]}]


def test_keras_block_graph_shows_the_inline_gelu(tiny_models):
    """keras-hub's FFN is no layer: the block calls two dense layers, the GELU and a multiply itself."""
    g = verify(tiny_models.get("gemma2", "keras"), "keras", "cpu", graph=True)["graph"]
    ops = [(n["name"], n["output"]) for n in g["nodes"] if n["kind"] == "op"]
    assert ops == [("gelu_tanh", "gelu_tanh(gating_ffw)"), ("mul", "gelu_tanh(gating_ffw) * gating_ffw_2")]
    down = [n for n in g["nodes"] if n.get("name") == "ffw_linear"][0]
    assert down["input"] == "gelu_tanh(gating_ffw) * gating_ffw_2"


# ============================================================================= seeded defects
def test_defect_exact_gelu_in_a_gemma2_config(defects):
    r = verify(defects["exact_gelu"], "transformers", "cpu")
    c = _by_name(r)
    assert r["passed"] is False
    assert (c["lint:exact_gelu"]["status"], c["activation"]["status"], c["activation"]["observed"]) == \
           ("fail", "fail", "gelu")
    assert c["lint:exact_gelu"]["observed"] == "hidden_act = 'gelu', hidden_activation = 'gelu'"
    assert "relative error gelu " in c["activation"]["evidence"]
    ref = _by_name(verify(defects["exact_gelu"], "reference", "cpu"))
    assert (ref["activation"]["status"], ref["activation"]["observed"]) == ("fail", "gelu")
    failed = {n for n, x in c.items() if x["status"] == "fail"}
    assert failed == {"activation", "lint:exact_gelu"}


def test_defect_legacy_gemma1_gelu_is_a_warning_and_runs_tanh(defects):
    """transformers reads Gemma 1's hidden_act = "gelu" as tanh (observed), the lint still warns."""
    r = verify(defects["legacy_gelu"], "transformers", "cpu")
    c = _by_name(r)
    assert (c["activation"]["status"], c["activation"]["observed"]) == ("pass", "gelu_tanh")
    assert c["lint:exact_gelu"]["status"] == "warn"
    assert "Gemma 1 release value" in c["lint:exact_gelu"]["evidence"]
    assert r["passed"] is True


def test_defect_untied_lm_head_under_a_tie_flag(defects):
    r = verify(defects["untied_head"], "transformers", "cpu")
    c = _by_name(r)
    assert c["lint:tied_lm_head"]["status"] == "fail"
    assert c["lint:tied_lm_head"]["observed"] == "tied, lm_head.weight different from the embedding"
    # transformers 5 does not tie two different matrices: the logits are observed using the stored one.
    assert (c["tied_embeddings"]["status"], c["tied_embeddings"]["observed"]) == ("fail", False)
    assert "differs from the embedding (max |W - E| = " in c["tied_embeddings"]["evidence"]
    assert r["passed"] is False
    # This tool's reader sets the stored matrix aside: the reference runtime ties, and says what it left out.
    ref = _by_name(verify(defects["untied_head"], "reference", "cpu"))
    assert (ref["tied_embeddings"]["status"], ref["tied_embeddings"]["observed"]) == ("warn", True)
    assert "not used by this runtime" in ref["tied_embeddings"]["evidence"]


def test_defect_gemma2_without_soft_caps(defects):
    r = verify(defects["no_caps"], "transformers", "cpu")
    c = _by_name(r)
    assert (c["logit_softcap"]["status"], c["logit_softcap"]["expected"], c["logit_softcap"]["observed"]) == \
           ("fail", 30.0, None)
    assert (c["attention_softcap"]["status"], c["attention_softcap"]["expected"],
            c["attention_softcap"]["observed"]) == ("fail", 50.0, None)
    assert c["lint:softcaps"]["status"] == "fail"
    assert c["lint:softcaps"]["observed"] == {"attention": None, "final": None}
    assert "grew with it, no cap" in c["logit_softcap"]["evidence"]
    assert c["query_scale"]["status"] == "pass"  # nothing else is wrong
    assert r["passed"] is False


def test_defect_every_norm_stored_as_one_plus_w(defects):
    r = verify(defects["plus_one"], "transformers", "cpu")
    c = _by_name(r)
    assert c["lint:norm_weights"]["status"] == "fail"
    assert "(1 + w) offset is baked into the stored weights" in c["lint:norm_weights"]["evidence"]
    assert (c["norm_offset"]["status"], c["norm_offset"]["expected"], c["norm_offset"]["observed"]) == ("fail", 1, 2)
    assert "an effective (2 + w)" in c["norm_offset"]["evidence"]
    assert {n for n, x in c.items() if x["status"] == "fail"} == {"norm_offset", "lint:norm_weights"}


def test_defect_runtime_patched_to_skip_the_embedding_scale(tiny_models, monkeypatch):
    """The reference runtime's modules call `reference.embed` at run time: patch it to a bare lookup."""
    monkeypatch.setattr(reference, "embed", lambda spec, table, token_ids: table[token_ids])
    r = verify(tiny_models.get("gemma3", "hf"), "reference", "cpu")
    c = _by_name(r)
    assert (c["embedding_scale"]["status"], c["embedding_scale"]["expected"], c["embedding_scale"]["observed"]) == \
           ("fail", 8.0, 1.0)
    assert "neither factor reproduces the output bit for bit" in c["embedding_scale"]["evidence"]
    assert {n for n, x in c.items() if x["status"] == "fail"} == {"embedding_scale"}
    assert r["passed"] is False


# ============================================================================= lint on spec-only checkpoints
def _spec_ckpt(spec, fmt="hf", **kw) -> Checkpoint:
    return Checkpoint(spec=spec, tensors={}, source="x", format=fmt, **kw)


def test_lint_published_shapes():
    """query_pre_attn_scalar and RoPE scaling against the published card of the same shape."""
    c = {x["name"]: x for x in lint(_spec_ckpt(card("gemma2-27b").replace(query_pre_attn_scalar=128)))}
    assert (c["lint:query_pre_attn_scalar"]["status"], c["lint:query_pre_attn_scalar"]["expected"],
            c["lint:query_pre_attn_scalar"]["observed"]) == ("fail", 144, 128)
    ok = {x["name"]: x for x in lint(_spec_ckpt(card("gemma2-27b")))}
    assert ok["lint:query_pre_attn_scalar"]["status"] == "pass"
    c = {x["name"]: x for x in lint(_spec_ckpt(card("gemma3-4b").replace(rope_scaling_factor=1.0)))}
    assert (c["lint:rope_scaling"]["status"], c["lint:rope_scaling"]["expected"],
            c["lint:rope_scaling"]["observed"]) == ("fail", 8.0, 1.0)
    assert {x["name"]: x for x in lint(_spec_ckpt(card("gemma3-1b")))}["lint:rope_scaling"]["status"] == "pass"
    c = {x["name"]: x for x in lint(_spec_ckpt(card("gemma3-12b").replace(dtype="float16")))}
    assert (c["lint:float16"]["status"], c["lint:float16"]["observed"]) == ("warn", "float16")
    # GGUF does not store query_pre_attn_scalar: the lint says so rather than judging the reader's guess.
    c = {x["name"]: x for x in lint(_spec_ckpt(card("gemma2-9b"), "gguf",
                                               assumed=frozenset({"query_pre_attn_scalar"})))}
    assert c["lint:query_pre_attn_scalar"]["status"] == "skip"
    assert "lint:exact_gelu" not in c and "lint:end_of_turn" not in c  # HF-only rules are left out


def test_lint_config_keys_ids_and_vocabulary(tiny_models):
    base = load(tiny_models.get("gemma2", "hf"))
    ck = _spec_ckpt(base.spec, tokenizer=base.tokenizer, config={"model_type": "gemma2", "hidden_act": "silu"})
    c = {x["name"]: x for x in lint(ck)}
    assert (c["lint:activation_key"]["status"], c["lint:activation_key"]["observed"]) == ("warn", "hidden_act")
    assert "hidden_activation is missing" in c["lint:activation_key"]["evidence"]
    bad_ids = _spec_ckpt(base.spec.replace(bos_token_id=1, eos_token_id=2), tokenizer=base.tokenizer)
    c = {x["name"]: x for x in lint(bad_ids)}
    assert c["lint:special_ids"]["status"] == "fail"
    assert c["lint:special_ids"]["evidence"] == ("bos_token_id = 1 but the vocabulary has <bos> at 2; "
                                                 "eos_token_id = 2 but the vocabulary has <eos> at 1")
    small = _spec_ckpt(base.spec.replace(vocab_size=300), tokenizer=base.tokenizer)
    c = {x["name"]: x for x in lint(small)}
    assert (c["lint:vocab_size"]["status"], c["lint:vocab_size"]["observed"]) == ("fail", 300)
    assert "ids 300..383 have no row" in c["lint:vocab_size"]["evidence"]


def test_lint_end_of_turn_in_generation_config(tiny_models, copy_dir):
    path = copy_dir(tiny_models.get("gemma", "hf"))
    eot = load(path).tokenizer.token_to_id("<end_of_turn>")
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 2, "eos_token_id": [1, eot]}, f)
    c = {x["name"]: x for x in lint(load(path))}
    assert (c["lint:end_of_turn"]["status"], c["lint:end_of_turn"]["observed"]) == ("pass", [1, eot])
    os.remove(os.path.join(path, "generation_config.json"))
    c = {x["name"]: x for x in lint(load(path))}
    assert c["lint:end_of_turn"]["status"] == "warn"
    assert "no generation_config.json" in c["lint:end_of_turn"]["evidence"]


def test_lint_untied_copy_of_the_embedding_is_a_warning(tiny_models, tmp_path):
    def same(w):
        w["lm_head.weight"] = w["model.embed_tokens.weight"].copy()

    path = _write(tiny_models, tmp_path / "copy", "gemma", tied_embeddings=False, edit=same)
    c = {x["name"]: x for x in lint(load(path))}
    assert (c["lint:tied_lm_head"]["status"], c["lint:tied_lm_head"]["observed"]) == \
           ("warn", "untied, lm_head.weight equal to the embedding")


def test_verify_needs_weights():
    with pytest.raises(InputError, match="built-in card: it has an architecture but no weights"):
        verify("gemma-2b", device="cpu")


@pytest.mark.parametrize("to,name", [("gguf", "model.gguf"), ("gemma-pytorch", "model.ckpt")])
def test_other_formats_verify_on_the_reference_runtime(tiny_models, tmp_path, to, name):
    """`auto` runs a GGUF or a gemma_pytorch file on the reference runtime; GGUF's stored +1 on the norms
    is taken off by the reader, so the norms are observed zero-centred."""
    from gemma_inspect.convert import convert

    dest = str(tmp_path / name)
    convert(tiny_models.get("gemma2", "hf"), dest, to)
    r = verify(dest, device="cpu")
    c = _by_name(r)
    assert r["runtime"] == "reference" and r["passed"] is True, [x for x in r["checks"] if x["status"] == "fail"]
    for key, value in {**COMMON, **OBSERVED["gemma2"]}.items():
        assert c[key]["observed"] == value, key
    assert c["lint:norm_weights"]["status"] == "pass"


# ============================================================================= CLI
def _cli(*args: str):
    return CliRunner().invoke(main, ["verify", *args])


def test_cli_verify_json_passes(tiny_models):
    path = tiny_models.get("gemma2", "hf")
    res = _cli(path, "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert set(obj) == TOP_KEYS
    assert (obj["passed"], obj["source"], obj["runtime"]) == (True, path, "transformers")
    assert [c["name"] for c in obj["checks"]][:len(CHECK_NAMES)] == list(CHECK_NAMES)
    assert all(set(c) == CHECK_KEYS and c["status"] in ("pass", "fail", "warn", "skip") for c in obj["checks"])
    assert _by_name(obj)["embedding_scale"]["observed"] == 8.0


def test_cli_verify_defect_exits_1(defects):
    res = _cli(defects["no_caps"], "--device", "cpu", "--runtime", "reference", "--json")
    assert res.exit_code == 1
    obj = json.loads(res.stdout)
    assert obj["passed"] is False and obj["runtime"] == "reference"
    assert {c["name"] for c in obj["checks"] if c["status"] == "fail"} == \
           {"logit_softcap", "attention_softcap", "lint:softcaps"}
    text = _cli(defects["no_caps"], "--device", "cpu")
    assert text.exit_code == 1
    assert "FAIL: logit_softcap, attention_softcap, lint:softcaps" in text.stdout


def test_cli_verify_graph_tree(tiny_models):
    res = CliRunner().invoke(main, ["verify", tiny_models.get("gemma", "hf"), "--device", "cpu", "--graph"],
                             terminal_width=200)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "PASS: 19 pass, 1 warn, 1 skip" in out  # 12 observed checks, 7 lint rules, 1 warning, embedding_head skips
    assert "model.layers.0 (GemmaDecoderLayer)  input x [1, 32, 64]" in out
    assert "├── input_layernorm  GemmaRMSNorm  <- x [1, 32, 64]" in out
    assert "├── + residual  x + self_attn  -> residual 1 [1, 32, 64]" in out
    assert "├── post_attention_layernorm  GemmaRMSNorm  <- residual 1 [1, 32, 64]" in out
    assert "│   ├── gate_proj  Linear [1, 32, 96]" in out
    assert "└── output: residual 2" in out
    both = _cli(tiny_models.get("gemma", "hf"), "--device", "cpu", "--graph", "--json")
    obj = json.loads(both.stdout)
    assert set(obj) == TOP_KEYS | {"graph"} and obj["graph"]["block"] == "model.layers.0"


@pytest.mark.parametrize("args,message", [
    (["/nonexistent/model"], "Error: /nonexistent/model: no such file or directory"),
    (["gemma-2b"], "Error: gemma-2b: is a built-in card: it has an architecture but no weights to run"),
    (["gemma-2b", "--runtime", "jax"], "Invalid value for '--runtime'"),
])
def test_cli_verify_bad_input_exits_2(args, message):
    res = _cli(*args, "--device", "cpu")
    assert res.exit_code == 2
    assert message in res.stderr


def test_verify_help_is_light_and_documented():
    code = ("import sys, runpy; sys.argv = ['gemma-inspect', 'verify', '--help']\n"
            "try:\n    runpy.run_module('gemma_inspect', run_name='__main__')\nexcept SystemExit: pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'keras', 'tensorflow', 'transformers'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert "Example:" in proc.stdout and "--graph" in proc.stdout
    for option in ("--runtime [auto|reference|transformers|keras]", "--device [auto|cpu|cuda]", "--json"):
        assert option in proc.stdout


def test_check_values_are_plain_json(tiny_models):
    """Every check's expected/observed value is plain JSON data."""
    r = verify(tiny_models.get("gemma3", "keras"), "reference", "cpu")
    for c in r["checks"]:
        json.dumps(c)
        assert not isinstance(c["observed"], np.generic)


def test_tracer_leaves_no_hooks_behind(tiny_models):
    """Every hook is removed on exit and the function mode is popped, also when the forward pass fails."""
    import torch

    from gemma_inspect.trace import Tracer

    ckpt = load(tiny_models.get("gemma2", "hf"))
    model = load_model(ckpt, "reference", "cpu", "float32")
    try:
        an = model.anatomy()
        modules = list(an.root.modules())
        with pytest.raises(RuntimeError, match="probe failure"):
            with Tracer(an) as tr:
                tr.record_block(0)
                tr.on_softmax(lambda i, s, p: None)

                def boom(_t):
                    raise RuntimeError("probe failure")

                tr.replace_output(an.part(1, "v"), boom)
                model.forward([[2, 5, 6, 7]])
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in modules)
        assert torch.overrides._get_current_function_mode() is None
        again = model.forward([[2, 5, 6, 7]])  # the model still runs, untouched
        assert again.logits.shape == (1, 4, 384)
    finally:
        model.close()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fmt,runtime", [("hf", "reference"), ("hf", "transformers"), ("keras", "keras")])
def test_verify_on_cuda(tiny_models, fmt, runtime):
    """The same observations on a GPU (keras-hub would pick its fused kernel there: verify keeps it eager)."""
    r = verify(tiny_models.get("gemma2", fmt), runtime, "cuda")
    c = _by_name(r)
    assert r["passed"] is True
    for name, value in {**COMMON, **OBSERVED["gemma2"]}.items():
        assert c[name]["observed"] == value, (name, c[name])
