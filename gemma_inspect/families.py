"""The family table: one row per model family, holding everything the rest of the package knows about it.

A row says what the family's reference implementation computes (`FamilyRules`), how its layers alternate
between sliding-window and global attention (`layer_pattern`, one period of the layout), the defaults a spec
of the family starts from, and how each format spells the family (HF model_type and architecture, keras-hub
backbone and decoder-block classes, GGUF architecture with llama.cpp's implicit values, gemma_pytorch's
marker). Readers, writers, `verify` and the cards look things up here instead of branching on a family's name,
so a new family is a new row (plus, where the computation differs, a runtime module).

This module is a leaf: it imports nothing from the package.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SLIDING = "sliding_attention"
FULL = "full_attention"


@dataclass(frozen=True)
class FamilyRules:
    """What a family's reference implementation does; `verify` compares observations against these."""

    norm_placement: str  # "pre" (x += f(norm(x))) or "pre+post" (x += post_norm(f(pre_norm(x))))
    norm_offset: int  # 1: the layer applies (1 + w) to a zero-centred stored w
    scale_embeddings: bool  # E[tok] * sqrt(d), the factor rounded to the model dtype
    activation: str
    tied_embeddings: bool
    qk_norm: bool
    attention_logit_softcap: float | None
    final_logit_softcap: float | None
    # What queries are scaled by (^-0.5): "head_dim", or the config's "query_pre_attn_scalar" (which differs from
    # head_dim on some shapes, e.g. Gemma 2 27B's d/H = 144).
    query_scalar: str = "query_pre_attn_scalar"
    float16_overflows: bool = False  # activations leave float16's range (inf/NaN): run in bfloat16 or float32
    # (hidden size from which, factor, who): the published sizes from this hidden size on scale global-layer RoPE
    # linearly by `factor` (Gemma 3 4B+: 8); a shape with no card of its own is judged by this.
    rope_scaling_from: tuple[int, float, str] | None = None
    # Which positions a token attends to: "causal" (itself and earlier ones) or "bidirectional" (every position;
    # on sliding layers every one within the window on either side: an encoder such as EmbeddingGemma).
    attention_mask: str = "causal"
    # Whether the model ends in an LM head (logits over the vocabulary); False: an encoder whose output is its
    # hidden states (EmbeddingGemma: pooled and projected by sentence-transformers modules instead).
    lm_head: bool = True


@dataclass(frozen=True)
class HFIds:
    """How transformers spells the family."""

    model_type: str  # what a writer puts in config.json (the text decoder's model_type)
    architecture: str  # config.json "architectures"
    activation_key: str  # "hidden_act" (Gemma 1) or "hidden_activation" (Gemma 2 on)
    defaults: dict[str, Any]  # transformers' config defaults: a key absent from config.json takes these
    multimodal_model_type: str | None = None  # a wrapper whose text_config holds this family (gemma3)
    name_overrides: dict[str, str] = field(default_factory=dict)  # role -> HF name where it is not canonical
    rope: str = "single"  # "single" (one RoPE) or "per_layer_type" (full/sliding rope_parameters)
    windowed_keys: bool = True  # the config has query_pre_attn_scalar, sliding_window, soft caps, layer_types
    pattern_key: bool = False  # sliding_window_pattern (every n-th layer global) is a config key
    # activation values the family's released configs use for another function: value -> what it means
    activation_aliases: dict[str, str] = field(default_factory=dict)
    # config keys and values that tell this row from another row with the same model_type (EmbeddingGemma is
    # gemma3_text with use_bidirectional_attention: true); a key absent from the config does not match
    identified_by: dict[str, Any] = field(default_factory=dict)
    # spec field -> config key for the family's extra spec fields (Gemma 4: PLE, KV sharing, experts, ...)
    config_fields: dict[str, str] = field(default_factory=dict)
    # full layers have their own head geometry: global_head_dim / num_global_key_value_heads, or transformers'
    # saved per_layer_config {"05": {head_dim, num_key_value_heads}}
    layer_geometry: bool = False
    # the config key that switches the expert block on (Gemma 4's enable_moe_block); None: num_experts alone
    experts_switch: str | None = None
    # tensor prefixes of a multimodal wrapper's other towers (reported, counted and left out)
    tower_prefixes: tuple[str, ...] = ()
    # use_bidirectional_attention values that leave text causal (Gemma 4's released "vision": image tokens only)
    causal_bidirectional: tuple[str, ...] = ()
    # how transformers' q/k norms see their input: "bhtd" (after the transpose, Gemma 3) or "bthd" (before it)
    qk_norm_layout: str = "bhtd"

    @property
    def legacy_gelu_is_tanh(self) -> bool:
        """transformers reads `activation_key` = "gelu" as gelu_pytorch_tanh (the Gemma 1 release value), where
        other runtimes take the name literally (the exact erf GELU)."""
        return self.activation_aliases.get("gelu") == "gelu_pytorch_tanh"


@dataclass(frozen=True)
class KerasIds:
    """How keras-hub spells the family."""

    backbone: str  # class name in config.json
    module: str  # the backbone's module in config.json
    prefix: str  # the model's folder and class prefix: keras_hub.src.models.<prefix>, <Prefix>Tokenizer
    class_prefix: str  # GemmaTokenizer / Gemma3Tokenizer
    block: str  # the H5 group of a decoder block: the block's class in snake case
    hard_coded_rope: tuple[float, float] | None  # (local, global) RoPE bases the backbone hard-codes
    intermediate_both_branches: bool  # GemmaBackbone.intermediate_dim counts both GeGLU branches (2 F)
    rope_scaling_keys: bool  # global_/local_rope_scaling_factor are config keys
    # backbone config keys beyond the shared ones, with the values a text-only causal LM has (written as such)
    config_extras: dict[str, Any] = field(default_factory=dict)
    # the tokenizer's vision tokens: a multimodal preset (its tokenizer's has_vision_tokens, the
    # preprocessor's image arguments); () for a text-only model
    vision_tokens: tuple[str, ...] = ()
    # the formats module that maps this backbone's config and variables (formats/<mapping>.py, with read and
    # write); None: keras.py's own table of Gemma 1-3 einsum kernels (Gemma3nBackbone's Dense layers differ)
    mapping: str | None = None
    # tokenizer config flags -> the tokens each needs (all present: the flag is true), for a tokenizer class that
    # registers optional special tokens (Gemma4Tokenizer: image, audio and video tokens)
    token_flags: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class GGUFIds:
    """How llama.cpp spells the family, and what it fills in when the file does not say."""

    arch: str  # general.architecture
    # What llama.cpp uses when a key is absent (None: nothing). A soft cap (attn_/final_logit_softcapping) not
    # listed is never read for this arch; sliding_window is read on windowed families, required unless listed.
    defaults: dict[str, Any] = field(default_factory=dict)
    big_model_layers: int | None = None  # the layer count by which llama.cpp recognises the 27B model
    local_rope: tuple[float, float] | None = None  # (base, scaling) llama.cpp hard-codes on sliding layers
    # the formats module that maps this architecture's metadata and tensors (formats/<mapping>.py, with read and
    # write); None: gguf.py's own table (Gemma 3n stacks and pads tensors and has keys of its own)
    mapping: str | None = None


@dataclass(frozen=True)
class Family:
    key: str  # the spec's `family` value
    title: str
    gemma: bool  # a Gemma family (the peers are cards for the side-by-side table only)
    rules: FamilyRules
    layer_pattern: tuple[str, ...]  # one period of the layer layout: layer i is pattern[i % len(pattern)]
    defaults: dict[str, Any]  # spec fields a spec of this family starts from (explicit fields win)
    hf: HFIds | None = None
    keras: KerasIds | None = None
    gguf: GGUFIds | None = None
    gemma_pytorch: str | None = None  # gemma_pytorch's architecture marker (config.architecture)
    # format -> why the family cannot be written in it (the writer's one-line refusal), for a format whose own
    # ecosystem has no such model; a format without an entry and without ids refuses with the generic message
    refusals: dict[str, str] = field(default_factory=dict)
    # The commands that handle this family; None: every command. A family being added reads first (summary,
    # compare) and is refused with a one-line error by the others until they support it.
    commands: tuple[str, ...] | None = None
    # The formats `convert` writes this family in; None: every format whose ids the row has. A family being added
    # is written first in the formats that handle it, and refused by the others with one line.
    writers: tuple[str, ...] | None = None
    # The reference runtime's module for a family whose computation differs from reference.GemmaModel's
    # (runtimes/<name>.py, its MODEL class); None: GemmaModel.
    reference_module: str | None = None
    # verify's checks of what only this family has (checks.FAMILY_CHECKS), run after the common ones
    checks: tuple[str, ...] = ()

    def supports(self, command: str) -> bool:
        return self.commands is None or command in self.commands

    def writes(self, fmt: str) -> bool:
        return self.writers is None or fmt in self.writers

    def layer_types(self, num_layers: int, period: int | None = None) -> tuple[str, ...]:
        """The attention kind of each layer as the family lays them out. `period` stretches a "global every
        n-th layer" pattern (HF's sliding_window_pattern, GGUF's integer sliding_window_pattern)."""
        pattern = self.layer_pattern
        if period is not None:
            pattern = (SLIDING,) * (period - 1) + (FULL,)
        return tuple(pattern[i % len(pattern)] for i in range(num_layers))

    @property
    def windowed(self) -> bool:
        """Whether the family's layout has sliding-window layers at all."""
        return SLIDING in self.layer_pattern


_GEMMA_HF_DEFAULTS = dict(bos_token_id=2, eos_token_id=1, pad_token_id=0, rms_norm_eps=1e-6,
                          tie_word_embeddings=True)
_PEER_DEFAULTS = dict(activation="silu", norm_offset=0, scale_embeddings=False, tied_embeddings=False,
                      max_position_embeddings=4096)
# transformers' Gemma2Config defaults, which VaultGemmaConfig repeats
_GEMMA2_HF_DEFAULTS = dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                           num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                           hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192,
                           query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=30.0,
                           attn_logit_softcapping=50.0, **_GEMMA_HF_DEFAULTS)
# transformers' Gemma3TextConfig defaults, shared by Gemma 3 and EmbeddingGemma (the same config class)
_GEMMA3_TEXT_HF_DEFAULTS = dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                                num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                                hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131072,
                                query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=None,
                                attn_logit_softcapping=None, **_GEMMA_HF_DEFAULTS)
# keras-hub's GemmaBackbone, which holds Gemma 1, Gemma 2 and VaultGemma (told apart by their configs' fields)
_GEMMA_BACKBONE = KerasIds("GemmaBackbone", "keras_hub.src.models.gemma.gemma_backbone", "gemma", "Gemma",
                           "gemma_decoder_block", (10_000.0, 10_000.0), True, False)
# keras-hub's Gemma3Backbone, which holds Gemma 3 and (is_embedding_model) EmbeddingGemma
_GEMMA3_BACKBONE = KerasIds("Gemma3Backbone", "keras_hub.src.models.gemma3.gemma3_backbone", "gemma3", "Gemma3",
                            "gemma3_decoder_block", (10_000.0, 1_000_000.0), False, True,
                            config_extras=dict(image_size=896, use_query_key_norm=True, vision_encoder=None,
                                               use_bidirectional_attention=False, is_embedding_model=False,
                                               pooling_intermediate_dim=None, embedding_dim=None),
                            vision_tokens=("<img>", "<start_of_image>", "<end_of_image>"))
_PEER_RULES = FamilyRules("pre", 0, False, "silu", False, False, None, None, query_scalar="head_dim")

FAMILY_TABLE: dict[str, Family] = {f.key: f for f in (
    # Gemma 1: plain pre-norm, whatever the paper says about normalising sub-layer outputs.
    Family(
        "gemma", "Gemma 1", True,
        FamilyRules("pre", 1, True, "gelu_tanh", True, False, None, None, query_scalar="head_dim"),
        layer_pattern=(FULL,), defaults={},
        hf=HFIds("gemma", "GemmaForCausalLM", "hidden_act",
                 dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                      num_attention_heads=16, num_key_value_heads=16, head_dim=256, hidden_act="gelu_pytorch_tanh",
                      max_position_embeddings=8192, **_GEMMA_HF_DEFAULTS),
                 # Gemma 1 has no post-attention norm; HF calls its pre-FFN norm `post_attention_layernorm`.
                 name_overrides={"ffn_norm": "model.layers.{i}.post_attention_layernorm.weight"},
                 windowed_keys=False,
                 # The released configs say hidden_act="gelu", which transformers reads as the tanh GELU.
                 activation_aliases={"gelu": "gelu_pytorch_tanh"}),
        keras=_GEMMA_BACKBONE,
        gguf=GGUFIds("gemma"),
        gemma_pytorch="GEMMA_1"),
    # Gemma 2: sandwich norms, soft caps 50 (attention logits) and 30 (final logits), sliding on even layers.
    Family(
        "gemma2", "Gemma 2", True,
        FamilyRules("pre+post", 1, True, "gelu_tanh", True, False, 50.0, 30.0, float16_overflows=True),
        layer_pattern=(SLIDING, FULL), defaults=dict(sliding_window=4096),
        hf=HFIds("gemma2", "Gemma2ForCausalLM", "hidden_activation",
                 _GEMMA2_HF_DEFAULTS),
        keras=_GEMMA_BACKBONE,
        gguf=GGUFIds("gemma2", defaults={"sliding_window": 4096, "attn_logit_softcapping": 50.0,
                                         "final_logit_softcapping": 30.0}, big_model_layers=46),
        gemma_pytorch="GEMMA_2"),
    # Gemma 3: soft caps replaced by QK-norm; 5 local layers to 1 global, local RoPE base 10k, global 1M.
    Family(
        "gemma3", "Gemma 3 (text)", True,
        FamilyRules("pre+post", 1, True, "gelu_tanh", True, True, None, None, float16_overflows=True,
                    rope_scaling_from=(2560, 8.0, "Gemma 3 4B and larger")),
        layer_pattern=(SLIDING,) * 5 + (FULL,),
        defaults=dict(sliding_window=1024, rope_theta=1_000_000.0, rope_local_theta=10_000.0,
                      max_position_embeddings=131072),
        hf=HFIds("gemma3_text", "Gemma3ForCausalLM", "hidden_activation",
                 _GEMMA3_TEXT_HF_DEFAULTS,
                 multimodal_model_type="gemma3", rope="per_layer_type", pattern_key=True),
        keras=_GEMMA3_BACKBONE,
        # llama.cpp reads Gemma 3's final soft cap when present (absent: none); it never reads an attention cap.
        gguf=GGUFIds("gemma3", defaults={"final_logit_softcapping": None}, big_model_layers=62,
                     local_rope=(10_000.0, 1.0)),
        gemma_pytorch="GEMMA_3"),
    # VaultGemma: Gemma 2 without the post-attention and post-feedforward norms (plain pre-norm), +1 norms and
    # soft caps 50/30 kept; transformers' default layout alternates sliding/global as Gemma 2's, the published 1B
    # model is global on every layer (its card). keras-hub holds it in GemmaBackbone without the post norms.
    Family(
        "vaultgemma", "VaultGemma", True,
        FamilyRules("pre", 1, True, "gelu_tanh", True, False, 50.0, 30.0),
        layer_pattern=(SLIDING, FULL), defaults=dict(sliding_window=4096),
        hf=HFIds("vaultgemma", "VaultGemmaForCausalLM", "hidden_activation",
                 _GEMMA2_HF_DEFAULTS),
        keras=_GEMMA_BACKBONE,
        refusals={
            "gguf": "llama.cpp has no VaultGemma architecture (gguf 0.19 and llama.cpp's converter know none; "
                    "its gemma2 graph requires the post-attention and post-feedforward norms VaultGemma lacks)",
            "gemma_pytorch": "gemma_pytorch has no VaultGemma architecture (its GEMMA_2 decoder layer always "
                             "applies a post-attention norm, which VaultGemma lacks)",
        }),
    # EmbeddingGemma (v1, 300M): Gemma 3's decoder run as an encoder - bidirectional attention (sliding layers see
    # the window on both sides), no LM head; released as a sentence-transformers directory whose mean pooling and
    # dense heads are read as data on the Checkpoint (formats/sentence_transformers.py), their weights as its
    # head_tensors, which every writer carries in its own spelling.
    Family(
        "embeddinggemma", "EmbeddingGemma", True,
        FamilyRules("pre+post", 1, True, "gelu_tanh", True, True, None, None, float16_overflows=True,
                    attention_mask="bidirectional", lm_head=False),
        layer_pattern=(SLIDING,) * 5 + (FULL,),
        defaults=dict(sliding_window=512, rope_theta=1_000_000.0, rope_local_theta=10_000.0,
                      max_position_embeddings=2048),
        hf=HFIds("gemma3_text", "Gemma3TextModel", "hidden_activation",
                 _GEMMA3_TEXT_HF_DEFAULTS,
                 rope="per_layer_type", pattern_key=True, identified_by={"use_bidirectional_attention": True}),
        # keras-hub: Gemma3Backbone as an embedding model (mean pooling, two bias-free Dense layers whose widths are
        # pooling_intermediate_dim and embedding_dim, L2 normalisation); the writer fills the widths from the head.
        keras=dataclasses.replace(_GEMMA3_BACKBONE, config_extras={
            **_GEMMA3_BACKBONE.config_extras, "use_bidirectional_attention": True, "is_embedding_model": True}),
        # llama.cpp: the Gemma 3 graph without causality (a symmetric window: |i - j| <= sliding_window // 2), the
        # stored window as transformers' config.json spells it, pooling_type and the dense heads dense_2/dense_3.
        gguf=GGUFIds("gemma-embedding", defaults={"final_logit_softcapping": None}, local_rope=(10_000.0, 1.0)),
        refusals={"gemma_pytorch": "gemma_pytorch has no encoder (its GEMMA_3 model attends causally, ends in the "
                                   "LM head, and holds no pooling or dense heads)"}),
    # Gemma 4 (text decoder): RMSNorm applies w (no +1), q/k norms (and a weightless v_norm), queries unscaled,
    # final soft cap 30; per-layer head geometry, per-layer input embeddings, KV sharing, K=V, experts beside the
    # dense MLP and a stored layer_scalar are spec fields read from the config (row `hf.config_fields`).
    Family(
        "gemma4", "Gemma 4 (text)", True,
        FamilyRules("pre+post", 0, True, "gelu_tanh", True, True, None, 30.0, query_scalar="unit"),
        layer_pattern=(SLIDING,) * 5 + (FULL,),
        defaults=dict(sliding_window=512, rope_theta=1_000_000.0, rope_local_theta=10_000.0,
                      rope_partial_factor=0.25, query_pre_attn_scalar=1, layer_scalar=True,
                      max_position_embeddings=131072),
        hf=HFIds("gemma4_text", "Gemma4ForCausalLM", "hidden_activation",
                 # Gemma4TextConfig's defaults (not E2B's): PLE 256 wide unless the config says otherwise
                 dict(vocab_size=262144, hidden_size=2304, intermediate_size=9216, num_hidden_layers=30,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                      hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131072,
                      query_pre_attn_scalar=1, sliding_window=512, final_logit_softcapping=None,
                      attn_logit_softcapping=None, vocab_size_per_layer_input=262144,
                      hidden_size_per_layer_input=256, attention_k_eq_v=False, num_kv_shared_layers=0,
                      enable_moe_block=False, use_double_wide_mlp=False, global_head_dim=512,
                      **_GEMMA_HF_DEFAULTS),
                 multimodal_model_type="gemma4", rope="per_layer_type",
                 config_fields=dict(per_layer_input_size="hidden_size_per_layer_input",
                                    per_layer_vocab_size="vocab_size_per_layer_input",
                                    num_kv_shared_layers="num_kv_shared_layers",
                                    attention_k_eq_v="attention_k_eq_v", double_wide_mlp="use_double_wide_mlp",
                                    moe_experts="num_experts", moe_top_k="top_k_experts",
                                    moe_intermediate_size="moe_intermediate_size"),
                 layer_geometry=True, experts_switch="enable_moe_block",
                 tower_prefixes=("model.vision_tower.", "model.audio_tower.", "model.embed_vision.",
                                 "model.embed_audio."),
                 causal_bidirectional=("vision",), qk_norm_layout="bthd"),
        # keras-hub's Gemma4Backbone: per-layer head geometry, K=V by num_global_key_value_heads, split expert
        # banks, a scalar variable per block (formats/keras_gemma4.py); its tokenizer's multimodal token flags
        keras=KerasIds("Gemma4Backbone", "keras_hub.src.models.gemma4.gemma4_backbone", "gemma4", "Gemma4",
                       "gemma4_text_decoder_block", None, False, False, mapping="keras_gemma4",
                       token_flags={"has_vision_tokens": ("<|image>", "<|image|>", "<image|>"),
                                    "has_audio_tokens": ("<|audio>", "<|audio|>", "<audio|>"),
                                    "has_video_tokens": ("<|video|>",)}),
        # llama.cpp's gemma4: per-layer head geometry keys, rope_freqs, the converter's scales (formats/gguf_gemma4.py)
        gguf=GGUFIds("gemma4", defaults={"final_logit_softcapping": None}, mapping="gguf_gemma4"),
        refusals={"gemma_pytorch": "gemma_pytorch has no Gemma 4 architecture (it knows GEMMA_1, GEMMA_2 and "
                                   "GEMMA_3, none with per-layer embeddings, KV sharing, K=V, experts or layer "
                                   "scalars)"},
        commands=("summary", "compare", "convert", "diff", "parity", "verify"),
        reference_module="gemma4",
        checks=("layer_scalar", "per_layer_inputs", "kv_sharing", "k_eq_v", "rope_fraction", "moe_routing")),
    # Gemma 3n (text decoder): Gemma 4's norms (w, no +1), q/k norms and weightless v_norm, unscaled queries, final
    # soft cap 30, PLE and KV sharing - plus AltUp (the residual stream carried as altup_num_inputs streams, one of
    # them run through the block, the others predicted and corrected by per-layer coefficients), LAuReL (a low-rank
    # residual beside attention) and activation sparsity (a Gaussian top-k on the gate of the first layers). One
    # head_dim on every layer; FFN widths per layer (a config list); 4 sliding layers to 1 global.
    Family(
        "gemma3n", "Gemma 3n (text)", True,
        FamilyRules("pre+post", 0, True, "gelu_tanh", True, True, None, 30.0, query_scalar="unit"),
        layer_pattern=(SLIDING,) * 4 + (FULL,),
        defaults=dict(sliding_window=512, rope_theta=1_000_000.0, rope_local_theta=10_000.0,
                      query_pre_attn_scalar=1, max_position_embeddings=32768, altup_num_inputs=4,
                      altup_correct_scale=True, laurel_rank=64),
        hf=HFIds("gemma3n_text", "Gemma3nForCausalLM", "hidden_activation",
                 # Gemma3nTextConfig's defaults (E4B's shapes; activation_sparsity_pattern absent: 0.95 on the
                 # first 10 layers of a model deeper than 10, hf_layers reads it so)
                 dict(vocab_size=262400, hidden_size=2048, intermediate_size=16384, num_hidden_layers=35,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=256,
                      hidden_activation="gelu_pytorch_tanh", max_position_embeddings=32768,
                      query_pre_attn_scalar=1, sliding_window=512, final_logit_softcapping=30.0,
                      attn_logit_softcapping=None, vocab_size_per_layer_input=262144,
                      hidden_size_per_layer_input=256, num_kv_shared_layers=15, altup_num_inputs=4,
                      altup_active_idx=0, altup_correct_scale=True, altup_coef_clip=120.0, laurel_rank=64,
                      activation_sparsity_pattern=None, **_GEMMA_HF_DEFAULTS),
                 multimodal_model_type="gemma3n", rope="per_layer_type",
                 config_fields=dict(per_layer_input_size="hidden_size_per_layer_input",
                                    per_layer_vocab_size="vocab_size_per_layer_input",
                                    num_kv_shared_layers="num_kv_shared_layers",
                                    altup_num_inputs="altup_num_inputs", altup_active_idx="altup_active_idx",
                                    altup_correct_scale="altup_correct_scale", laurel_rank="laurel_rank",
                                    activation_sparsity="activation_sparsity_pattern"),
                 tower_prefixes=("model.vision_tower.", "model.audio_tower.", "model.embed_vision.",
                                 "model.embed_audio."),
                 qk_norm_layout="bthd"),
        # keras-hub's Gemma3nBackbone: Dense kernels, config keys of its own (formats/keras_gemma3n.py)
        keras=KerasIds("Gemma3nBackbone", "keras_hub.src.models.gemma3n.gemma3n_backbone", "gemma3n", "Gemma3n",
                       "gemma3n_text_decoder_block", None, False, False, mapping="keras_gemma3n"),
        # llama.cpp's gemma3n: stacked AltUp projections, padded embeddings, keys of its own (formats/gguf_gemma3n.py);
        # what it hard-codes (20 K/V layers, sparsity 0.95 on 10) the writer checks there
        gguf=GGUFIds("gemma3n", defaults={"final_logit_softcapping": 30.0}, mapping="gguf_gemma3n"),
        refusals={"gemma_pytorch": "gemma_pytorch has no Gemma 3n architecture (it knows GEMMA_1, GEMMA_2 and "
                                   "GEMMA_3, none with AltUp, LAuReL, per-layer embeddings or KV sharing)"},
        commands=("summary", "compare", "convert", "diff", "parity", "verify"),
        reference_module="gemma3n", checks=("activation_sparsity", "altup", "laurel")),
    # Peers for the side-by-side table: SwiGLU, no norm offset, no embedding scale, untied output.
    Family("llama", "Llama 2", False, _PEER_RULES, (FULL,), _PEER_DEFAULTS),
    Family("olmo", "OLMo", False, _PEER_RULES, (FULL,), _PEER_DEFAULTS),
    Family("mistral", "Mistral", False, _PEER_RULES, (SLIDING,), {**_PEER_DEFAULTS, "sliding_window": 4096}),
)}

FAMILIES = tuple(FAMILY_TABLE)
GEMMA_FAMILIES = tuple(k for k, f in FAMILY_TABLE.items() if f.gemma)
PEER_FAMILIES = tuple(k for k, f in FAMILY_TABLE.items() if not f.gemma)


def family(key: str) -> Family:
    """The row of `key`; KeyError for an unknown family (GemmaSpec.validate names the known ones)."""
    return FAMILY_TABLE[key]


def by_hf_model_type(model_type: Any, config: dict[str, Any] | None = None) -> Family | None:
    """The family whose HF text model_type (or multimodal wrapper) is `model_type`. Rows sharing a model_type are
    told apart by `config` (the text decoder's): the row whose `identified_by` keys all match it, the most specific
    first; without a config, the first row of that model_type that needs no such key."""
    # (a row without a wrapper has multimodal_model_type None, which a config without model_type must not match)
    rows = [f for f in FAMILY_TABLE.values()
            if f.hf and model_type is not None and model_type in (f.hf.model_type, f.hf.multimodal_model_type)]
    if config is not None:
        rows = [f for f in rows if all(k in config and config[k] == v for k, v in f.hf.identified_by.items())]
        rows.sort(key=lambda f: -len(f.hf.identified_by))  # stable: table order among equally specific rows
    else:
        rows = [f for f in rows if not f.hf.identified_by]
    return rows[0] if rows else None


def by_keras_backbone(class_name: Any) -> tuple[Family, ...]:
    """The families a keras-hub backbone class can hold (GemmaBackbone: Gemma 1 and 2)."""
    return tuple(f for f in FAMILY_TABLE.values() if f.keras and f.keras.backbone == class_name)


def by_gguf_arch(arch: Any) -> Family | None:
    for f in FAMILY_TABLE.values():
        if f.gguf and f.gguf.arch == arch:
            return f
    return None


def hf_model_types() -> tuple[str, ...]:
    """Every model_type an HF reader accepts (text decoders and multimodal wrappers)."""
    out: list[str] = []
    for f in FAMILY_TABLE.values():
        if f.hf:
            out += [f.hf.model_type] + ([f.hf.multimodal_model_type] if f.hf.multimodal_model_type else [])
    return tuple(dict.fromkeys(out))


def gguf_architectures() -> tuple[str, ...]:
    return tuple(f.gguf.arch for f in FAMILY_TABLE.values() if f.gguf)


__all__ = ["SLIDING", "FULL", "FamilyRules", "HFIds", "KerasIds", "GGUFIds", "Family", "FAMILY_TABLE", "FAMILIES",
           "GEMMA_FAMILIES", "PEER_FAMILIES", "family", "by_hf_model_type", "by_keras_backbone", "by_gguf_arch",
           "hf_model_types", "gguf_architectures"]
