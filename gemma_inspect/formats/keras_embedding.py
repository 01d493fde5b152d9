"""keras-hub's embedding model (Gemma3Backbone with is_embedding_model, EmbeddingGemma): its fixed head, what it
cannot express, and its bidirectional sliding window, for keras.py's reader and writer."""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from ..heads import ACTIVATION_NAMES, DenseLayer, EmbeddingHead
from ..spec import GemmaSpec
from .common import require_int
from .keras_h5 import H5Var
from .keras_vars import HEAD_VARS

IDENTITY = next(k for k, v in ACTIVATION_NAMES.items() if v == "identity")


def embedding_head(c: dict[str, Any], spec: GemmaSpec, found: dict[str, H5Var], config_path: str,
                   where: str) -> EmbeddingHead:
    """keras-hub's fixed embedding head (mean pooling, Dense to pooling_intermediate_dim, Dense to embedding_dim,
    both bias-free without activation, L2 normalisation), its widths checked against the kernels."""
    inner = require_int(c, "pooling_intermediate_dim", config_path)
    out = require_int(c, "embedding_dim", config_path)
    dense = []
    for var, (n_in, n_out) in zip(HEAD_VARS, ((spec.hidden_size, inner), (inner, out))):
        got = found.get(var.role)
        if got is None:
            raise InputError(where, f"no layers/{var.path} ({var.layer_name}): is_embedding_model=true needs it")
        if got.shape != (n_in, n_out):
            raise InputError(got.file, f"{got.path} ({var.layer_name}) has shape {list(got.shape)} but "
                                       f"{config_path} implies {[n_in, n_out]}")
        dense.append(DenseLayer(in_features=n_in, out_features=n_out, bias=False, activation_function=IDENTITY,
                                path=var.layer_name, dtype=got.dtype))
    return EmbeddingHead(pooling="mean", word_embedding_dimension=spec.hidden_size, dense=tuple(dense),
                         normalize=True, modules=("Transformer", "Pooling", "Dense", "Dense", "Normalize"))


def head_problems(head: EmbeddingHead | None) -> list[str]:
    """What keras-hub's fixed embedding head (Gemma3Backbone is_embedding_model) cannot express about `head`."""
    if head is None:
        return ["no pooling or dense modules: keras-hub's embedding model always has them"]
    problems = []
    if head.pooling != "mean" or not head.include_prompt:
        problems.append(f"pooling {head.pooling}{'' if head.include_prompt else ' without the prompt'}: keras-hub "
                        f"mean-pools every token")
    if len(head.dense) != 2 or any(d.bias or d.activation != "identity" for d in head.dense):
        problems.append(f"{len(head.dense)} dense layer(s) "
                        f"({', '.join(f'{d.activation}, bias {str(d.bias).lower()}' for d in head.dense) or 'none'}): "
                        f"keras-hub has exactly two, without bias or activation")
    if not head.normalize:
        problems.append("no L2 normalisation: keras-hub always normalises the embedding")
    return problems


def keras_window(spec: GemmaSpec) -> int | None:
    """keras-hub's sliding_window_size for the spec's window. Bidirectional: keras-hub lets a token see S - S // 2 - 1
    positions before it and S // 2 after, transformers (and llama.cpp) W // 2 on either side (W as config.json stores
    it): the odd S = 2 (W // 2) + 1 gives the same mask (keras-hub's own importer passes S = W, one short on the
    left). Causal: the same number."""
    if spec.sliding_window is None or spec.attention_mask != "bidirectional":
        return spec.sliding_window
    return 2 * (spec.sliding_window // 2) + 1


__all__ = ["embedding_head", "head_problems", "keras_window"]
