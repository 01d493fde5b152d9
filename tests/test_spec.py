"""GemmaSpec: built-in cards against published parameter counts, family rules, validation messages."""

from __future__ import annotations

import math

import pytest

from gemma_inspect.errors import SpecError
from gemma_inspect.spec import (CARD_NAMES, FULL, SLIDING, GemmaSpec, card, format_count, gemma3_layer_types,
                                make_spec, round_to_dtype)

# Published totals (tied embedding counted once). Gemma 1 and the peers from GEMMA_FACTS.md; Gemma 2 and
# Gemma 3 1B as Hugging Face reports them for the released checkpoints.
PUBLISHED = {
    "gemma-2b": 2_506_172_416,
    "gemma-7b": 8_537_680_896,
    "gemma2-2b": 2_614_341_888,
    "gemma2-9b": 9_241_705_984,
    "gemma2-27b": 27_227_128_320,
    "gemma3-270m": 268_098_176,
    "gemma3-1b": 999_885_952,
    "vaultgemma-1b": 1_038_741_120,  # keras-hub's vault_gemma_1b_en metadata; transformers' count on meta too
    # Gemma 4 text decoders: transformers 5.24's num_parameters on the meta device (tests/test_gemma4.py builds them)
    "gemma4-e2b": 4_628_569_344,
    "gemma4-e4b": 7_463_013_376,
    "gemma4-26b-a4b": 25_233_141_760,
    "gemma4-31b": 30_697_345_280,
    # Gemma 3n text decoders: transformers 5.24's num_parameters on the meta device (tests/test_gemma3n.py builds them)
    "gemma3n-e2b": 4_435_182_688,
    "gemma3n-e4b": 6_835_235_568,
    "llama2-7b": 6_738_415_616,
    "olmo-7b": 6_888_095_744,
    "mistral-7b": 7_241_732_096,
}

# Gemma 3 4B/12B/27B are published as multimodal models; their text decoders are counted here from the
# published text_config values (V, d, layers, H, K, D, F), with a formula written independently of spec.py.
GEMMA3_TEXT_CONFIGS = {
    "gemma3-4b": (262208, 2560, 34, 8, 4, 256, 10240),
    "gemma3-12b": (262208, 3840, 48, 16, 8, 256, 15360),
    "gemma3-27b": (262208, 5376, 62, 32, 16, 128, 21504),
}


def gemma3_text_decoder_params(v: int, d: int, layers: int, h: int, k: int, hd: int, f: int) -> int:
    q_and_o = 2 * (h * hd) * d  # q_proj [H*D, d] and o_proj [d, H*D]
    k_and_v = 2 * (k * hd) * d  # k_proj, v_proj [K*D, d]
    mlp = 3 * f * d  # gate, up [F, d]; down [d, F]
    norms = 4 * d + 2 * hd  # input, post-attention, pre-FFN, post-FFN norms; q_norm and k_norm over D
    return v * d + layers * (q_and_o + k_and_v + mlp + norms) + d  # + final norm; output tied


# EmbeddingGemma 300M: the transformer alone (its dense heads, 4,718,592 more, are counted apart), as transformers'
# Gemma3TextModel counts the published config (tests/test_embeddinggemma.py builds it on the meta device).
ENCODERS = {"embeddinggemma-300m": 302_863_104}


def expected_total(name: str) -> int:
    if name in ENCODERS:
        return ENCODERS[name]
    if name in PUBLISHED:
        return PUBLISHED[name]
    return gemma3_text_decoder_params(*GEMMA3_TEXT_CONFIGS[name])


def test_every_card_has_an_expected_count():
    assert set(CARD_NAMES) == set(PUBLISHED) | set(GEMMA3_TEXT_CONFIGS) | set(ENCODERS)
    assert len(CARD_NAMES) == 21


@pytest.mark.parametrize("name", CARD_NAMES)
def test_card_parameter_count_is_the_published_one(name):
    spec = card(name)
    assert spec.num_parameters == expected_total(name)
    b = spec.parameter_breakdown()
    assert b["total"] == b["embedding"] + b["attention"] + b["feedforward"] + b["norms"] + b["output"]


def test_gemma3_text_counts_are_the_ones_we_expect():
    # Pin the independently computed numbers, so a wrong formula in this file cannot hide.
    assert gemma3_text_decoder_params(*GEMMA3_TEXT_CONFIGS["gemma3-4b"]) == 3_880_263_168
    assert gemma3_text_decoder_params(*GEMMA3_TEXT_CONFIGS["gemma3-12b"]) == 11_766_034_176
    assert gemma3_text_decoder_params(*GEMMA3_TEXT_CONFIGS["gemma3-27b"]) == 27_009_346_304


def test_gemma_7b_tied_and_untied():
    b = card("gemma-7b").parameter_breakdown()
    assert b["total"] == 8_537_680_896
    assert b["total_if_untied"] == 9_324_112_896
    assert b["total_if_untied"] - b["total"] == 256000 * 3072 == 786_432_000
    assert b["output"] == 0


def test_gemma3_270m_embedding_share():
    b = card("gemma3-270m").parameter_breakdown()
    assert b["total"] == 268_098_176
    assert b["embedding"] == 167_772_160


@pytest.mark.parametrize("name", ["llama2-7b", "olmo-7b", "mistral-7b"])
def test_peers_are_untied_swiglu_without_gemma_quirks(name):
    s = card(name)
    assert s.tied_embeddings is False
    b = s.parameter_breakdown()
    assert b["output"] == b["embedding"] == s.vocab_size * s.hidden_size
    assert b["total_if_untied"] == b["total"]
    assert s.activation == "silu" and s.ffn_kind == "SwiGLU"
    assert s.norm_offset == 0
    assert s.embedding_scale == 1.0
    assert s.norm_placement == "pre"


def test_olmo_norms_have_no_weights():
    s = card("olmo-7b")
    assert s.norm_kind == "layernorm_nonparametric"
    assert s.parameter_breakdown()["norms"] == 0


@pytest.mark.parametrize("name,kind,kv", [
    ("gemma-2b", "MQA", 1), ("gemma-7b", "MHA", 16), ("gemma2-2b", "GQA", 4), ("gemma2-9b", "GQA", 8),
    ("gemma2-27b", "GQA", 16), ("gemma3-270m", "MQA", 1), ("gemma3-1b", "MQA", 1), ("gemma3-27b", "GQA", 16),
    ("llama2-7b", "MHA", 32), ("mistral-7b", "GQA", 8),
])
def test_attention_kind(name, kind, kv):
    s = card(name)
    assert s.attention_kind == kind
    assert s.num_key_value_heads == kv


@pytest.mark.parametrize("name", ["gemma2-2b", "gemma2-9b", "gemma2-27b"])
def test_gemma2_slides_on_even_layers(name):
    s = card(name)
    assert s.sliding_layers == tuple(range(0, s.num_layers, 2))
    assert s.global_layers == tuple(range(1, s.num_layers, 2))
    assert s.sliding_window == 4096
    assert s.attention_logit_softcap == 50.0 and s.final_logit_softcap == 30.0


@pytest.mark.parametrize("name,window", [("gemma3-270m", 512), ("gemma3-1b", 512), ("gemma3-4b", 1024),
                                         ("gemma3-12b", 1024), ("gemma3-27b", 1024)])
def test_gemma3_global_every_sixth_layer(name, window):
    s = card(name)
    assert s.global_layers == tuple(i for i in range(s.num_layers) if (i + 1) % 6 == 0)
    assert s.global_layers[:3] == (5, 11, 17)
    assert len(s.sliding_layers) + len(s.global_layers) == s.num_layers
    assert s.sliding_window == window
    assert s.qk_norm and s.attention_logit_softcap is None and s.final_logit_softcap is None
    assert (s.local_rope_theta, s.rope_theta) == (10_000.0, 1_000_000.0)


def test_gemma3_rope_scaling_only_on_4b_and_up():
    assert card("gemma3-1b").rope_scaling_factor == 1.0
    for name in ("gemma3-4b", "gemma3-12b", "gemma3-27b"):
        assert card(name).rope_scaling_factor == 8.0
        assert card(name).rope_local_scaling_factor == 1.0


def test_gemma1_has_every_layer_global_and_no_caps():
    s = card("gemma-7b")
    assert s.layer_types == (FULL,) * 28
    assert s.sliding_window is None
    assert s.norm_placement == "pre" and s.norm_offset == 1 and s.tied_embeddings


@pytest.mark.parametrize("name,exact,bf16", [
    ("gemma-7b", math.sqrt(3072), 55.5),  # 55.4256 -> 55.5
    ("gemma-2b", math.sqrt(2048), 45.25),  # 45.2548 -> 45.25
    ("gemma3-270m", math.sqrt(640), 25.25),  # 25.2982 -> 25.25
])
def test_embedding_scale_is_rounded_in_bfloat16(name, exact, bf16):
    s = card(name)
    assert s.dtype == "bfloat16"
    assert s.embedding_scale_exact == exact
    assert s.embedding_scale == bf16
    assert s.embedding_scale_in("bfloat16") == bf16
    assert s.embedding_scale_in("float32") == pytest.approx(exact, rel=1e-7)
    assert s.embedding_scale_in("float32") != bf16


def test_round_to_dtype():
    assert round_to_dtype(math.sqrt(3072), "bfloat16") == 55.5
    assert round_to_dtype(math.sqrt(2048), "float16") == 45.25
    assert round_to_dtype(0.1, "float64") == 0.1


def test_bfloat16_rounding_is_ml_dtypes_cast():
    """round_to_dtype's bfloat16 (bit arithmetic, so that `summary` need not import ml_dtypes) equals ml_dtypes' cast
    on every hidden size up to 16,384 (sqrt(d)), on halfway cases (ties to even) and on random values."""
    import ml_dtypes
    import numpy as np

    rng = np.random.default_rng(0)
    values = [math.sqrt(d) for d in range(1, 16385)] + rng.standard_normal(2000).tolist() \
        + (rng.standard_normal(2000) * 1e4).tolist()
    halfway = np.arange(0x3F800000, 0x3F800000 + 0x80000 * 4, 0x8000, dtype=np.uint32).view(np.float32)
    values += [float(v) for v in halfway]  # exact ties (low 16 bits 0x8000) and exact bfloat16 values
    for v in values:
        assert round_to_dtype(v, "bfloat16") == float(np.asarray(v, dtype=ml_dtypes.bfloat16)), v


@pytest.mark.parametrize("name,scalar", [("gemma2-27b", 144), ("gemma3-27b", 168), ("gemma2-9b", 256),
                                         ("gemma-7b", 256)])
def test_query_scale(name, scalar):
    s = card(name)
    assert s.query_pre_attn_scalar == scalar
    assert s.query_scale == scalar ** -0.5


def test_kv_cache_bytes_per_token():
    # gemma-2b: 2 (K and V) x 18 layers x 1 head x 256 x 2 bytes
    assert card("gemma-2b").kv_cache_bytes_per_token() == 18_432
    assert card("gemma-7b").kv_cache_bytes_per_token() == 2 * 28 * 16 * 256 * 2


def test_card_lookup_is_case_insensitive_and_rejects_unknown_names():
    assert card("Gemma-7B") == card("gemma-7b")
    with pytest.raises(KeyError):
        card("gemma-8b")


def test_card_with_overrides_is_that_shape_with_the_family_layout():
    """A card's shapes with fewer layers (what the benchmarks build): the layer layout follows the new depth,
    and the result no longer claims the card's name."""
    small = card("gemma2-9b", num_layers=4, dtype="float32")
    assert (small.name, small.num_layers, small.hidden_size, small.dtype) == (None, 4, 3584, "float32")
    assert small.layer_types == (SLIDING, FULL, SLIDING, FULL)
    assert card("gemma3-270m", num_layers=7).layer_types == (SLIDING,) * 5 + (FULL, SLIDING)
    assert card("gemma-2b").name == "gemma-2b"


def test_format_count():
    assert format_count(8_537_680_896) == "8.54B"
    assert format_count(268_098_176) == "268.1M"
    assert format_count(999) == "999"


# --------------------------------------------------------------------------- validation
BASE = dict(family="gemma", vocab_size=16, hidden_size=8, num_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=2, intermediate_size=12)


def test_heads_that_do_not_divide():
    with pytest.raises(SpecError) as e:
        GemmaSpec(**{**BASE, "num_attention_heads": 3})
    assert str(e.value) == "num_attention_heads 3 is not a multiple of num_key_value_heads 2"


def test_sliding_layers_without_a_window():
    with pytest.raises(SpecError) as e:
        GemmaSpec(**{**BASE, "layer_types": (SLIDING, FULL)})
    assert str(e.value) == "sliding-window layers are declared but sliding_window is not set"
    with pytest.raises(SpecError, match="^sliding-window layers are declared but sliding_window is not set$"):
        make_spec("gemma2", **{**{k: v for k, v in BASE.items() if k != "family"}, "sliding_window": None})


def test_layer_types_of_the_wrong_length():
    with pytest.raises(SpecError) as e:
        GemmaSpec(**{**BASE, "layer_types": (FULL, FULL, FULL)})
    assert str(e.value) == "layer_types has 3 entries for 2 layers"


def test_several_problems_are_reported_together():
    with pytest.raises(SpecError) as e:
        GemmaSpec(**{**BASE, "hidden_size": 0, "family": "gpt"})
    assert str(e.value) == ("unknown family 'gpt' (known: gemma, gemma2, gemma3, vaultgemma, embeddinggemma, gemma4, "
                            "gemma3n, llama, olmo, mistral); "
                            "hidden_size must be a positive integer, got 0")


def test_unknown_layer_type_and_bad_window():
    with pytest.raises(SpecError) as e:
        GemmaSpec(**{**BASE, "layer_types": (FULL, "local"), "sliding_window": -1})
    assert str(e.value) == "unknown layer types ['local']; sliding_window must be positive, got -1"


def test_nonparametric_norm_cannot_have_an_offset():
    with pytest.raises(SpecError) as e:
        GemmaSpec(**{**BASE, "norm_kind": "layernorm_nonparametric"})
    assert str(e.value) == "a non-parametric LayerNorm has no weights to offset or to use for QK-norm"


def test_defaults_and_replace():
    s = GemmaSpec(**BASE)
    assert s.layer_types == (FULL, FULL)
    assert s.query_pre_attn_scalar == 2
    assert s.replace(num_key_value_heads=4).attention_kind == "MHA"
    with pytest.raises(SpecError):
        s.replace(num_key_value_heads=3)


def test_gemma3_layer_types_pattern():
    assert gemma3_layer_types(7) == (SLIDING,) * 5 + (FULL, SLIDING)


def test_values_of_the_wrong_type_are_problems_not_crashes():
    with pytest.raises(SpecError) as e:
        GemmaSpec(**{**BASE, "rms_norm_eps": None, "final_logit_softcap": "30", "sliding_window": "4096"})
    assert str(e.value) == ("sliding_window must be positive, got 4096; final_logit_softcap must be positive or "
                            "absent, got 30; rms_norm_eps must be positive, got None")
