"""GGUF tensor names come from the `gguf` package's own tables (llama.cpp's), through one role -> MODEL_TENSOR
row each; and what llama.cpp fills in per architecture comes from the family rows."""

from __future__ import annotations

import gguf
import pytest

from gemma_inspect.families import FAMILY_TABLE
from gemma_inspect.formats import gguf as G
from gemma_inspect.roles import GROUPS, NORM_ROLES, ROLE_TABLE, layer_roles, top_roles
from gemma_inspect.spec import make_spec
from gemma_inspect.tiny import TINY_SPECS, TINY_VOCAB, tiny_spec

GGUF_FAMILIES = [k for k, f in FAMILY_TABLE.items() if f.gguf is not None]
# the families gguf.py's own table names (a row with a mapping module has its own: tests/test_gemma3n_formats.py)
TABLE_FAMILIES = [k for k in GGUF_FAMILIES if FAMILY_TABLE[k].gguf.mapping is None]


def _model_arch(arch: str) -> gguf.MODEL_ARCH:
    (member,) = [a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch]
    return member


def test_every_family_with_a_gguf_arch_is_one_llama_cpp_knows():
    assert {"gemma", "gemma2", "gemma3"} <= set(GGUF_FAMILIES)
    assert _model_arch(FAMILY_TABLE["gemma3"].gguf.arch) == gguf.MODEL_ARCH.GEMMA3
    for family in GGUF_FAMILIES:
        _model_arch(FAMILY_TABLE[family].gguf.arch)  # exactly one MODEL_ARCH of that name


@pytest.mark.parametrize("family", TABLE_FAMILIES)
def test_every_role_the_family_uses_is_in_llama_cpps_table_for_its_arch(family):
    row = FAMILY_TABLE[family]
    if family in TINY_SPECS:
        spec = tiny_spec(family)
    else:  # a Gemma 3-shaped model of the family (EmbeddingGemma)
        fields = {k: v for k, v in TINY_SPECS["gemma3"].items() if k not in ("family", "rope_scaling_factor")}
        spec = make_spec(family, vocab_size=TINY_VOCAB, **fields)
    names_of_arch = {G.tensor_name_template(t) for t in gguf.MODEL_TENSORS[_model_arch(row.gguf.arch)]}
    used = top_roles(spec) + layer_roles(spec)
    assert set(used) <= set(G.ROLE_TENSORS)
    for role in used:
        assert G.GGUF_NAMES[role] in names_of_arch, (family, role)
    # the mapped roles are roles of the table, and no two share a name
    assert set(G.ROLE_TENSORS) <= set(ROLE_TABLE)
    assert len(set(G.GGUF_NAMES.values())) == len(G.GGUF_NAMES)


def test_names_are_derived_from_gguf_tables():
    assert G.GGUF_NAMES["q"] == gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ATTN_Q].replace("{bid}", "{i}") + ".weight"
    assert G.gguf_name("post_ffn_norm", 7) == "blk.7.post_ffw_norm.weight"
    assert G.gguf_name("lm_head") == "output.weight"


def test_quantization_groups_come_from_the_role_table():
    assert [g for g, _ in G.QUANT_GROUPS] == list(GROUPS) == ["embedding", "attention", "feedforward", "norms",
                                                             "output"]
    groups = dict(G.QUANT_GROUPS)
    assert groups == {"embedding": {"embed"}, "attention": {"q", "k", "v", "o"},
                      "feedforward": {"gate", "up", "down"}, "norms": set(NORM_ROLES) & set(G.ROLE_TENSOR_MEMBERS),
                      "output": {"lm_head"}}
    assert groups["norms"] == {"final_norm", "attn_norm", "post_attn_norm", "ffn_norm", "post_ffn_norm", "q_norm",
                               "k_norm"}


def test_llama_cpp_norm_convention_both_ways():
    import numpy as np

    w = np.array([-0.5, 0.0, 0.25, np.nan], dtype=np.float32)
    stored = G.to_llama_cpp_norm(w)
    np.testing.assert_array_equal(stored[:3], np.array([0.5, 1.0, 1.25], dtype=np.float32))
    assert stored.dtype == np.float32 and np.isnan(stored[3])
    np.testing.assert_array_equal(G.from_llama_cpp_norm(stored)[:3], w[:3])


def test_llama_cpp_values_follow_the_rows():
    assert G.llama_cpp_layer_types("gemma", 3) == ("full_attention",) * 3
    assert G.llama_cpp_layer_types("gemma2", 3) == ("sliding_attention", "full_attention", "sliding_attention")
    assert G.llama_cpp_layer_types("gemma3", 6) == ("sliding_attention",) * 5 + ("full_attention",)
    for family in GGUF_FAMILIES:
        big = FAMILY_TABLE[family].gguf.big_model_layers
        if big is not None:
            assert G.llama_cpp_query_scalar(family, big, 4608, 32, 128) == (
                144, f"{big} layers mark the 27B model, which scales queries by hidden_size/num_heads = 4608/32")
        assert G.llama_cpp_query_scalar(family, 5, 4608, 32, 128) == (128, "head_dim")
