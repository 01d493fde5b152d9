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

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..checkpoint import Checkpoint
from ..errors import InputError, UnsupportedError

RUNTIMES = ("auto", "reference", "transformers", "keras")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16")
NATIVE_RUNTIME = {"keras": "keras", "hf": "transformers"}  # every other format runs on `reference`


@dataclass
class RuntimeResult:
    """What one forward pass produced, moved to the CPU as float32 torch tensors."""

    logits: Any  # [B, T, V]
    hidden_states: list[Any]  # L + 2 tensors [B, T, d] (see the module docstring)
    runtime: str
    device: str
    dtype: str
    source: str
    seconds: float = 0.0  # load + forward, wall time
    notes: list[str] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.hidden_states) - 2


@dataclass
class Anatomy:
    """Where the real modules of a loaded model are, for tracing. Every runtime's modules are
    `torch.nn.Module`s (keras layers are too, on keras' torch backend), so one set of hooks serves all.

    `roles` maps a role to a module path relative to a decoder block (a role the runtime lacks resolves to
    nothing): attention, q, k, v, o, q_norm, k_norm, mlp (absent in keras-hub, whose FFN is three dense
    layers called by the block itself), gate, up, down. `layouts` says how the q/k/v (and q/k norm)
    outputs are laid out: "bt(hd)" [B, T, heads * D], "bthd" [B, T, heads, D], "bhtd" [B, heads, T, D].
    """

    root: Any  # the module that holds everything (model / backbone)
    embedding: Any  # token ids -> embedding (scaled inside or not: the input of block 0 is what counts)
    embedding_weight: Any  # E [V, d] as the runtime holds it
    blocks: list[Any]
    block_names: list[str]  # e.g. model.layers.0 / transformer_layers.0
    final_norm: Any
    output_weight: Any | None  # the matrix the output projection multiplies by (the embedding when tied)
    roles: dict[str, str]
    layouts: dict[str, str]
    head_dim: int | None = None  # the runtime's own head_dim, for layouts that flatten heads

    def part(self, block: int, role: str) -> Any | None:
        """The module playing `role` in decoder block `block`, or None."""
        path = self.roles.get(role)
        if path is None:
            return None
        obj = self.blocks[block]
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj


class LoadedModel(Protocol):
    """A checkpoint loaded by one runtime, kept for several forward passes."""

    runtime: str
    device: str
    dtype: str
    source: str

    def forward(self, token_ids: list[list[int]]) -> "RuntimeResult": ...

    def anatomy(self) -> Anatomy: ...

    def close(self) -> None: ...


# Where `verify` finds each part of a decoder layer, named as transformers names its modules (the reference
# runtime uses the same names), and how outputs are laid out: q/k/v_proj give [B, T, heads * D]; Gemma 3's
# q_norm/k_norm run after the transpose to [B, heads, T, D].
HF_MODULE_ROLES = {"attention": "self_attn", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
                   "v": "self_attn.v_proj", "o": "self_attn.o_proj", "q_norm": "self_attn.q_norm",
                   "k_norm": "self_attn.k_norm", "mlp": "mlp", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
                   "down": "mlp.down_proj"}
HF_MODULE_LAYOUTS = {"q": "bt(hd)", "k": "bt(hd)", "v": "bt(hd)", "q_norm": "bhtd", "k_norm": "bhtd"}


def torch_dtype(name: str) -> Any:
    """torch's dtype of a dtype name (float32, bfloat16, float16; float64 for the reference runtime's
    round-off measurement in `parity`)."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
            "float64": torch.float64}[name]


def to_cpu_float(t: Any) -> Any:
    """A tensor of any runtime as a detached float32 CPU torch tensor."""
    import torch

    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    return t.detach().to(device="cpu", dtype=torch.float32)


def resolve_runtime(ckpt: Checkpoint, runtime: str = "auto") -> str:
    """The runtime that will run `ckpt`: `auto` is the source format's native one."""
    if runtime not in RUNTIMES:
        raise InputError(None, f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    if ckpt.is_card:
        raise InputError(ckpt.source, "is a built-in card: it has an architecture but no weights to run")
    if runtime == "auto":
        return NATIVE_RUNTIME.get(ckpt.format, "reference")
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
        return model.forward(ids)
    finally:
        model.close()


__all__ = ["RuntimeResult", "Anatomy", "LoadedModel", "load_model", "run", "resolve_runtime", "resolve_device",
           "as_token_batch", "RUNTIMES", "DEVICES", "DTYPES"]
