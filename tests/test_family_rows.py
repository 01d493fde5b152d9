"""Adding a family means adding rows: a test-only toy family, defined as one row of families.FAMILY_TABLE and
nothing else, goes through `summary`, `convert` and the reference runtime without a change anywhere else.

The toy is a Gemma-3-like decoder with a layout no real family has (two local layers to one global), a final soft
cap of 15, its own RoPE base and its own HF identifiers. (No attention soft cap: transformers 5.24's Gemma 3 reads
attn_logit_softcapping from its config but never applies it, so it could not be the oracle for one.) Its logits from the reference
runtime are checked against transformers running the same weights as an explicit gemma3_text config, which
can express every one of those settings: the row, not a branch somewhere, is what made the toy compute that.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gemma_inspect import families
from gemma_inspect.checkpoint import Checkpoint, TensorRef, expected_tensors
from gemma_inspect.cli import main
from gemma_inspect.families import FULL, SLIDING, Family, FamilyRules, HFIds
from gemma_inspect.spec import make_spec
from gemma_inspect.tiny import TINY_VOCAB, random_weights

TOY = Family(
    "toy", "Toy Gemma (test-only)", True,
    FamilyRules("pre+post", 1, True, "gelu_tanh", True, True, None, 15.0),
    layer_pattern=(SLIDING, SLIDING, FULL),
    defaults=dict(sliding_window=5, rope_theta=100_000.0, rope_local_theta=10_000.0, max_position_embeddings=4096),
    hf=HFIds("toy_gemma_text", "ToyGemmaForCausalLM", "hidden_activation",
             dict(families.FAMILY_TABLE["gemma3"].hf.defaults), rope="per_layer_type"),
)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(families.FAMILY_TABLE, "toy", TOY)
    spec = make_spec("toy", vocab_size=TINY_VOCAB, hidden_size=64, num_layers=5, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, intermediate_size=96, query_pre_attn_scalar=16,
                     dtype="float32")
    return spec, random_weights(spec, seed=7)


def _checkpoint(spec, weights, source):
    refs = {n: TensorRef(name=n, shape=a.shape, dtype="float32", loader=lambda a=a: a, nbytes=a.nbytes,
                         origin=f"toy:{n}") for n, a in weights.items()}
    return Checkpoint(spec=spec, tensors=refs, source=str(source), format="hf")


def test_the_row_is_the_spec(toy):
    spec, _ = toy
    assert spec.layer_types == (SLIDING, SLIDING, FULL, SLIDING, SLIDING)
    assert (spec.norm_placement, spec.qk_norm, spec.norm_offset) == ("pre+post", True, 1)
    assert (spec.attention_logit_softcap, spec.final_logit_softcap) == (None, 15.0)
    assert (spec.rope_theta, spec.local_rope_theta, spec.sliding_window) == (100_000.0, 10_000.0, 5)
    assert spec.title == "Toy Gemma (test-only)" and spec.is_gemma
    names = list(expected_tensors(spec))
    assert "model.layers.4.self_attn.k_norm.weight" in names and "lm_head.weight" not in names


def test_summary_convert_and_reference_runtime_handle_a_row_only_family(toy, tmp_path, capsys):
    from gemma_inspect import load
    from gemma_inspect.convert import convert
    from gemma_inspect.runtimes import run

    spec, weights = toy
    out = tmp_path / "toy-hf"
    convert(_checkpoint(spec, weights, tmp_path / "nowhere"), str(out), "hf")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "toy_gemma_text" and cfg["architectures"] == ["ToyGemmaForCausalLM"]
    assert cfg["layer_types"] == list(spec.layer_types)
    assert (cfg["attn_logit_softcapping"], cfg["final_logit_softcapping"]) == (None, 15.0)

    # summary reads it back through the row
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["summary", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["family"] == "toy"
    assert summary["architecture"]["layer_types"] == list(spec.layer_types)
    assert summary["architecture"]["final_logit_softcap"] == 15.0
    assert summary["architecture"]["rope_theta"] == 100_000.0
    assert summary["parameters"]["total"] == sum(a.size for a in weights.values())

    # convert HF -> HF in bfloat16 and back to float32: the float32 -> bf16 -> float32 values, bit for bit
    back = load(str(out))
    assert back.spec == spec.replace(name=None)
    for n, a in weights.items():
        assert np.array_equal(back.tensors[n].load(), a), n
    half = tmp_path / "toy-bf16"
    from gemma_inspect.tensorio import WriteOptions

    convert(str(out), str(half), "hf", WriteOptions(dtype="bfloat16"))
    import ml_dtypes

    reread = load(str(half))
    assert reread.spec.family == "toy" and reread.spec.dtype == "bfloat16"
    emb = "model.embed_tokens.weight"
    assert np.array_equal(np.asarray(reread.tensors[emb].load()),
                          weights[emb].astype(ml_dtypes.bfloat16))

    # the reference runtime computes what the row says: transformers, given the same weights as an explicit
    # gemma3_text config (which spells out every setting the row implies), gives the same logits.
    twin = tmp_path / "gemma3-twin"
    gemma3 = spec.replace(family="gemma3")
    convert(_checkpoint(gemma3, weights, tmp_path / "nowhere2"), str(twin), "hf")
    ids = np.random.default_rng(0).integers(4, TINY_VOCAB, size=(1, 14))  # longer than the window (5)
    ours = run(back, ids, runtime="reference", device="cpu", dtype="float32").logits
    theirs = run(load(str(twin)), ids, runtime="transformers", device="cpu", dtype="float32").logits
    diff = float((ours - theirs).abs().max())
    assert diff < 1e-4, diff
    # and the row's settings matter: the same weights under plain Gemma 3's row compute something else
    plain = run(load(str(twin)).__class__(spec=make_spec("gemma3", **{k: getattr(spec, k) for k in (
        "vocab_size", "hidden_size", "num_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "intermediate_size", "query_pre_attn_scalar", "dtype")}), tensors=back.tensors, source=str(out),
        format="hf"), ids, runtime="reference", device="cpu", dtype="float32").logits
    assert float((ours - plain).abs().max()) > 1e-2


def test_new_kinds_of_tensors_are_role_rows(monkeypatch):
    """A family with stacked expert weights and a per-layer embedding table (as Gemma 4 has) adds Role rows, a
    presence rule and a dimension: expected tensors, parameter counts and shape messages follow without code."""
    import dataclasses

    from gemma_inspect import roles
    from gemma_inspect.checkpoint import check_against_spec, describe_shape_source, parse_canonical
    from gemma_inspect.errors import InputError
    from gemma_inspect.spec import GemmaSpec

    @dataclasses.dataclass(frozen=True)
    class MoESpec(GemmaSpec):
        num_experts: int = 4
        expert_size: int = 24
        ple_size: int = 8

    monkeypatch.setitem(roles.PRESENCE, "moe", lambda s: getattr(s, "num_experts", 0) > 0)
    monkeypatch.setitem(roles.DIMENSIONS, "ple_width", (lambda s: s.num_layers * s.ple_size,
                                                        lambda s: f"num_layers={s.num_layers} x ple_size={s.ple_size}"))
    for row in (roles.Role("experts_gate_up", "model.layers.{i}.experts.gate_up_proj",
                           ("num_experts", "expert_size", "hidden_size"), "linear", "feedforward", "moe"),
                roles.Role("router", "model.layers.{i}.router.proj.weight", ("num_experts", "hidden_size"), "linear",
                           "feedforward", "moe"),
                roles.Role("ple", "model.embed_tokens_per_layer.weight", ("vocab_size", "ple_width"), "embedding",
                           "embedding", "moe")):
        monkeypatch.setitem(roles.ROLE_TABLE, row.key, row)
    base = make_spec("gemma3", vocab_size=32, hidden_size=16, num_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=8, intermediate_size=24, dtype="float32")
    spec = MoESpec(**{f.name: getattr(base, f.name) for f in dataclasses.fields(GemmaSpec)})
    expected = expected_tensors(spec)
    assert expected["model.layers.1.experts.gate_up_proj"] == (4, 24, 16)
    assert expected["model.layers.0.router.proj.weight"] == (4, 16)
    assert expected["model.embed_tokens_per_layer.weight"] == (32, 16)
    assert "experts_gate_up" in roles.LAYER_ROLES and "ple" not in roles.LAYER_ROLES
    assert parse_canonical("model.layers.1.experts.gate_up_proj") == ("experts_gate_up", 1)
    assert describe_shape_source(spec, "model.embed_tokens_per_layer.weight") == \
        "vocab_size=32, num_layers=2 x ple_size=8"
    counts = spec.parameter_breakdown()
    plain = base.parameter_breakdown()
    assert counts["feedforward"] - plain["feedforward"] == 2 * (4 * 24 * 16 + 4 * 16)
    assert counts["embedding"] - plain["embedding"] == 32 * 16
    assert counts["total"] == sum(int(np.prod(s)) for s in expected.values())
    # the shape check names the config values a wrong shape contradicts
    refs = {n: TensorRef(name=n, shape=s, dtype="float32", loader=lambda: None) for n, s in expected.items()}
    refs["model.layers.0.router.proj.weight"] = TensorRef(name="model.layers.0.router.proj.weight", shape=(3, 16),
                                                          dtype="float32", loader=lambda: None)
    with pytest.raises(InputError) as e:
        check_against_spec(spec, refs, "config.json", "model.safetensors")
    assert str(e.value) == ("model.safetensors: model.layers.0.router.proj.weight has shape [3, 16] but config.json "
                            "implies [4, 16] (num_experts=4, hidden_size=16)")
