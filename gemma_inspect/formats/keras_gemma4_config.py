"""keras-hub's Gemma4Backbone config.json <-> the HF `gemma4_text` config it stands for (formats/keras_gemma4.py reads
and writes the weights): the keys both sides share, keras-hub's defaults and key order, and what a Keras config
cannot say (keras_problems)."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedError
from .common import show
from .keras_preset import backbone_fields

SLIDING, FULL = "sliding_attention", "full_attention"
MODULE = "keras_hub.src.models.gemma4.gemma4_backbone"
BACKBONE = "Gemma4Backbone"

# Keras config key -> HF text config key, for the values that are the same on both sides.
SAME_KEYS: dict[str, str] = {
    "vocabulary_size": "vocab_size",
    "num_layers": "num_hidden_layers",
    "num_query_heads": "num_attention_heads",
    "num_key_value_heads": "num_key_value_heads",
    "hidden_dim": "hidden_size",
    "intermediate_dim": "intermediate_size",
    "head_dim": "head_dim",
    "attention_logit_soft_cap": "attn_logit_softcapping",
    "final_logit_soft_cap": "final_logit_softcapping",
    "layer_types": "layer_types",
    "layer_norm_epsilon": "rms_norm_eps",
    "num_kv_shared_layers": "num_kv_shared_layers",
    "use_double_wide_mlp": "use_double_wide_mlp",
    "enable_moe_block": "enable_moe_block",
}
HF_GELU_TANH = "gelu_pytorch_tanh"
# Gemma4Backbone.get_config's key order (after name, trainable, dtype), for a config.json keras-hub would write
CONFIG_ORDER = ("vocabulary_size", "image_size", "num_layers", "num_query_heads", "num_key_value_heads", "hidden_dim",
                "intermediate_dim", "head_dim", "query_head_dim_normalize", "attention_logit_soft_cap",
                "final_logit_soft_cap", "use_sliding_window_attention", "sliding_window_size",
                "sliding_window_pattern", "layer_types", "global_head_dim", "local_rope_scaling_factor",
                "global_rope_scaling_factor", "vision_encoder", "audio_encoder", "num_audio_tokens_per_clip",
                "use_bidirectional_attention", "use_vision_bidirectional_attention", "layer_norm_epsilon",
                "dropout", "is_embedding_model", "pooling_intermediate_dim", "embedding_dim",
                "num_kv_shared_layers", "num_global_key_value_heads", "hidden_size_per_layer_input",
                "vocab_size_per_layer_input", "global_rope_wavelength", "local_rope_wavelength",
                "global_rope_partial_rotary_factor", "use_double_wide_mlp", "enable_moe_block", "num_experts",
                "expert_intermediate_dim", "num_experts_per_token")
# Gemma4Backbone's defaults for the keys a config may leave out
KERAS_DEFAULTS: dict[str, Any] = dict(
    query_head_dim_normalize=True, attention_logit_soft_cap=None, final_logit_soft_cap=None,
    use_sliding_window_attention=True, sliding_window_size=512, sliding_window_pattern=6, layer_types=None,
    global_head_dim=None, local_rope_scaling_factor=1.0, global_rope_scaling_factor=1.0, vision_encoder=None,
    audio_encoder=None, num_audio_tokens_per_clip=None, layer_norm_epsilon=1e-6, use_bidirectional_attention=False,
    use_vision_bidirectional_attention=False, dropout=0, is_embedding_model=False, pooling_intermediate_dim=None,
    embedding_dim=None, num_kv_shared_layers=0, num_global_key_value_heads=None, hidden_size_per_layer_input=0,
    vocab_size_per_layer_input=None, global_rope_wavelength=None, local_rope_wavelength=None,
    global_rope_partial_rotary_factor=1.0, use_double_wide_mlp=False, enable_moe_block=False, num_experts=None,
    expert_intermediate_dim=None, num_experts_per_token=8, image_size=None)
REQUIRED = ("vocabulary_size", "num_layers", "num_query_heads", "num_key_value_heads", "hidden_dim",
            "intermediate_dim", "head_dim")
# keras-hub's own RoPE bases when the config gives none (Gemma4Backbone: 1M on full layers, 10k on sliding ones)
KERAS_ROPE = {FULL: 1_000_000.0, SLIDING: 10_000.0}


def _rope(params: Any, layer_type: str) -> dict[str, Any]:
    p = params.get(layer_type) if isinstance(params, dict) else None
    return p if isinstance(p, dict) else {}


def keras_problems(hf: dict[str, Any]) -> list[str]:
    """What Gemma4Backbone cannot express about an HF Gemma 4 text config (empty: all of it)."""
    problems = []
    if hf.get("hidden_activation", HF_GELU_TANH) != HF_GELU_TANH:
        problems.append(f"activation {hf.get('hidden_activation')}: keras-hub's Gemma4Backbone runs the tanh GELU")
    if not hf.get("tie_word_embeddings", True):
        problems.append("an untied output matrix: keras-hub's Gemma4Backbone always ties it to the embedding")
    if hf.get("attention_bias"):
        problems.append("attention biases: keras-hub's Gemma 4 attention has none")
    params = hf.get("rope_parameters")
    for t in (FULL, SLIDING):
        p = _rope(params, t)
        if p.get("factor") not in (None, 1, 1.0) or p.get("rope_type", "default") not in ("default", "proportional"):
            problems.append(f"{t} RoPE {show(p)}: this converter writes RoPE scaling on neither layer type")
        if t == SLIDING and p.get("partial_rotary_factor") not in (None, 1, 1.0):
            problems.append("partial RoPE on sliding layers: keras-hub rotates a fraction of the head on full "
                            "layers only")
    if hf.get("rope_scaling"):
        problems.append(f"rope_scaling {show(hf['rope_scaling'])}: this converter writes no RoPE scaling")
    return problems


def _pattern(layer_types: list[str]) -> int:
    """The sliding_window_pattern keras-hub's importer writes (the distance between the first two full layers);
    Gemma4Backbone reads it only when layer_types is absent."""
    full = [i for i, t in enumerate(layer_types) if t == FULL]
    return full[1] - full[0] if len(full) > 1 else 6


def keras_config(hf: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The Gemma4Backbone config.json standing for an HF `gemma4_text` config (as formats/hf.config_dict writes
    it)."""
    types = list(hf["layer_types"])
    full, local = _rope(hf.get("rope_parameters"), FULL), _rope(hf.get("rope_parameters"), SLIDING)
    k_eq_v = bool(hf.get("attention_k_eq_v"))
    ple = hf.get("hidden_size_per_layer_input") or 0
    experts = bool(hf.get("enable_moe_block"))
    c: dict[str, Any] = {k: hf.get(h) for k, h in SAME_KEYS.items()}
    c.update(
        image_size=None,
        query_head_dim_normalize=True,  # Gemma4Backbone ignores it: queries are unscaled
        use_sliding_window_attention=SLIDING in types,
        sliding_window_size=hf.get("sliding_window") or 512,
        sliding_window_pattern=_pattern(types),
        global_head_dim=hf.get("global_head_dim") or hf["head_dim"],
        local_rope_scaling_factor=1.0, global_rope_scaling_factor=1.0,
        vision_encoder=None, audio_encoder=None, num_audio_tokens_per_clip=None,
        use_bidirectional_attention=False,
        use_vision_bidirectional_attention=hf.get("use_bidirectional_attention") == "vision",
        dropout=0, is_embedding_model=False, pooling_intermediate_dim=None, embedding_dim=None,
        # keras-hub builds K=V full layers exactly when this is set (see the module's docstring)
        num_global_key_value_heads=(hf.get("num_global_key_value_heads") or hf["num_key_value_heads"])
        if k_eq_v else None,
        hidden_size_per_layer_input=ple,
        vocab_size_per_layer_input=hf.get("vocab_size_per_layer_input") if ple else None,
        global_rope_wavelength=float(full.get("rope_theta", KERAS_ROPE[FULL])),
        local_rope_wavelength=float(local.get("rope_theta", KERAS_ROPE[SLIDING])),
        global_rope_partial_rotary_factor=float(full.get("partial_rotary_factor") or 1.0),
        num_experts=hf.get("num_experts") if experts else None,
        expert_intermediate_dim=hf.get("moe_intermediate_size") if experts else None,
        num_experts_per_token=(hf.get("top_k_experts") or 8) if experts else 8,
    )
    c["layer_types"] = types
    own = {"name": "gemma4_backbone", "trainable": True,
           "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": dtype},
                     "registered_name": None}}
    config = {**own, **{k: c[k] for k in CONFIG_ORDER}}
    return {"module": MODULE, "class_name": BACKBONE, "config": config, "registered_name": f"keras_hub>{BACKBONE}"}


def hf_config(cfg: dict[str, Any], path: str, restore: dict[str, Any] | None = None) -> tuple[dict[str, Any],
                                                                                              list[str]]:
    """The HF `gemma4_text` config a Gemma4Backbone config stands for, and notes. `restore`: what a Keras config
    cannot hold (context length, bos/eos/pad token ids), kept by our writer in metadata.json."""
    c = backbone_fields(cfg, path, BACKBONE, REQUIRED, KERAS_DEFAULTS)
    notes: list[str] = []
    if c.get("vision_encoder") or c.get("audio_encoder"):
        notes.append("multimodal Keras Gemma 4 preset: the vision and audio encoders are reported and ignored; only "
                     "the text decoder is read")
    if c.get("is_embedding_model") or c.get("use_bidirectional_attention"):
        raise UnsupportedError(f"{path}: a Gemma4Backbone embedding model (bidirectional attention, pooling heads) "
                               f"is no Gemma 4 causal LM this tool reads")
    for k in ("local_rope_scaling_factor", "global_rope_scaling_factor"):
        if c.get(k) not in (None, 1, 1.0):
            raise UnsupportedError(f"{path}: {k} {show(c[k])}: linear RoPE scaling is not part of any transformers "
                                   f"Gemma 4 config this tool writes")
    n = c["num_layers"]
    types = c.get("layer_types")
    if types is None:  # keras-hub: every pattern-th layer global
        p = c.get("sliding_window_pattern") or 6
        types = [FULL if i % p == p - 1 else SLIDING for i in range(n if isinstance(n, int) else 0)]
    if not c.get("use_sliding_window_attention") and SLIDING in types:
        raise UnsupportedError(f"{path}: use_sliding_window_attention=false with sliding layers: keras-hub then "
                               f"attends to the whole sequence on every layer, which no HF Gemma 4 config says")
    g_kv = c.get("num_global_key_value_heads")
    ple = c.get("hidden_size_per_layer_input") or 0
    experts = bool(c.get("enable_moe_block"))
    full = {"rope_theta": float(c.get("global_rope_wavelength") or KERAS_ROPE[FULL])}
    factor = c.get("global_rope_partial_rotary_factor")
    full = ({"rope_type": "proportional", "partial_rotary_factor": float(factor), **full}
            if factor not in (None, 1, 1.0) else {"rope_type": "default", **full})
    hf: dict[str, Any] = {"architectures": ["Gemma4ForCausalLM"], "model_type": "gemma4_text"}
    hf.update({h: c[k] for k, h in SAME_KEYS.items()})
    hf.update(
        layer_types=list(types),
        hidden_activation=HF_GELU_TANH,
        sliding_window=c.get("sliding_window_size") if SLIDING in types else None,
        global_head_dim=c.get("global_head_dim") or c["head_dim"],
        attention_k_eq_v=g_kv is not None,
        # as formats/hf.py writes it: full layers' K/V heads (without K=V, the sliding layers' count)
        num_global_key_value_heads=c["num_key_value_heads"] if g_kv is None else g_kv,
        hidden_size_per_layer_input=ple,
        vocab_size_per_layer_input=(c.get("vocab_size_per_layer_input") or c["vocabulary_size"]) if ple else None,
        num_experts=c.get("num_experts") if experts else None,
        top_k_experts=c.get("num_experts_per_token") if experts else None,
        moe_intermediate_size=c.get("expert_intermediate_dim") if experts else None,
        rope_parameters={FULL: full,
                         SLIDING: {"rope_type": "default",
                                   "rope_theta": float(c.get("local_rope_wavelength") or KERAS_ROPE[SLIDING])}},
        use_bidirectional_attention="vision" if c.get("use_vision_bidirectional_attention") else None,
        attention_bias=False,
        tie_word_embeddings=True,  # keras-hub's token_embedding(reverse=True) is the output matrix
        bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )
    policy = c.get("dtype")
    if isinstance(policy, dict):
        policy = (policy.get("config") or {}).get("name")
    if isinstance(policy, str):
        hf["dtype"] = policy[len("mixed_"):] if policy.startswith("mixed_") else policy
    restore = dict(restore or {})
    if "max_position_embeddings" not in restore:
        from ..families import family as family_row

        restore["max_position_embeddings"] = family_row("gemma4").defaults["max_position_embeddings"]
        notes.append(f"max_position_embeddings is not stored in a Keras config; assuming "
                     f"{restore['max_position_embeddings']}")
    hf.update(restore)
    return hf, notes
