"""The config lint in `summary` (the rules that need the config alone: no tokenizer, no tensor values) and the
registries behind `verify`: architecture checks by name, lint rules by name with their format and what they
read, HF's own rules registered from formats/hf_lint.py, and the set-aside lm_head kept on the Checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from files import edit_json
from gemma_inspect import checks, lint as lint_module, load
from gemma_inspect.checkpoint import Checkpoint
from gemma_inspect.cli import main
from gemma_inspect.families import FAMILY_TABLE
from gemma_inspect.findings import check, lint_rule
from gemma_inspect.formats import hf_lint
from gemma_inspect.parity import default_tokens
from gemma_inspect.runtimes import load_model
from gemma_inspect.spec import card
from gemma_inspect.tiny import random_weights, tiny_spec, write_hf
from gemma_inspect.verify import CHECK_NAMES, architecture_checks, lint, observe

CONFIG_RULES = ["lint:exact_gelu", "lint:activation_key", "lint:softcaps", "lint:query_pre_attn_scalar",
                "lint:float16"]


@pytest.fixture(scope="module")
def broken_gemma2(tiny_models, tmp_path_factory):
    """A Gemma 2 HF checkpoint whose config says hidden_activation = "gelu" and has lost its attention soft cap."""
    spec = tiny_spec("gemma2", activation="gelu", attention_logit_softcap=None)
    out = write_hf(spec, random_weights(spec, 0), str(tmp_path_factory.mktemp("lint") / "gemma2"), tiny_models.spm)
    return out


def _summary(*args, columns="100"):
    return CliRunner().invoke(main, ["summary", *args], env={"COLUMNS": columns})


def test_summary_json_lists_the_config_lint(broken_gemma2):
    res = _summary(broken_gemma2, "--json")
    assert res.exit_code == 0, res.output
    found = json.loads(res.stdout)["lint"]
    assert [r["name"] for r in found] == CONFIG_RULES
    by = {r["name"]: r for r in found}
    assert by["lint:exact_gelu"] == {
        "name": "lint:exact_gelu", "status": "fail", "expected": "gelu_pytorch_tanh",
        "observed": "hidden_act = 'gelu', hidden_activation = 'gelu'",
        "evidence": "hidden_activation = 'gelu' is the exact erf GELU to transformers and every other runtime; "
                    "Gemma was trained with the tanh approximation (write gelu_pytorch_tanh)"}
    assert by["lint:softcaps"] == {
        "name": "lint:softcaps", "status": "fail", "expected": {"attention": 50.0, "final": 30.0},
        "observed": {"attention": None, "final": 30.0},
        "evidence": "attention cap missing: Gemma 2 caps attention logits at 50 and final logits at 30 "
                    "(attn_logit_softcapping / final_logit_softcapping); without them outputs differ"}
    assert [by[n]["status"] for n in ("lint:activation_key", "lint:query_pre_attn_scalar", "lint:float16")] == \
           ["pass", "pass", "pass"]
    # the same records verify's lint produces for these rules
    full = {r["name"]: r for r in lint(load(broken_gemma2))}
    assert all(full[n] == by[n] for n in CONFIG_RULES)


def test_summary_text_shows_a_lint_section_only_with_findings(broken_gemma2, tiny_models):
    res = _summary(broken_gemma2)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    start = lines.index("Lint: 2 fail of 5 config rules (verify runs every rule)")
    assert lines[start:] == [
        "Lint: 2 fail of 5 config rules (verify runs every rule)",
        "  fail lint:exact_gelu hidden_activation = 'gelu' is the exact erf GELU to transformers and every",
        "                       other runtime; Gemma was trained with the tanh approximation (write",
        "                       gelu_pytorch_tanh)",
        "  fail lint:softcaps   attention cap missing: Gemma 2 caps attention logits at 50 and final logits",
        "                       at 30 (attn_logit_softcapping / final_logit_softcapping); without them",
        "                       outputs differ",
    ]
    assert lines[start - 1].startswith("Tokenizer: sentencepiece")  # after the tokenizer line, the last one
    healthy = _summary(tiny_models.get("gemma2", "hf"))
    assert healthy.exit_code == 0 and "Lint" not in healthy.stdout


def test_summary_of_a_card_and_of_a_healthy_checkpoint(tiny_models):
    res = _summary("gemma3-4b", "--json")
    assert json.loads(res.stdout)["lint"] == []
    res = _summary(tiny_models.get("gemma3", "keras"), "--json")
    assert [(r["name"], r["status"]) for r in json.loads(res.stdout)["lint"]] == [
        ("lint:query_pre_attn_scalar", "pass"), ("lint:rope_scaling", "pass"), ("lint:float16", "pass")]


# ============================================================================= the check registry
def test_check_registry_is_the_verify_order():
    assert CHECK_NAMES == tuple(checks.CHECKS) == (
        "norm_placement", "norm_offset", "embedding_scale", "tied_embeddings", "activation", "attention_kind",
        "logit_softcap", "attention_softcap", "qk_norm", "sliding_window", "query_scale", "attention_mask",
        "embedding_head")


@pytest.fixture(scope="module")
def gemma3_observed(tiny_models):
    ckpt = load(tiny_models.get("gemma3", "hf"))
    model = load_model(ckpt, "reference", "cpu", "float32")
    try:
        obs = observe(model, default_tokens(ckpt))
    finally:
        model.close()
    return ckpt, obs


def test_observation_is_typed(gemma3_observed):
    _, obs = gemma3_observed
    assert (obs.runtime, obs.dtype, obs.tokens, obs.num_layers) == ("reference", "float32", 32, 7)
    assert sorted(obs.scores) == list(range(7)) and obs.scores[0].heads == 4
    assert [max(obs.scores[i].keys_last) for i in range(7)] == [6, 6, 6, 6, 6, 32, 6]
    assert obs.embedding.d == 64 and tuple(obs.embedding.x.shape) == (32, 64)
    assert sorted(obs.qkv) == ["k", "k_norm", "q", "q_norm", "v"]
    assert obs.activation is not None and obs.tied.shares_storage is True and obs.tied.via_output is None


def test_a_registered_check_joins_verify(gemma3_observed, monkeypatch):
    ckpt, obs = gemma3_observed

    def heads(ctx: checks.Context) -> dict:
        seen = ctx.obs.scores[0].heads
        return check("score_maps", "pass" if seen == ctx.spec.num_attention_heads else "fail",
                     ctx.spec.num_attention_heads, seen, "score maps of block 0")

    monkeypatch.setitem(checks.CHECKS, "score_maps", heads)
    records = architecture_checks(ckpt, obs)
    assert [r["name"] for r in records] == [*CHECK_NAMES, "score_maps"]
    assert records[-1] == {"name": "score_maps", "status": "pass", "expected": 4, "observed": 4,
                           "evidence": "score maps of block 0"}


def test_checks_read_the_family_row(gemma3_observed, monkeypatch):
    """The expectations are the row's: a Gemma 3 row claiming no QK-norm and a Gemma 1-style query scale turns
    the same observation into failures, with no code changed."""
    ckpt, obs = gemma3_observed
    row = FAMILY_TABLE["gemma3"]
    assert {r["name"]: r["status"] for r in architecture_checks(ckpt, obs)}["qk_norm"] == "pass"
    monkeypatch.setitem(FAMILY_TABLE, "gemma3", dataclasses.replace(
        row, rules=dataclasses.replace(row.rules, qk_norm=False, query_scalar="head_dim")))
    c = {r["name"]: r for r in architecture_checks(ckpt, obs)}
    assert (c["qk_norm"]["status"], c["qk_norm"]["expected"], c["qk_norm"]["observed"]) == ("fail", False, True)
    # tiny Gemma 3: head_dim 16 = query_pre_attn_scalar, so the scale still passes, now explained by the row
    assert c["query_scale"]["status"] == "pass"
    assert c["query_scale"]["evidence"].endswith("Gemma 3 (text) scales queries by head_dim^-0.5")


# ============================================================================= the lint registry
def _spec_ckpt(spec, fmt="hf", **kw) -> Checkpoint:
    return Checkpoint(spec=spec, tensors={}, source="x", format=fmt, **kw)


def test_format_rules_are_registered_from_their_module():
    for rule in hf_lint.lint_rules:
        assert lint_module.LINT_RULES[rule.name] is rule and rule.formats == ("hf",)
    assert {n: r.reads for n, r in lint_module.LINT_RULES.items() if r.reads != "config"} == {
        "lint:tied_lm_head": "values", "lint:norm_weights": "values", "lint:nonfinite": "values",
        "lint:layer_scalar": "values", "lint:vocab_size": "tokenizer", "lint:special_ids": "tokenizer",
        "lint:end_of_turn": "tokenizer"}


def test_a_registered_lint_rule_runs_in_its_order_on_its_format(monkeypatch):
    @lint_rule("toy", 55, formats=("gguf",))
    def toy(ckpt):
        return check("lint:toy", "warn", None, ckpt.spec.num_layers, "a toy rule")

    monkeypatch.setitem(lint_module.LINT_RULES, toy.name, toy)
    spec = card("gemma2-9b")
    on_gguf = [r["name"] for r in lint(_spec_ckpt(spec, "gguf"))]
    assert on_gguf == ["lint:softcaps", "lint:toy", "lint:query_pre_attn_scalar", "lint:vocab_size",
                       "lint:special_ids", "lint:float16", "lint:nonfinite"]
    assert "lint:toy" not in [r["name"] for r in lint(_spec_ckpt(spec, "hf"))]
    assert [r["name"] for r in lint(_spec_ckpt(spec, "gguf"), reads=("config",))] == \
           ["lint:softcaps", "lint:toy", "lint:query_pre_attn_scalar", "lint:float16"]


def test_lint_imports_no_torch():
    code = ("import sys\nfrom gemma_inspect.checkpoint import Checkpoint\nfrom gemma_inspect.lint import lint\n"
            "from gemma_inspect.spec import card\n"
            "print(len(lint(Checkpoint(spec=card('gemma3-4b'), tensors={}, source='x', format='hf'))))\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'keras', 'transformers'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.splitlines() == ["9", "[]"], proc.stderr


# ============================================================================= the set-aside lm_head
def test_set_aside_lm_head_stays_on_the_checkpoint(tiny_models, tmp_path, monkeypatch):
    """An lm_head.weight stored under tie_word_embeddings = true is set aside by the reader and kept as a
    TensorRef: the lint compares it with the embedding without reading any safetensors header again."""
    spec = tiny_spec("gemma", tied_embeddings=False)
    path = write_hf(spec, random_weights(spec, 0), str(tmp_path / "untied"), tiny_models.spm)
    edit_json(os.path.join(path, "config.json"), lambda cfg: cfg.update(tie_word_embeddings=True))
    ckpt = load(path)
    assert "lm_head.weight" not in ckpt.tensors
    ref = ckpt.lm_head_set_aside
    assert (ref.name, ref.shape, ref.origin) == ("lm_head.weight", (384, 64),
                                                 os.path.join(path, "model.safetensors") + ":lm_head.weight")
    from gemma_inspect.formats import safetensors_io

    def no_header(*_a, **_k):
        raise AssertionError("a safetensors header was read again")

    monkeypatch.setattr(safetensors_io, "read_header", no_header)
    c = {r["name"]: r for r in lint(ckpt)}
    assert (c["lint:tied_lm_head"]["status"], c["lint:tied_lm_head"]["observed"]) == \
           ("fail", "tied, lm_head.weight different from the embedding")
    assert c["lint:tied_lm_head"]["evidence"].startswith(ref.origin + " differs from the embedding")
