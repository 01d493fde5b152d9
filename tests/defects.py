"""Seeded defects the tests swap into the reference runtime (with monkeypatch), to prove they are caught."""

from __future__ import annotations

import math
from typing import Any


def embedding_scale_in_float32(spec: Any, table: Any, token_ids: Any) -> Any:
    """`reference.embed` with the common porting bug: the exact sqrt(d), a float32 product rounded afterwards,
    instead of the factor rounded to the model dtype first (Gemma 7B in bfloat16: 55.4256 instead of 55.5)."""
    x = table[token_ids]
    return (x.float() * math.sqrt(spec.hidden_size)).to(x.dtype) if spec.scale_embeddings else x


def query_scale_from_head_dim(self: Any) -> float:
    """`GemmaSpec.query_scale` with the config's query_pre_attn_scalar dropped: 1/sqrt(head_dim) for every
    model (right for most, wrong for Gemma 2 27B and Gemma 3 27B, whose scalar is d/H = 144 / 168)."""
    return float(self.head_dim) ** -0.5


def exact_gelu(kind: str, x: Any) -> Any:
    """`reference.activation` with the exact (erf) GELU instead of Gemma's tanh approximation: a small error
    (at most ~5e-4 of the activation) in every FFN, from block 0 on."""
    import torch.nn.functional as F

    return F.gelu(x) if kind.startswith("gelu") else F.silu(x)


def soft_cap_dropped(x: Any, cap: float | None) -> Any:
    """`reference.soft_cap` that ignores the cap: Gemma 2's attention (50) and final (30) soft caps dropped."""
    return x


def scrambled_ffn_gguf(tiny_models: Any, tmp_path: Any, dtype: str) -> str:
    """A GGUF (`dtype`: q8_0, bfloat16, ...) of the tiny Gemma 3 whose block-2 FFN down-projection has its rows
    reversed: a defect that a lower-precision tolerance must still catch at block 2."""
    from gemma_inspect.convert import WriteOptions, convert
    from gemma_inspect.tiny import write_hf

    w = tiny_models.weights("gemma3")
    w["model.layers.2.mlp.down_proj.weight"] = w["model.layers.2.mlp.down_proj.weight"][::-1].copy()
    write_hf(tiny_models.spec("gemma3"), w, str(tmp_path / "bad-hf"))
    convert(str(tmp_path / "bad-hf"), str(tmp_path / "bad.gguf"), "gguf", WriteOptions(dtype=dtype))
    return str(tmp_path / "bad.gguf")
