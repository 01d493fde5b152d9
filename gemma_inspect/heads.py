"""What an embedding model does after its transformer: the sentence-transformers modules of its directory (pooling,
dense projections, normalisation), as read data. formats/sentence_transformers.py reads them from modules.json and
the module folders; built-in cards carry the published ones. Parameters of the heads are counted here, apart from
the transformer's (roles.py).

This module is a leaf: it imports nothing from the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# sentence-transformers' activation_function (a class path) -> the function, in words
ACTIVATION_NAMES = {"torch.nn.modules.linear.Identity": "identity", "torch.nn.modules.activation.Tanh": "tanh",
                    "torch.nn.modules.activation.ReLU": "relu", "torch.nn.modules.activation.GELU": "gelu",
                    "torch.nn.modules.activation.Sigmoid": "sigmoid"}


# Canonical names of the heads' tensors (Checkpoint.head_tensors): the k-th Dense module after the pooling, in
# sentence-transformers' layout ([out_features, in_features] weight, [out_features] bias). Every format maps its own
# names to these: sentence-transformers' `<idx>_Dense/model.safetensors:linear.weight`, keras-hub's pooling_dense_1 /
# embedding_projection kernels ([in, out]), llama.cpp's dense_2 / dense_3.
DENSE_TEMPLATE = "head.dense.{k}.{part}"


def dense_name(k: int, part: str = "weight") -> str:
    """'head.dense.0.weight': the canonical name of Dense module k's weight (or "bias")."""
    return DENSE_TEMPLATE.format(k=k, part=part)


@dataclass(frozen=True)
class DenseLayer:
    """One sentence-transformers Dense module: y = activation(x @ W^T + b), W [out_features, in_features]."""

    in_features: int
    out_features: int
    bias: bool
    activation_function: str  # as the module's config.json names it (a class path)
    path: str = ""  # the module's folder, relative to the checkpoint directory ("2_Dense")
    dtype: str | None = None  # the stored weight's dtype (None for a card)

    @property
    def activation(self) -> str:
        return ACTIVATION_NAMES.get(self.activation_function, self.activation_function)

    @property
    def parameters(self) -> int:
        return self.out_features * self.in_features + (self.out_features if self.bias else 0)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias, "activation": self.activation, "activation_function": self.activation_function,
                "parameters": self.parameters, "dtype": self.dtype}


@dataclass(frozen=True)
class EmbeddingHead:
    """The modules after the transformer, in order: pooling of the token states, dense layers, normalisation."""

    pooling: str  # sentence-transformers' mode string: "mean", "cls", "lasttoken", "max", ... ("mean+max" for both)
    word_embedding_dimension: int  # the width the pooling reads (the transformer's hidden size)
    include_prompt: bool = True  # whether prompt tokens are pooled too
    dense: tuple[DenseLayer, ...] = ()
    normalize: bool = False  # a Normalize module: the embedding is divided by its L2 norm
    modules: tuple[str, ...] = ()  # the module types in modules.json order (Transformer first)

    @property
    def parameters(self) -> int:
        return sum(d.parameters for d in self.dense)

    @property
    def pooled_dimension(self) -> int:
        return len(self.pooling.split("+")) * self.word_embedding_dimension

    @property
    def output_dimension(self) -> int:
        return self.dense[-1].out_features if self.dense else self.pooled_dimension

    def to_dict(self) -> dict[str, Any]:
        """`summary`'s JSON `embedding_head` object."""
        return {"pooling": self.pooling, "include_prompt": self.include_prompt,
                "word_embedding_dimension": self.word_embedding_dimension,
                "dense": [d.to_dict() for d in self.dense], "normalize": self.normalize,
                "output_dimension": self.output_dimension, "parameters": self.parameters,
                "modules": list(self.modules)}


__all__ = ["ACTIVATION_NAMES", "DENSE_TEMPLATE", "dense_name", "DenseLayer", "EmbeddingHead"]
