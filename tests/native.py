"""Logits and token ids straight from the native libraries (transformers, keras-hub), with none of our code
in the path: what converted checkpoints are judged against."""

from __future__ import annotations

import os

import numpy as np

# Longer than the tiny models' sliding window (6), so local layers really mask.
TOKENS = np.array([[2, 17, 45, 301, 8, 99, 120, 7, 250, 33, 64, 5, 4, 200, 150, 11, 90, 310, 42, 77]])


def hf_logits(path: str, ids: np.ndarray = TOKENS) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.float().numpy()


def keras_logits(path: str, ids: np.ndarray = TOKENS) -> np.ndarray:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import keras_hub

    backbone = keras_hub.models.Backbone.from_preset(path, dtype="float32")
    hidden = backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    # ReversibleEmbedding(reverse=True): h @ E^T, then the final soft cap when the model has one.
    return keras.ops.convert_to_numpy(backbone.token_embedding(hidden, reverse=True)).astype(np.float32)


def hf_token_ids(path: str, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(path)(text)["input_ids"])


def keras_token_ids(path: str, text: str) -> list[int]:
    """Ids of keras-hub's CausalLM preprocessor tokenizer, BOS prepended as its preprocessor does."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import keras_hub

    lm = keras_hub.models.CausalLM.from_preset(path)
    tok = lm.preprocessor.tokenizer
    return [int(tok.start_token_id)] + [int(i) for i in keras.ops.convert_to_numpy(tok(text))]
