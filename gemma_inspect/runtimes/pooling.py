"""An embedding model's sentence embedding from its token states: the sentence-transformers modules after the
transformer (`Checkpoint.embedding_head`: Pooling, Dense..., Normalize) applied to the final norm's output.

Every runtime's token states go through this same code, with the Dense weights read from the checkpoint's head
tensors (a sentence-transformers directory's module folders, a Keras preset's or a GGUF file's heads), so that
two runtimes' embeddings differ only as their token states do.
torch is imported inside the functions.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import InputError, UnsupportedError

ACTIVATIONS = ("identity", "tanh", "relu", "gelu", "sigmoid")


def load_dense(ckpt: Any) -> list[tuple[Any, Any, str]]:
    """Each Dense module of `ckpt.embedding_head` as (W [out, in], b or None, activation), float64 CPU tensors, from
    the checkpoint's head tensors (whatever format holds them)."""
    import torch

    from ..heads import dense_name

    head = ckpt.embedding_head
    layers = []
    for k, d in enumerate(head.dense):
        if d.activation not in ACTIVATIONS:
            raise UnsupportedError(f"{os.path.join(ckpt.source, d.path)}: activation {d.activation_function} is not "
                                   f"implemented (supported: {', '.join(ACTIVATIONS)})")

        def value(part: str) -> Any:
            ref = ckpt.head_tensors[dense_name(k, part)]
            try:
                return torch.from_numpy(ref.load().astype("float64"))
            except (InputError, UnsupportedError):
                raise
            except Exception as e:  # a header read before; the values can still be cut short
                raise InputError(ref.origin or ref.name, f"cannot read the Dense weights ({e.__class__.__name__})") \
                    from e

        layers.append((value("weight"), value("bias") if d.bias else None, d.activation))
    return layers


def sentence_embedding(head: Any, dense: list[tuple[Any, Any, str]], states: Any) -> Any:
    """Token states [B, T, d] (every token counted: one unpadded sequence) -> embeddings [B, D] in float64."""
    import torch

    x = states.to(torch.float64)
    parts = []
    for mode in head.pooling.split("+"):
        if mode == "mean":
            parts.append(x.mean(dim=1))
        elif mode == "max":
            parts.append(x.max(dim=1).values)
        elif mode == "cls":
            parts.append(x[:, 0])
        elif mode == "lasttoken":
            parts.append(x[:, -1])
        elif mode == "mean_sqrt_len_tokens":
            parts.append(x.sum(dim=1) / x.shape[1] ** 0.5)
        else:
            raise UnsupportedError(f"pooling mode {mode!r} is not implemented")
    e = torch.cat(parts, dim=-1)
    for w, b, act in dense:
        e = e @ w.T + (b if b is not None else 0)
        e = {"identity": e, "tanh": torch.tanh(e), "relu": torch.relu(e),
             "gelu": torch.nn.functional.gelu(e), "sigmoid": torch.sigmoid(e)}[act]
    if head.normalize:
        e = torch.nn.functional.normalize(e, p=2.0, dim=-1)
    return e


def embed_result(ckpt: Any, result: Any) -> Any:
    """`result` with its `embedding` filled in when `ckpt` is an embedding model (its final norm's output pooled)."""
    if ckpt.embedding_head is None:
        return result
    dense = load_dense(ckpt)
    result.embedding = sentence_embedding(ckpt.embedding_head, dense, result.hidden_states[-1]).float()
    return result


__all__ = ["sentence_embedding", "load_dense", "embed_result"]
