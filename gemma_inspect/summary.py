"""`summary` and `compare`: what a checkpoint is, computed from its config and tensor headers alone."""

from __future__ import annotations

from typing import Any

from .checkpoint import Checkpoint, expected_tensors
from .families import family
from .lint import lint


def summarize(ckpt: Checkpoint) -> dict[str, Any]:
    """The JSON object of `summary` (keys fixed by DESIGN.md; extra keys only add)."""
    spec = ckpt.spec
    params = spec.parameter_breakdown()
    if ckpt.is_card:
        # A card has no tensors: describe the published checkpoint in its declared dtype.
        dtypes = {spec.dtype: len(expected_tensors(spec))}
        size = params["total"] * spec.dtype_bytes
    else:
        dtypes = dict(sorted(ckpt.dtype_counts().items()))
        size = ckpt.size_bytes
    tok = None
    if ckpt.tokenizer is not None:
        tok = {"backend": ckpt.tokenizer.backend,
               "files": [p for p in (ckpt.tokenizer.spm_path, ckpt.tokenizer.json_path) if p]}
    out = {
        "source": ckpt.source,
        "format": ckpt.format,
        "family": spec.family,
        "family_title": spec.title,
        "card": spec.name,
        "architecture": spec.architecture_dict(),
        "parameters": params,
        "dtypes": dtypes,
        "size_bytes": size,
        "kv_cache_bytes_per_token": spec.kv_cache_bytes_per_token(),
        "tensors_read": not ckpt.is_card,
        "num_tensors": len(ckpt.tensors) if not ckpt.is_card else len(expected_tensors(spec)),
        "tokenizer": tok,
        "ignored_tensors": len(ckpt.ignored),
        "notes": list(ckpt.notes),
        "lm_head": ckpt.lm_head,
        # The lint rules that need the config alone (no tokenizer, no tensor values: summary stays headers-only
        # and fast); a card is the published config itself.
        "lint": [] if ckpt.is_card else lint(ckpt, reads=("config",)),
    }
    head = ckpt.embedding_head
    if head is not None:  # an embedding model: its pooling and dense heads, counted apart from the transformer
        out["embedding_head"] = head.to_dict()
        params["heads"] = head.parameters
        params["total_with_heads"] = params["total"] + head.parameters
    if family(spec.family).defaults.get("layer_scalar"):  # a family whose layers store a layer_scalar (Gemma 4):
        # how many do (None for a card: nothing is stored)
        out["layer_scalars_stored"] = None if ckpt.is_card else sum(
            1 for n in ckpt.tensors if n.endswith(".layer_scalar"))
    if ckpt.hub:  # SOURCE was a hub id, handle or preset name: what it resolved to
        out["hub"] = ckpt.hub
    if ckpt.quantization:  # GGUF: storage types and bits per weight per tensor group
        out["quantization"] = ckpt.quantization
    return out


def compare(ckpts: list[Checkpoint]) -> dict[str, Any]:
    return {"models": [summarize(c) for c in ckpts]}
