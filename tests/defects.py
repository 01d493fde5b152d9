"""Seeded defects the tests swap into the reference runtime (with monkeypatch), to prove they are caught."""

from __future__ import annotations

import math
from typing import Any


def embedding_scale_in_float32(spec: Any, table: Any, token_ids: Any) -> Any:
    """`reference.embed` with the common porting bug: the exact sqrt(d), a float32 product rounded afterwards,
    instead of the factor rounded to the model dtype first (Gemma 7B in bfloat16: 55.4256 instead of 55.5)."""
    x = table[token_ids]
    return (x.float() * math.sqrt(spec.hidden_size)).to(x.dtype) if spec.scale_embeddings else x
