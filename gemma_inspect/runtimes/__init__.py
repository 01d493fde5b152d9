"""Runtimes: turn a Checkpoint and token ids into logits and per-layer hidden states.

`reference` is this project's own PyTorch forward pass (any format); `transformers` runs Hugging Face's
implementation; `keras` runs keras-hub's on the torch backend. `auto` picks the source's native runtime.
Every runtime returns the same points, so any two can be compared layer by layer:

    hidden_states[0]      the embedding output, after the sqrt(d) scale
    hidden_states[1..L]   the output of each decoder block
    hidden_states[L + 1]  the output of the final norm (what the output projection reads)

`load_model` keeps a model loaded for several forward passes and describes where its real modules are
(`Anatomy`), so that `verify` can hook them; `run` is load + one forward pass.

torch, transformers and keras are imported inside the functions that need them, never at import time.
"""

from __future__ import annotations

from typing import Any

from ..checkpoint import Checkpoint
from ..errors import InputError, UnsupportedError
# The shared types live in .types (the runtime modules import them from there); re-exported here.
from .types import (HF_MODULE_LAYOUTS, HF_MODULE_ROLES, Anatomy, LoadedModel, RuntimeResult,  # noqa: F401
                    to_cpu_float, torch_dtype)

RUNTIMES = ("auto", "reference", "transformers", "keras")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16")


def native_runtime(fmt: str) -> str:
    """The runtime `auto` runs a checkpoint of format `fmt` on: the format's own (FormatInfo.native_runtime), or
    the reference runtime."""
    from ..formats import info

    return info(fmt).native_runtime or "reference"


def resolve_runtime(ckpt: Checkpoint, runtime: str = "auto") -> str:
    """The runtime that will run `ckpt`: `auto` is the source format's native one."""
    if runtime not in RUNTIMES:
        raise InputError(None, f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    if ckpt.is_card:
        raise InputError(ckpt.source, "is a built-in card: it has an architecture but no weights to run")
    if runtime == "auto":
        native = native_runtime(ckpt.format)
        if native == "keras":
            from .keras_rt import runs

            if not runs(ckpt.spec.family):  # a backbone the keras runtime does not drive (Gemma3nBackbone)
                return "reference"
        return native
    return runtime


def resolve_device(device: str = "auto") -> str:
    """`auto` -> cuda when torch sees a GPU, else cpu. Asking for cuda without one is an error."""
    if device not in DEVICES:
        raise InputError(None, f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise UnsupportedError("device cuda was requested but torch sees no CUDA GPU "
                               "(torch.cuda.is_available() is False)")
    return "cpu"


def as_token_batch(ckpt: Checkpoint, token_ids: Any) -> list[list[int]]:
    """Token ids as a [B, T] list of lists, each id checked against the vocabulary."""
    import numpy as np

    arr = np.asarray(token_ids)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(None, f"token ids must be a non-empty [T] or [B, T] array of integers, got shape "
                               f"{list(arr.shape)} of {arr.dtype}")
    bad = arr[(arr < 0) | (arr >= ckpt.spec.vocab_size)]
    if bad.size:
        raise InputError(None, f"token id {int(bad[0])} is outside the vocabulary of {ckpt.source} "
                               f"(0..{ckpt.spec.vocab_size - 1})")
    return arr.astype(np.int64).tolist()


ALLOWED_OPTIONS = {"reference": set(),
                   "transformers": {"device_map", "attn_implementation"},
                   "keras": {"attn_implementation"}}


def load_model(ckpt: Checkpoint, runtime: str = "auto", device: str = "auto", dtype: str = "float32",
               **options: Any) -> LoadedModel:
    """Load `ckpt` with a runtime and keep it for several forward passes (`model.forward(ids)`).

    Options: `device_map` (transformers: e.g. "auto" to spread a model over several GPUs with
    accelerate), `attn_implementation` (transformers: any of its names; keras: "eager" keeps keras-hub
    off its fused attention kernel). The reference runtime takes none.
    """
    if dtype not in DTYPES:
        raise InputError(None, f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    name = resolve_runtime(ckpt, runtime)
    dev = resolve_device(device)
    unknown = sorted(k for k, v in options.items() if v is not None and k not in ALLOWED_OPTIONS[name])
    if unknown:
        raise InputError(None, f"runtime {name} has no option {', '.join(unknown)}")
    opts = {k: v for k, v in options.items() if k in ALLOWED_OPTIONS[name]}
    if name == "reference":
        from .reference import ReferenceModel

        return ReferenceModel(ckpt, dev, dtype, **opts)
    if name == "transformers":
        from .transformers_rt import TransformersModel

        return TransformersModel(ckpt, dev, dtype, **opts)
    from .keras_rt import KerasModel

    return KerasModel(ckpt, dev, dtype, **opts)


def run(ckpt: Checkpoint, token_ids: Any, runtime: str = "auto", device: str = "auto",
        dtype: str = "float32", **options: Any) -> RuntimeResult:
    """Run `ckpt` on `token_ids` ([T] or [B, T]) and return logits plus hidden states (options: see
    `load_model`)."""
    ids = as_token_batch(ckpt, token_ids)  # before anything is loaded; load_model checks the rest
    model = load_model(ckpt, runtime, device, dtype, **options)
    try:
        from .pooling import embed_result

        return embed_result(ckpt, model.forward(ids))
    finally:
        model.close()


__all__ = ["RuntimeResult", "Anatomy", "LoadedModel", "load_model", "run", "resolve_runtime", "resolve_device",
           "as_token_batch", "RUNTIMES", "DEVICES", "DTYPES"]
