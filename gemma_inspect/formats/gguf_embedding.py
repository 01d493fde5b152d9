"""GGUF `gemma-embedding` (llama.cpp): an embedding model's head as llama.cpp's converter writes it
(`--sentence-transformers-dense-modules`) and reads it back, for gguf.py's reader and writer."""

from __future__ import annotations

import functools
from typing import Any

from ..checkpoint import Checkpoint, TensorRef
from ..errors import InputError, UnsupportedError
from ..families import FAMILY_TABLE
from ..heads import ACTIVATION_NAMES, DenseLayer, EmbeddingHead, dense_name
from ..spec import GemmaSpec
from .gguf_header import Header, Meta

# An embedding model's dense heads (gemma-embedding): llama.cpp's converter names the module folders 2_Dense and
# 3_Dense dense_2 and dense_3 (MODEL_TENSOR.DENSE_2_OUT / DENSE_3_OUT), weights only, with their widths in
# `{arch}.dense_2_feat_in` / `_feat_out`; the pooling is `{arch}.pooling_type` (gguf.PoolingType). GGUF keeps no
# normalisation: llama.cpp's embedding mode normalises (L2) by default.
HEAD_TENSOR_MEMBERS = ("DENSE_2_OUT", "DENSE_3_OUT")
# sentence-transformers' pooling mode -> gguf.PoolingType member, for the modes llama.cpp has
POOLING_TYPES = {"mean": "MEAN", "cls": "CLS", "lasttoken": "LAST"}


@functools.cache
def head_names() -> dict[str, str]:
    """canonical head tensor name (heads.dense_name) -> GGUF name: head.dense.0.weight -> dense_2.weight."""
    from gguf.constants import MODEL_TENSOR, TENSOR_NAMES

    return {dense_name(k): TENSOR_NAMES[MODEL_TENSOR[m]] + ".weight" for k, m in enumerate(HEAD_TENSOR_MEMBERS)}


IDENTITY = next(k for k, v in ACTIVATION_NAMES.items() if v == "identity")


def embedding_head(header: Header, spec: GemmaSpec, tensors: dict[str, TensorRef], path: str,
                   notes: list[str]) -> EmbeddingHead:
    """An embedding model's head as llama.cpp runs it: pooling_type, then dense_2 and dense_3 (bias-free, no
    activation: the converter keeps weights only), each checked against its width keys and the one before it."""
    import gguf

    m = Meta(header, path, header.metadata["general.architecture"])
    kinds = {t.value: name for name, t in gguf.PoolingType.__members__.items()}
    modes = {v: k for k, v in POOLING_TYPES.items()}
    code = m.integer(gguf.Keys.LLM.POOLING_TYPE, -1, positive=False)
    if code == -1:
        notes.append(f"{m.key(gguf.Keys.LLM.POOLING_TYPE)} is absent: read as mean pooling (llama.cpp then pools as "
                     f"the caller asks)")
        code = gguf.PoolingType.MEAN.value
    if kinds.get(code) not in modes:
        raise UnsupportedError(f"{path}: pooling_type {code} ({kinds.get(code, 'unknown')}) is not a "
                               f"sentence-transformers pooling; supported: "
                               f"{', '.join(f'{gguf.PoolingType[v].value} ({v})' for v in modes)}")
    dense, width = [], spec.hidden_size
    for k, (canonical, gname) in enumerate(head_names().items()):
        ref = tensors.get(canonical)
        if ref is None:
            if k < len(head_names()) - 1 and dense_name(k + 1) in tensors:
                raise InputError(path, f"{head_names()[dense_name(k + 1)]} without {gname}")
            break
        out_f, in_f = ref.shape
        prefix = gname.removesuffix(".weight")
        for key, want in (("feat_in", in_f), ("feat_out", out_f)):
            suffix = "{arch}." + f"{prefix}_{key}"
            if m.has(suffix) and m.integer(suffix) != want:
                raise InputError(path, f"metadata {m.key(suffix)!r} is {m.integer(suffix)} but {gname} has shape "
                                       f"{list(ref.shape)}")
        if in_f != width:
            raise InputError(path, f"{gname} reads {in_f} features but the module before it gives {width}")
        dense.append(DenseLayer(in_features=in_f, out_features=out_f, bias=False, activation_function=IDENTITY,
                                path=prefix, dtype=ref.dtype))
        width = out_f
    notes.append("GGUF stores no normalisation of the embedding: read as L2-normalised (EmbeddingGemma's "
                 "Normalize module; llama.cpp's embedding mode normalises by default)")
    return EmbeddingHead(pooling=modes[kinds[code]], word_embedding_dimension=spec.hidden_size, dense=tuple(dense),
                         normalize=True, modules=("Transformer", "Pooling") + ("Dense",) * len(dense) + ("Normalize",))


# ----------------------------------------------------------------------------- writing


def head_tensors(ckpt: Checkpoint) -> dict[str, TensorRef]:
    """The head weights a gemma-embedding file holds (dense_2, dense_3), for an encoder's checkpoint."""
    row = FAMILY_TABLE.get(ckpt.spec.family)
    if row is None or row.rules.lm_head:
        return {}
    return {n: r for n, r in ckpt.head_tensors.items() if n in head_names()}


def head_problems(head: EmbeddingHead | None, hidden: int) -> list[str]:
    """What llama.cpp's gemma-embedding cannot run of an embedding head."""
    if head is None:
        return ["no pooling or dense modules (llama.cpp's gemma-embedding pools and projects)"]
    problems = []
    if head.pooling not in POOLING_TYPES or not head.include_prompt:
        problems.append(f"pooling {head.pooling}{'' if head.include_prompt else ' without the prompt'}: llama.cpp "
                        f"has {', '.join(POOLING_TYPES)} over every token")
    if len(head.dense) > len(HEAD_TENSOR_MEMBERS) or any(d.bias or d.activation != "identity" for d in head.dense):
        problems.append(f"dense layers {', '.join(f'{d.activation}, bias {str(d.bias).lower()}' for d in head.dense)}"
                        f": llama.cpp's converter keeps at most {len(HEAD_TENSOR_MEMBERS)} weights (dense_2, "
                        f"dense_3), without bias or activation")
    if len(head.dense) == len(HEAD_TENSOR_MEMBERS) and head.dense[-1].out_features != hidden:
        # llama.cpp creates dense_3 as {dense_3_feat_in, n_embd}: the second projection returns to the hidden size
        problems.append(f"the second dense layer gives {head.dense[-1].out_features} features: llama.cpp's dense_3 "
                        f"returns to the hidden size {hidden}")
    if not head.normalize:
        problems.append("no L2 normalisation: GGUF cannot say so (llama.cpp's embedding mode normalises by default)")
    return problems


def add_head_metadata(w: Any, head: EmbeddingHead) -> None:
    """pooling_type and each dense layer's widths, as llama.cpp's converter writes them."""
    import gguf

    w.add_pooling_type(gguf.PoolingType[POOLING_TYPES.get(head.pooling.split("+")[0], "MEAN")])
    for d, gname in zip(head.dense, head_names().values()):
        w.add_dense_features_dims(gname.removesuffix(".weight"), d.in_features, d.out_features)


__all__ = ["HEAD_TENSOR_MEMBERS", "POOLING_TYPES", "head_names", "embedding_head", "head_tensors", "head_problems",
           "add_head_metadata"]
