"""The name table of keras-hub's Gemma backbones (GemmaBackbone, Gemma3Backbone): each variable's H5 path, the layer
name Keras gives it, its canonical role and its layout change; and the embedding model's head variables."""

from __future__ import annotations

from dataclasses import dataclass

from ..heads import dense_name


@dataclass(frozen=True)
class KerasVar:
    """One row of the name table: the H5 path inside a block (or at the top), the layer name Keras
    gives that sublayer, the canonical role, and the layout transform."""

    path: str
    layer_name: str
    role: str
    layout: str  # "same" | "heads_in" | "heads_out" | "T"


TOP_VARS = (
    KerasVar("reversible_embedding/vars/0", "token_embedding", "embed", "same"),
    KerasVar("rms_normalization/vars/0", "final_normalization", "final_norm", "same"),
)
BLOCK_VARS = (
    KerasVar("pre_attention_norm/vars/0", "pre_attention_norm", "attn_norm", "same"),
    KerasVar("post_attention_norm/vars/0", "post_attention_norm", "post_attn_norm", "same"),
    KerasVar("pre_ffw_norm/vars/0", "pre_ffw_norm", "ffn_norm", "same"),
    KerasVar("post_ffw_norm/vars/0", "post_ffw_norm", "post_ffn_norm", "same"),
    KerasVar("attention/query_dense/vars/0", "query", "q", "heads_in"),
    KerasVar("attention/key_dense/vars/0", "key", "k", "heads_in"),
    KerasVar("attention/value_dense/vars/0", "value", "v", "heads_in"),
    KerasVar("attention/output_dense/vars/0", "attention_output", "o", "heads_out"),
    KerasVar("attention/query_norm/vars/0", "query_norm", "q_norm", "same"),
    KerasVar("attention/key_norm/vars/0", "key_norm", "k_norm", "same"),
    KerasVar("gating_ffw/vars/0", "ffw_gating", "gate", "T"),
    KerasVar("gating_ffw_2/vars/0", "ffw_gating_2", "up", "T"),
    KerasVar("ffw_linear/vars/0", "ffw_linear", "down", "T"),
)
VAR_BY_ROLE = {v.role: v for v in TOP_VARS + BLOCK_VARS}
BY_PATH = {v.path: v for v in BLOCK_VARS}
# An embedding model's heads (Gemma3Backbone with is_embedding_model): keras.layers.Dense kernels [in, out], named
# as the backbone names them, in H5 groups named after the class (dense, dense_1). Roles are the heads' canonical
# names (heads.dense_name); keras-hub's head is fixed: mean pooling, these two bias-free layers, L2 normalisation.
HEAD_VARS = (
    KerasVar("dense/vars/0", "pooling_dense_1", dense_name(0), "T"),
    KerasVar("dense_1/vars/0", "embedding_projection", dense_name(1), "T"),
)
HEAD_BY_NAME = {v.role: v for v in HEAD_VARS}


__all__ = ["KerasVar", "TOP_VARS", "BLOCK_VARS", "VAR_BY_ROLE", "BY_PATH", "HEAD_VARS", "HEAD_BY_NAME"]
