"""The keras runtime: keras-hub's GemmaBackbone / Gemma3Backbone on keras' torch backend.

A Keras preset is loaded with `keras_hub.models.Backbone.from_preset`; any other checkpoint is built into
the equivalent backbone from its spec and canonical tensors (when keras-hub can express it at all).
The hidden states are collected by calling the backbone's layers in the order its functional graph
calls them (keras_hub/src/models/gemma*/gemma*_backbone.py), which exposes every point the other
runtimes report:

    x = token_embedding(token_ids) * cast(sqrt(hidden_dim), x.dtype)   # hidden_states[0]
    x = decoder_block_i(x, padding_mask=ones)                          # hidden_states[1 + i]
    x = layer_norm(x)                                                  # hidden_states[L + 1]
    logits = token_embedding(x, reverse=True)   # x @ E^T, then the final soft cap (Gemma 2)

KERAS_BACKEND is set to torch here, before keras is first imported, and only on this code path.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from ..checkpoint import Checkpoint
from ..errors import UnsupportedError
from . import RuntimeResult, to_cpu_float


def import_keras() -> Any:
    """keras and keras_hub on the torch backend (an error if keras was already imported on another)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    # keras_hub imports tensorflow (for its preprocessing layers) even on the torch backend: keep its
    # C++ log lines off stderr, and keep it away from the GPU, which belongs to torch here.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import keras_hub  # noqa: F401

    if "tensorflow" in sys.modules:
        try:
            sys.modules["tensorflow"].config.set_visible_devices([], "GPU")
        except Exception:  # already initialised, or a build without GPU support: nothing to hide
            pass
    if keras.config.backend() != "torch":
        raise UnsupportedError(f"the keras runtime needs keras' torch backend, but keras is running on "
                               f"{keras.config.backend()!r} (set KERAS_BACKEND=torch)")
    return keras


def load_backbone(ckpt: Checkpoint, dtype: str) -> Any:
    import keras_hub

    if ckpt.format == "keras":
        return keras_hub.models.Backbone.from_preset(ckpt.source, dtype=dtype)
    from ..formats.keras import keras_problems
    from ..tiny import build_keras_backbone

    problems = keras_problems(ckpt.spec)
    if problems:
        raise UnsupportedError(f"{ckpt.source}: keras-hub cannot run this checkpoint: {'; '.join(problems)}")
    weights = {name: ref.load() for name, ref in ckpt.tensors.items()}
    return build_keras_backbone(ckpt.spec.replace(dtype=dtype), weights)


def run(ckpt: Checkpoint, token_ids: list[list[int]], device: str, dtype: str) -> RuntimeResult:
    import numpy as np
    import torch

    keras = import_keras()
    from keras import ops

    start = time.perf_counter()
    with keras.device(device):
        backbone = load_backbone(ckpt, dtype)
        ids = ops.convert_to_tensor(np.asarray(token_ids, dtype="int32"))
        padding_mask = ops.ones_like(ids)  # one unpadded sequence per row
        gemma3 = type(backbone).__name__ == "Gemma3Backbone"
        with torch.no_grad():
            x = backbone.token_embedding(ids)
            # Gemma's scale, cast to the activation dtype first (45.25 for d = 2048 in bfloat16).
            x = x * ops.cast(ops.sqrt(backbone.hidden_dim), x.dtype)
            hidden = [to_cpu_float(x)]
            for block in backbone.transformer_layers:
                if gemma3:  # text only: no vision mask
                    x = block(x, padding_mask=padding_mask, vision_mask=None)
                else:
                    x = block(x, padding_mask=padding_mask)
                hidden.append(to_cpu_float(x))
            x = backbone.layer_norm(x)
            hidden.append(to_cpu_float(x))
            logits = to_cpu_float(backbone.token_embedding(x, reverse=True))
    del backbone, x
    if device == "cuda":
        torch.cuda.empty_cache()
    return RuntimeResult(logits=logits, hidden_states=hidden, runtime="keras", device=device, dtype=dtype,
                         source=ckpt.source, seconds=time.perf_counter() - start)
