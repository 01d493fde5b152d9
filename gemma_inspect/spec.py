"""GemmaSpec: the architecture of a checkpoint, family rules, built-in cards and parameter counting.

A spec is what can be known without reading a single tensor value. Readers build one from a config and
check it against tensor shapes; built-in cards are specs with no tensors at all.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from .errors import SpecError

from .families import (FAMILIES, FAMILY_TABLE, FULL, GEMMA_FAMILIES, PEER_FAMILIES, SLIDING,  # noqa: F401
                       FamilyRules, family)
from .heads import DenseLayer, EmbeddingHead
from .roles import parameter_breakdown as _parameter_breakdown


ACTIVATIONS = ("gelu_tanh", "gelu", "silu")
MAX_ALTUP_INPUTS = 4  # AltUp streams the role table names (altup_proj1..3): Gemma 3n's 4
NORM_KINDS = ("rmsnorm", "layernorm_nonparametric")
ATTENTION_MASKS = ("causal", "bidirectional")

from .dtypes import DTYPE_BYTES  # noqa: E402 - bytes per element of the dtypes a checkpoint can declare


def _is_number(v: Any) -> bool:
    """A real number (not a bool, a string or None): what validation compares with 0."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def round_to_dtype(value: float, dtype: str) -> float:
    """`value` as the model dtype stores it (Gemma casts sqrt(d) to the activation dtype first)."""
    import numpy as np

    if dtype == "bfloat16":
        # float32, then round to nearest even on the upper 16 bits: what ml_dtypes' cast gives, without importing
        # it (ml_dtypes 0.7.0 takes 1.2 s of CPU to import, more than a whole `summary` of a 27B header)
        bits = int(np.float32(value).view(np.uint32))
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return float(np.uint32(bits).view(np.float32))
    if dtype in ("float16", "float32", "float64"):
        return float(np.asarray(value, dtype=dtype))
    return float(value)


class _RulesView(Mapping[str, FamilyRules]):
    """family -> the `rules` of its row in families.FAMILY_TABLE, read live (a row added at run time shows)."""

    def __getitem__(self, key: str) -> FamilyRules:
        return FAMILY_TABLE[key].rules

    def __iter__(self) -> Iterator[str]:
        return iter(FAMILY_TABLE)

    def __len__(self) -> int:
        return len(FAMILY_TABLE)


# What each family's reference implementation does.
FAMILY_RULES: Mapping[str, FamilyRules] = _RulesView()


@dataclass(frozen=True)
class GemmaSpec:
    """Architecture of one decoder-only checkpoint. Sizes use HF's meaning (intermediate_size = F,
    the width of one FFN branch). Quirks are fields, not assumptions, so a checkpoint that deviates
    from its family can be described truthfully."""

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    activation: str = "gelu_tanh"  # gelu_tanh (Gemma), gelu (exact erf), silu (SwiGLU peers)
    norm_kind: str = "rmsnorm"  # or layernorm_nonparametric (OLMo 1: no weights at all)
    norm_offset: int = 1  # Gemma stores w zero-centred; the layer applies (1 + w)
    norm_placement: str = "pre"  # "pre" or "pre+post" (sandwich)
    qk_norm: bool = False  # Gemma 3: RMSNorm over head_dim on q and k before RoPE
    scale_embeddings: bool = True  # Gemma: E[tok] * sqrt(d) with the factor cast to the model dtype
    tied_embeddings: bool = True  # logits = h @ E^T, no separate lm_head tensor
    attention_logit_softcap: float | None = None  # c * tanh(x / c) on attention logits (Gemma 2: 50)
    final_logit_softcap: float | None = None  # same on the output logits (Gemma 2: 30)
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()  # per layer: "sliding_attention" | "full_attention"
    rope_theta: float = 10000.0  # base of global (full-attention) layers
    rope_local_theta: float | None = None  # base of sliding layers; None = same as rope_theta
    rope_scaling_factor: float = 1.0  # linear position scaling on global layers (Gemma 3 4B+: 8)
    rope_local_scaling_factor: float = 1.0  # the same for sliding layers (1 in every published Gemma)
    query_pre_attn_scalar: float | None = None  # queries scaled by this ** -0.5; None = head_dim
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 8192
    dtype: str = "bfloat16"  # the dtype the checkpoint declares for its computation
    bos_token_id: int = 2
    eos_token_id: int = 1
    pad_token_id: int = 0
    name: str | None = None  # a built-in card's name
    # "causal", or "bidirectional": every token attends to every position (sliding layers: within the window on
    # either side); HF's use_bidirectional_attention (EmbeddingGemma)
    attention_mask: str = "causal"
    # Gemma 4 (every default leaves the earlier families as they were):
    global_head_dim: int | None = None  # head_dim of full-attention layers; None = head_dim
    num_global_key_value_heads: int | None = None  # K/V heads of full-attention layers; None = num_key_value_heads
    attention_k_eq_v: bool = False  # full layers have no v_proj: V is the raw K projection (v-normed)
    num_kv_shared_layers: int = 0  # the last n layers compute no K/V; they reuse an earlier layer's
    double_wide_mlp: bool = False  # intermediate size 2 x F on the KV-shared layers
    per_layer_input_size: int = 0  # per-layer input embeddings (PLE) width P; 0 = none
    per_layer_vocab_size: int = 0  # rows of the per-layer embedding table
    moe_experts: int = 0  # a mixture-of-experts block beside the dense MLP on every layer; 0 = none
    moe_top_k: int = 0  # experts a token is routed to
    moe_intermediate_size: int = 0  # one expert's FFN width
    layer_scalar: bool = False  # each layer multiplies its output by a stored scalar (a buffer)
    rope_partial_factor: float = 1.0  # fraction of a full layer's head_dim RoPE rotates (Gemma 4: 0.25)
    # Gemma 3n (every default leaves the other families as they were):
    intermediate_sizes: tuple[int, ...] = ()  # FFN width per layer where they differ (HF's list); () = uniform
    altup_num_inputs: int = 0  # AltUp: the residual stream carried as n streams (Gemma 3n: 4); 0 = none
    altup_active_idx: int = 0  # the stream the decoder block runs on (the others are predicted and corrected)
    altup_correct_scale: bool = False  # the corrected active stream is scaled by correct_output_scale before PLE
    laurel_rank: int = 0  # LAuReL: a low-rank residual (rank r) beside attention; 0 = none
    # per layer: the gate's sparsity target p (a Gaussian top-k keeps what lies above mean + std * Phi^-1(p));
    # () or 0.0 = dense (Gemma 3n: 0.95 on the first 10 layers)
    activation_sparsity: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.layer_types:
            object.__setattr__(self, "layer_types", (FULL,) * self.num_layers)
        else:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        for f in ("intermediate_sizes", "activation_sparsity"):  # JSON and configs give lists
            object.__setattr__(self, f, tuple(getattr(self, f) or ()))
        if self.query_pre_attn_scalar is None:
            object.__setattr__(self, "query_pre_attn_scalar", self.head_dim)
        self.validate()
        # (not a field: whether any layer's geometry differs, asked for every tensor of every layer)
        object.__setattr__(self, "_layered", any(
            (self.layer_head_dim(i), self.layer_kv_heads(i), self.layer_intermediate(i))
            != (self.head_dim, self.num_key_value_heads, self.intermediate_size) for i in range(self.num_layers)))

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        problems = []
        if self.family not in FAMILY_TABLE:
            problems.append(f"unknown family {self.family!r} (known: {', '.join(FAMILY_TABLE)})")
        for f in ("vocab_size", "hidden_size", "num_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "intermediate_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                problems.append(f"{f} must be a positive integer, got {v!r}")
        if not problems and self.num_attention_heads % self.num_key_value_heads:
            problems.append(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.norm_kind not in NORM_KINDS:
            problems.append(f"norm_kind {self.norm_kind!r} is not one of {', '.join(NORM_KINDS)}")
        if self.norm_offset not in (0, 1):
            problems.append(f"norm_offset must be 0 or 1, got {self.norm_offset!r}")
        if self.norm_placement not in ("pre", "pre+post"):
            problems.append(f"norm_placement must be 'pre' or 'pre+post', got {self.norm_placement!r}")
        if len(self.layer_types) != self.num_layers:
            problems.append(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        bad = sorted({t for t in self.layer_types if t not in (SLIDING, FULL)})
        if bad:
            problems.append(f"unknown layer types {bad}")
        if SLIDING in self.layer_types and not self.sliding_window:
            problems.append("sliding-window layers are declared but sliding_window is not set")
        if self.sliding_window is not None and not (_is_number(self.sliding_window) and self.sliding_window > 0):
            problems.append(f"sliding_window must be positive, got {self.sliding_window}")
        for cap in ("attention_logit_softcap", "final_logit_softcap"):
            v = getattr(self, cap)
            if v is not None and not (_is_number(v) and v > 0):
                problems.append(f"{cap} must be positive or absent, got {v}")
        if self.query_pre_attn_scalar is not None and not (_is_number(self.query_pre_attn_scalar)
                                                           and self.query_pre_attn_scalar > 0):
            problems.append(f"query_pre_attn_scalar must be positive, got {self.query_pre_attn_scalar}")
        for f in ("rope_theta", "rope_scaling_factor", "rope_local_scaling_factor", "rms_norm_eps"):
            if not (_is_number(getattr(self, f)) and getattr(self, f) > 0):
                problems.append(f"{f} must be positive, got {getattr(self, f)}")
        if self.rope_local_theta is not None and not (_is_number(self.rope_local_theta) and self.rope_local_theta > 0):
            problems.append(f"rope_local_theta must be positive, got {self.rope_local_theta}")
        if self.attention_mask not in ATTENTION_MASKS:
            problems.append(f"attention_mask must be one of {', '.join(ATTENTION_MASKS)}, got {self.attention_mask!r}")
        problems += self._layer_problems()
        if self.norm_kind == "layernorm_nonparametric" and (self.qk_norm or self.norm_offset):
            problems.append("a non-parametric LayerNorm has no weights to offset or to use for QK-norm")
        if problems:
            raise SpecError("; ".join(problems))

    def _layer_problems(self) -> list[str]:
        """The Gemma 4 fields: per-layer geometry, KV sharing, PLE and experts must make sense together."""
        out = []
        for f in ("global_head_dim", "num_global_key_value_heads"):
            v = getattr(self, f)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                out.append(f"{f} must be a positive integer or absent, got {v!r}")
        for f in ("num_kv_shared_layers", "per_layer_input_size", "per_layer_vocab_size", "moe_experts",
                  "moe_top_k", "moe_intermediate_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                out.append(f"{f} must be a non-negative integer, got {v!r}")
        out += self._gemma3n_problems()
        if out:
            return out
        if self.num_kv_shared_layers >= max(self.num_layers, 1) and self.num_kv_shared_layers:
            out.append(f"num_kv_shared_layers {self.num_kv_shared_layers} leaves no layer that computes K/V")
        elif self.num_kv_shared_layers:
            first = self.num_layers - self.num_kv_shared_layers
            missing = sorted(set(self.layer_types[first:]) - set(self.layer_types[:first]))
            if missing:
                out.append(f"KV-shared layers of type {missing[0]} have no earlier layer of that type to share with")
        if self.per_layer_input_size and not self.per_layer_vocab_size:
            out.append("per_layer_input_size is set but per_layer_vocab_size is 0")
        if self.moe_experts and not (0 < self.moe_top_k <= self.moe_experts and self.moe_intermediate_size):
            out.append(f"{self.moe_experts} experts need 0 < top_k <= {self.moe_experts} (got {self.moe_top_k}) "
                       f"and a moe_intermediate_size (got {self.moe_intermediate_size})")
        kv = self.num_global_key_value_heads
        if kv is not None and self.num_attention_heads % kv:
            out.append(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                       f"num_global_key_value_heads {kv}")
        if not 0 < self.rope_partial_factor <= 1:
            out.append(f"rope_partial_factor must be in (0, 1], got {self.rope_partial_factor}")
        return out

    def _gemma3n_problems(self) -> list[str]:
        """The Gemma 3n fields: AltUp streams, LAuReL rank, per-layer FFN widths and sparsity targets."""
        out = []
        for f in ("altup_num_inputs", "altup_active_idx", "laurel_rank"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                out.append(f"{f} must be a non-negative integer, got {v!r}")
        if out:
            return out
        if self.altup_num_inputs == 1 or self.altup_num_inputs > MAX_ALTUP_INPUTS:
            out.append(f"altup_num_inputs must be 0 (none) or 2..{MAX_ALTUP_INPUTS}, got {self.altup_num_inputs}")
        elif self.altup_num_inputs and self.altup_active_idx >= self.altup_num_inputs:
            out.append(f"altup_active_idx {self.altup_active_idx} is not one of the {self.altup_num_inputs} streams")
        if self.intermediate_sizes:
            if len(self.intermediate_sizes) != self.num_layers:
                out.append(f"intermediate_sizes has {len(self.intermediate_sizes)} entries for {self.num_layers} "
                           f"layers")
            elif any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in self.intermediate_sizes):
                out.append(f"intermediate_sizes must be positive integers, got {list(self.intermediate_sizes)}")
        if self.activation_sparsity:
            if len(self.activation_sparsity) != self.num_layers:
                out.append(f"activation_sparsity has {len(self.activation_sparsity)} entries for {self.num_layers} "
                           f"layers")
            elif any(not _is_number(v) or not 0 <= v < 1 for v in self.activation_sparsity):
                out.append(f"activation_sparsity values must be in [0, 1), got {list(self.activation_sparsity)}")
        return out

    # ----------------------------------------------------------------- per-layer geometry (Gemma 4)
    def layer_head_dim(self, i: int) -> int:
        return self.global_head_dim if self.global_head_dim and self.layer_types[i] == FULL else self.head_dim

    def layer_kv_heads(self, i: int) -> int:
        g = self.num_global_key_value_heads
        return g if g and self.layer_types[i] == FULL else self.num_key_value_heads

    def kv_shared(self, i: int) -> bool:
        """Whether layer i reuses an earlier layer's K/V (one of the last num_kv_shared_layers)."""
        return i >= self.num_layers - self.num_kv_shared_layers

    def kv_source(self, i: int) -> int:
        """The layer whose K/V layer i attends with: itself, or the last non-shared layer of its type."""
        if not self.kv_shared(i):
            return i
        first = self.num_layers - self.num_kv_shared_layers
        return max(j for j in range(first) if self.layer_types[j] == self.layer_types[i])

    def k_eq_v(self, i: int) -> bool:
        """Whether layer i's V is its K projection (no v_proj): K=V models, on full layers."""
        return self.attention_k_eq_v and self.layer_types[i] == FULL

    def layer_intermediate(self, i: int) -> int:
        base = self.intermediate_sizes[i] if self.intermediate_sizes else self.intermediate_size
        return base * (2 if self.double_wide_mlp and self.kv_shared(i) else 1)

    def layer_sparsity(self, i: int) -> float:
        """Layer i's activation sparsity target (0.0: a dense gate)."""
        return float(self.activation_sparsity[i]) if self.activation_sparsity else 0.0

    @property
    def sparse_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if self.layer_sparsity(i) > 0)

    @property
    def gemma3n_features(self) -> bool:
        """Whether the spec uses AltUp, LAuReL or activation sparsity (summary's Gemma 3n rows and keys)."""
        return bool(self.altup_num_inputs or self.laurel_rank or self.sparse_layers)

    @property
    def per_layer_geometry(self) -> bool:
        """Whether any layer's shapes differ from the spec's top-level head_dim / K/V heads / FFN width."""
        return bool(self.__dict__.get("_layered"))

    def at_layer(self, i: int) -> Any:
        """A view of the spec whose head_dim, num_key_value_heads and intermediate_size are layer i's (what a
        role's shape formula reads); the spec itself when no layer differs."""
        return _LayerView(self, i) if self.per_layer_geometry else self

    @property
    def gemma4_features(self) -> bool:
        """Whether the spec uses any of the fields above (summary's extra rows and keys)."""
        return bool(self.per_layer_geometry or self.attention_k_eq_v or self.num_kv_shared_layers
                    or self.per_layer_input_size or self.moe_experts or self.layer_scalar or self.gemma3n_features)

    def replace(self, **changes: Any) -> GemmaSpec:
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- derived values
    @property
    def is_gemma(self) -> bool:
        row = FAMILY_TABLE.get(self.family)
        return row is not None and row.gemma

    @property
    def title(self) -> str:
        row = FAMILY_TABLE.get(self.family)
        return row.title if row is not None else self.family

    @property
    def attention_kind(self) -> str:
        """MQA (one K/V head shared by all queries), MHA (one per query head) or GQA (groups)."""
        if self.num_key_value_heads == 1 and self.num_attention_heads > 1:
            return "MQA"
        if self.num_key_value_heads == self.num_attention_heads:
            return "MHA"
        return "GQA"

    @property
    def queries_per_kv_head(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def ffn_kind(self) -> str:
        return "SwiGLU" if self.activation == "silu" else "GeGLU"

    @property
    def sliding_layers(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == SLIDING)

    @property
    def global_layers(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == FULL)

    @property
    def local_rope_theta(self) -> float:
        return self.rope_theta if self.rope_local_theta is None else self.rope_local_theta

    @property
    def query_scale(self) -> float:
        return float(self.query_pre_attn_scalar) ** -0.5

    @property
    def embedding_scale_exact(self) -> float:
        return math.sqrt(self.hidden_size) if self.scale_embeddings else 1.0

    def embedding_scale_in(self, dtype: str | None = None) -> float:
        """The factor as the model applies it: sqrt(d) cast to the activation dtype (bf16: 45.25 for d=2048)."""
        return round_to_dtype(self.embedding_scale_exact, dtype or self.dtype)

    @property
    def embedding_scale(self) -> float:
        return self.embedding_scale_in(self.dtype)

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES.get(self.dtype, 2)

    def kv_cache_bytes_per_token(self, dtype: str | None = None) -> int:
        """K and V of every layer that computes them, for one token (sliding layers stop growing past their
        window); each layer with its own head geometry. A KV-shared layer caches nothing; a K=V layer still
        caches V (v_norm of K differs from the normed, rotated K)."""
        per_elem = DTYPE_BYTES.get(dtype or self.dtype, 2)
        return sum(2 * self.layer_kv_heads(i) * self.layer_head_dim(i) * per_elem
                   for i in range(self.num_layers) if not self.kv_shared(i))

    # ----------------------------------------------------------------- parameter counting
    def parameter_breakdown(self) -> dict[str, int]:
        """Counts by role group, tied weights counted once (the JSON `parameters` object), summed over the rows
        of roles.ROLE_TABLE that this spec has."""
        return _parameter_breakdown(self)

    @property
    def num_parameters(self) -> int:
        return self.parameter_breakdown()["total"]

    # ----------------------------------------------------------------- serialisation
    def architecture_dict(self) -> dict[str, Any]:
        """The JSON `architecture` object of `summary`."""
        return {
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "attention": self.attention_kind,
            "activation": self.activation,
            "ffn": self.ffn_kind,
            "norm_kind": self.norm_kind,
            "norm_placement": self.norm_placement,
            "norm_offset": self.norm_offset,
            "embedding_scale": self.embedding_scale,
            "embedding_scale_exact": self.embedding_scale_exact,
            "tied_embeddings": self.tied_embeddings,
            "qk_norm": self.qk_norm,
            "final_logit_softcap": self.final_logit_softcap,
            "attention_logit_softcap": self.attention_logit_softcap,
            "sliding_window": self.sliding_window,
            "layer_types": list(self.layer_types),
            "query_pre_attn_scalar": self.query_pre_attn_scalar,
            "query_scale": self.query_scale,
            "rope_theta": self.rope_theta,
            "rope_local_theta": self.local_rope_theta,
            "rope_scaling_factor": self.rope_scaling_factor,
            "rope_local_scaling_factor": self.rope_local_scaling_factor,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "dtype": self.dtype,
            "attention_mask": self.attention_mask,
            **(self._gemma4_dict() if self.gemma4_features else {}),
            **(self._gemma3n_dict() if self.gemma3n_features else {}),
        }

    def _gemma3n_dict(self) -> dict[str, Any]:
        return {
            "altup_num_inputs": self.altup_num_inputs,
            "altup_active_idx": self.altup_active_idx,
            "altup_correct_scale": self.altup_correct_scale,
            "laurel_rank": self.laurel_rank,
            "activation_sparsity": [self.layer_sparsity(i) for i in range(self.num_layers)],
            "sparse_layers": list(self.sparse_layers),
        }

    def _gemma4_dict(self) -> dict[str, Any]:
        return {
            "global_head_dim": self.global_head_dim,
            "num_global_key_value_heads": self.num_global_key_value_heads,
            "layer_head_dims": [self.layer_head_dim(i) for i in range(self.num_layers)],
            "layer_kv_heads": [self.layer_kv_heads(i) for i in range(self.num_layers)],
            "layer_intermediate_sizes": [self.layer_intermediate(i) for i in range(self.num_layers)],
            "attention_k_eq_v": self.attention_k_eq_v,
            "num_kv_shared_layers": self.num_kv_shared_layers,
            "kv_sources": [self.kv_source(i) for i in range(self.num_layers)],
            "double_wide_mlp": self.double_wide_mlp,
            "per_layer_input_size": self.per_layer_input_size,
            "per_layer_vocab_size": self.per_layer_vocab_size,
            "moe_experts": self.moe_experts,
            "moe_top_k": self.moe_top_k,
            "moe_intermediate_size": self.moe_intermediate_size,
            "layer_scalar": self.layer_scalar,
            "rope_partial_factor": self.rope_partial_factor,
        }


class _LayerView:
    """A spec seen at one layer: the geometry fields are the layer's, everything else the spec's."""

    def __init__(self, spec: GemmaSpec, i: int):
        self._spec, self.layer = spec, i
        self.head_dim = spec.layer_head_dim(i)
        self.num_key_value_heads = spec.layer_kv_heads(i)
        self.intermediate_size = spec.layer_intermediate(i)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spec, name)


# --------------------------------------------------------------------- family builders
def gemma2_layer_types(num_layers: int) -> tuple[str, ...]:
    # Gemma 2: sliding window on even layers (i % 2 == 0), global on odd ones.
    return family("gemma2").layer_types(num_layers)


def gemma3_layer_types(num_layers: int, pattern: int = 6) -> tuple[str, ...]:
    # Gemma 3: 5 local : 1 global; layer i is global when (i + 1) % 6 == 0.
    return family("gemma3").layer_types(num_layers, pattern)


def family_layer_types(family_key: str, num_layers: int) -> tuple[str, ...]:
    """The attention kind of each layer as the family lays them out (its row's layer pattern)."""
    return family(family_key).layer_types(num_layers)


def make_spec(family_key: str, **fields: Any) -> GemmaSpec:
    """A spec with the family's row applied: every rule, the layer pattern and the defaults; explicit fields
    win. An unknown family gets no defaults (and GemmaSpec names the known ones)."""
    defaults: dict[str, Any] = {}
    row = FAMILY_TABLE.get(family_key)
    if row is not None:
        r = row.rules
        defaults = dict(norm_placement=r.norm_placement, norm_offset=r.norm_offset,
                        scale_embeddings=r.scale_embeddings, activation=r.activation,
                        tied_embeddings=r.tied_embeddings, qk_norm=r.qk_norm,
                        attention_logit_softcap=r.attention_logit_softcap, final_logit_softcap=r.final_logit_softcap,
                        attention_mask=r.attention_mask, layer_types=row.layer_types(fields.get("num_layers", 0)))
        defaults.update(row.defaults)
    defaults.update(fields)
    return GemmaSpec(family=family_key, **defaults)


# --------------------------------------------------------------------- built-in cards
# Published configurations (HF config values). Counts are asserted in tests against the published totals.
_CARDS: dict[str, dict[str, Any]] = {
    # Gemma 1 2B: multi-query attention, a single K/V head for 8 query heads.
    "gemma-2b": dict(family="gemma", vocab_size=256000, hidden_size=2048, num_layers=18,
                     num_attention_heads=8, num_key_value_heads=1, head_dim=256, intermediate_size=16384),
    # Gemma 1 7B: full multi-head attention; 8.5 B parameters with the tied embedding counted once.
    "gemma-7b": dict(family="gemma", vocab_size=256000, hidden_size=3072, num_layers=28,
                     num_attention_heads=16, num_key_value_heads=16, head_dim=256, intermediate_size=24576),
    "gemma2-2b": dict(family="gemma2", vocab_size=256000, hidden_size=2304, num_layers=26,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=256, intermediate_size=9216,
                      query_pre_attn_scalar=256),
    "gemma2-9b": dict(family="gemma2", vocab_size=256000, hidden_size=3584, num_layers=42,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=256, intermediate_size=14336,
                      query_pre_attn_scalar=256),
    # Gemma 2 27B scales queries by (d/H)^-0.5 = 144^-0.5, not head_dim (128)^-0.5.
    "gemma2-27b": dict(family="gemma2", vocab_size=256000, hidden_size=4608, num_layers=46,
                       num_attention_heads=32, num_key_value_heads=16, head_dim=128, intermediate_size=36864,
                       query_pre_attn_scalar=144),
    "gemma3-270m": dict(family="gemma3", vocab_size=262144, hidden_size=640, num_layers=18,
                        num_attention_heads=4, num_key_value_heads=1, head_dim=256, intermediate_size=2048,
                        sliding_window=512, query_pre_attn_scalar=256, max_position_embeddings=32768),
    "gemma3-1b": dict(family="gemma3", vocab_size=262144, hidden_size=1152, num_layers=26,
                      num_attention_heads=4, num_key_value_heads=1, head_dim=256, intermediate_size=6912,
                      sliding_window=512, query_pre_attn_scalar=256, max_position_embeddings=32768),
    # Gemma 3 4B+: 262208 embedding rows (multimodal configs), global RoPE scaled linearly by 8.
    "gemma3-4b": dict(family="gemma3", vocab_size=262208, hidden_size=2560, num_layers=34,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=256, intermediate_size=10240,
                      sliding_window=1024, query_pre_attn_scalar=256, rope_scaling_factor=8.0),
    "gemma3-12b": dict(family="gemma3", vocab_size=262208, hidden_size=3840, num_layers=48,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=256, intermediate_size=15360,
                       sliding_window=1024, query_pre_attn_scalar=256, rope_scaling_factor=8.0),
    # Gemma 3 27B: query_pre_attn_scalar = d/H = 168.
    "gemma3-27b": dict(family="gemma3", vocab_size=262208, hidden_size=5376, num_layers=62,
                       num_attention_heads=32, num_key_value_heads=16, head_dim=128, intermediate_size=21504,
                       sliding_window=1024, query_pre_attn_scalar=168, rope_scaling_factor=8.0),
    # VaultGemma 1B (google/vaultgemma-1b; keras-hub vault_gemma_1b_en): global attention on every layer, 1024 tokens.
    "vaultgemma-1b": dict(family="vaultgemma", vocab_size=256000, hidden_size=1152, num_layers=26,
                          num_attention_heads=4, num_key_value_heads=4, head_dim=256, intermediate_size=6912,
                          query_pre_attn_scalar=256, sliding_window=512, layer_types=(FULL,) * 26,
                          max_position_embeddings=1024),
    # EmbeddingGemma 300M (google/embeddinggemma-300m config.json): a bidirectional Gemma 3 encoder, float32; its
    # sentence-transformers heads are _CARD_HEADS' below.
    "embeddinggemma-300m": dict(family="embeddinggemma", vocab_size=262144, hidden_size=768, num_layers=24,
                                num_attention_heads=3, num_key_value_heads=1, head_dim=256, intermediate_size=1152,
                                sliding_window=512, query_pre_attn_scalar=256, max_position_embeddings=2048,
                                dtype="float32"),
    # Gemma 4 (text decoders of the published configs: google-deepmind/gemma, HF google/gemma-4-*): sliding
    # head_dim 256, full layers global_head_dim 512, final soft cap 30. E2B/E4B: per-layer input embeddings
    # (256 per layer) and KV sharing of the last layers (E2B: double-wide MLP there); 26B-A4B: 128 experts beside
    # the dense MLP, K=V on full layers; 31B: dense, K=V.
    "gemma4-e2b": dict(family="gemma4", vocab_size=262144, hidden_size=1536, num_layers=35,
                       num_attention_heads=8, num_key_value_heads=1, head_dim=256, intermediate_size=6144,
                       global_head_dim=512, sliding_window=512, layer_types=family("gemma4").layer_types(35, 5),
                       per_layer_input_size=256, per_layer_vocab_size=262144, num_kv_shared_layers=20,
                       double_wide_mlp=True),
    "gemma4-e4b": dict(family="gemma4", vocab_size=262144, hidden_size=2560, num_layers=42,
                       num_attention_heads=8, num_key_value_heads=2, head_dim=256, intermediate_size=10240,
                       global_head_dim=512, sliding_window=512, per_layer_input_size=256,
                       per_layer_vocab_size=262144, num_kv_shared_layers=18),
    "gemma4-26b-a4b": dict(family="gemma4", vocab_size=262144, hidden_size=2816, num_layers=30,
                           num_attention_heads=16, num_key_value_heads=8, head_dim=256, intermediate_size=2112,
                           global_head_dim=512, num_global_key_value_heads=2, attention_k_eq_v=True,
                           sliding_window=1024, moe_experts=128, moe_top_k=8, moe_intermediate_size=704,
                           max_position_embeddings=262144),
    "gemma4-31b": dict(family="gemma4", vocab_size=262144, hidden_size=5376, num_layers=60,
                       num_attention_heads=32, num_key_value_heads=16, head_dim=256, intermediate_size=21504,
                       global_head_dim=512, num_global_key_value_heads=4, attention_k_eq_v=True,
                       sliding_window=1024, max_position_embeddings=262144),
    # Gemma 3n (text decoders of google/gemma-3n-E2B and -E4B): 262,400 embedding rows, a 262,144-row per-layer
    # table 256 wide, 4 AltUp streams, LAuReL rank 64, activation sparsity 0.95 on the first 10 layers, 4 sliding
    # layers (window 512) to 1 global, the last 10 (E2B) / 15 (E4B) layers reuse earlier K/V.
    "gemma3n-e2b": dict(family="gemma3n", vocab_size=262400, hidden_size=2048, num_layers=30,
                        num_attention_heads=8, num_key_value_heads=2, head_dim=256, intermediate_size=8192,
                        per_layer_input_size=256, per_layer_vocab_size=262144, num_kv_shared_layers=10,
                        activation_sparsity=(0.95,) * 10 + (0.0,) * 20),
    "gemma3n-e4b": dict(family="gemma3n", vocab_size=262400, hidden_size=2048, num_layers=35,
                        num_attention_heads=8, num_key_value_heads=2, head_dim=256, intermediate_size=16384,
                        per_layer_input_size=256, per_layer_vocab_size=262144, num_kv_shared_layers=15,
                        activation_sparsity=(0.95,) * 10 + (0.0,) * 25),
    # Peers for the side-by-side table: SwiGLU, no norm offset, no embedding scale, untied output.
    "llama2-7b": dict(family="llama", vocab_size=32000, hidden_size=4096, num_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, head_dim=128, intermediate_size=11008,
                      rms_norm_eps=1e-5, dtype="float16"),
    # OLMo 1 7B: LayerNorm without any weights or biases.
    "olmo-7b": dict(family="olmo", vocab_size=50304, hidden_size=4096, num_layers=32,
                    num_attention_heads=32, num_key_value_heads=32, head_dim=128, intermediate_size=11008,
                    norm_kind="layernorm_nonparametric", norm_offset=0, rms_norm_eps=1e-5,
                    max_position_embeddings=2048, dtype="float32"),
    "mistral-7b": dict(family="mistral", vocab_size=32000, hidden_size=4096, num_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=14336,
                       sliding_window=4096, layer_types=(SLIDING,) * 32, rms_norm_eps=1e-5,
                       max_position_embeddings=32768),
}

CARD_NAMES = tuple(_CARDS)

_IDENTITY = "torch.nn.modules.linear.Identity"
# The published sentence-transformers modules of the embedding cards (modules.json, 1_Pooling, 2_Dense, 3_Dense,
# 4_Normalize of google/embeddinggemma-300m): mean pooling, 768 -> 3072 -> 768 without bias or activation, L2.
_CARD_HEADS: dict[str, EmbeddingHead] = {
    "embeddinggemma-300m": EmbeddingHead(
        pooling="mean", word_embedding_dimension=768, include_prompt=True,
        dense=(DenseLayer(768, 3072, False, _IDENTITY, "2_Dense"), DenseLayer(3072, 768, False, _IDENTITY, "3_Dense")),
        normalize=True, modules=("Transformer", "Pooling", "Dense", "Dense", "Normalize")),
}


def card_head(name: str) -> EmbeddingHead | None:
    """The published embedding head of a built-in card (None for a language model's card)."""
    return _CARD_HEADS.get(str(name).lower())


def card(name: str, **overrides: Any) -> GemmaSpec:
    """A built-in card by name (case-insensitive). `overrides` change fields through `make_spec` (e.g. the card's
    shapes with fewer layers, whose layer layout then follows); the result is no longer the card and has no name."""
    key = name.lower()
    if key not in _CARDS:
        raise KeyError(name)
    fields = dict(_CARDS[key])
    family = fields.pop("family")
    fields.update(overrides)
    return make_spec(family, name=None if overrides else key, **fields)


def card_of_shape(family_key: str, **shape: Any) -> str | None:
    """The name of the built-in card of `family_key` whose fields equal `shape` (e.g. hidden_size=2048,
    num_layers=18), or None: what a reader assumes from when a format does not store a value."""
    for name, fields in _CARDS.items():
        if fields["family"] != family_key:
            continue
        c = card(name)
        if all(getattr(c, k) == v for k, v in shape.items()):
            return name
    return None


def is_card(name: str) -> bool:
    """Whether `name` is a built-in card's name, in any case (Gemma-7B is gemma-7b)."""
    return str(name).lower() in _CARDS


def _card_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())  # gemma3_27b, Gemma3-27B -> gemma327b


def suggest_card(name: str) -> str | None:
    """The built-in card a mistyped name most likely meant (gema-7b -> gemma-7b, gemma3_27b -> gemma3-27b,
    gemma3-27 -> gemma3-27b), or None when nothing is close. Compared case-insensitively, ignoring - and _."""
    import difflib

    keys = {_card_key(c): c for c in _CARDS}
    key = _card_key(str(name))
    if not key:
        return None
    if key in keys:
        return keys[key]
    hit = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.75)
    return keys[hit[0]] if hit else None


def format_count(n: int) -> str:
    """8537680896 -> '8.54B'; 268098176 -> '268.1M'."""
    if n >= 1_000_000_000:
        return f"{n / 1e9:.2f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}K"
    return str(n)


def format_bytes(n: int | float) -> str:
    """Decimal units, spelled as the progress bars spell them: 594180 -> '594.18 kB'."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


__all__ = [
    "GemmaSpec", "FamilyRules", "FAMILY_RULES", "make_spec", "card", "card_head", "card_of_shape", "is_card", "suggest_card", "CARD_NAMES",
    "gemma2_layer_types", "gemma3_layer_types", "SLIDING", "FULL", "round_to_dtype",
    "format_count", "format_bytes",
]
