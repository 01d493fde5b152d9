"""What every runtime shares: the result of a forward pass (`RuntimeResult`), where a loaded model's modules are
(`Anatomy`), the `LoadedModel` protocol, HF's module names, and torch dtype helpers. A leaf of the runtimes package:
the runtime modules import it, never the package's `__init__` (which imports them).

torch is imported inside the functions that need it, never at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class RuntimeResult:
    """What one forward pass produced, moved to the CPU as float32 torch tensors."""

    logits: Any  # [B, T, V]; None for an embedding model (no LM head)
    hidden_states: list[Any]  # L + 2 tensors [B, T, d] (see the module docstring)
    runtime: str
    device: str
    dtype: str
    source: str
    seconds: float = 0.0  # load + forward, wall time
    notes: list[str] = field(default_factory=list)
    embedding: Any = None  # [B, D]: an embedding model's pooled, projected, normalised output (runtimes.pooling)
    # A mixture-of-experts model's routing, per layer: (probabilities [B*T, E] float32, expert indices [B*T, k]);
    # None for a dense model or a runtime that does not report it (parity compares the expert sets)
    routing: list[Any] | None = None

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


# ----------------------------------------------------------------------------- experts' routing
def capture_routing(layers: Any) -> tuple[list[Any], dict[int, Any]]:
    """Forward hooks on every layer's `router` (this runtime's and transformers' alike: (probabilities, weights,
    indices)): returns the hook handles and {layer: (probabilities, indices)} filled by the next forward pass."""
    seen: dict[int, Any] = {}
    handles = []
    for i, layer in enumerate(layers):
        router = getattr(layer, "router", None)
        if router is not None:
            def hook(_m: Any, _args: Any, out: Any, i: int = i) -> None:
                seen[i] = (to_cpu_float(out[0].detach()), out[2].detach().cpu())
            handles.append(router.register_forward_hook(hook))
    return handles, seen


def routing_of(seen: dict[int, Any], num_layers: int) -> list[Any] | None:
    """The captured routing as RuntimeResult.routing (None when no layer routed)."""
    return [seen[i] for i in range(num_layers)] if seen and len(seen) == num_layers else None
