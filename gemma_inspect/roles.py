"""The tensor-role table: one row per kind of tensor a checkpoint holds.

A row gives the canonical name template (Hugging Face's Gemma 2/3 names), the canonical shape as a formula of
spec fields, the kind (norm, linear, embedding), the group it is counted and quantized in, when a spec has it,
and what it is tied to. `expected_tensors`, the parameter breakdown, shape messages and the quantization
groups are all derived from these rows; the formats map roles to their own names in their own tables.

Templates may hold `{i}` (the layer). Mixture-of-experts weights are stacked, as transformers and llama.cpp store
them: such a role's shape starts with the expert count (a spec field), e.g. ("num_experts", "ffn2", "hidden_size").
Shapes are tuples of dimension names, each one either a spec attribute or one of the products in `DIMENSIONS`;
a family that needs another product (a per-layer embedding's num_layers x width) adds it there, as a row.

This module is a leaf: it imports nothing from the package (a spec is used through its attributes).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterator, Mapping, Set as AbstractSet
from typing import Any, Callable

# Derived dimensions: name -> (how to compute it from a spec, how to explain it in a message).
DIMENSIONS: dict[str, tuple[Callable[[Any], int], Callable[[Any], str]]] = {
    "q_width": (lambda s: s.num_attention_heads * s.head_dim,
                lambda s: f"num_attention_heads={s.num_attention_heads} x head_dim={s.head_dim}"),
    "kv_width": (lambda s: s.num_key_value_heads * s.head_dim,
                 lambda s: f"num_key_value_heads={s.num_key_value_heads} x head_dim={s.head_dim}"),
}


def _parametric(s: Any) -> bool:
    return s.norm_kind != "layernorm_nonparametric"


# Presence rules: when a spec has a role (every rule names what it depends on, for messages and for new rows).
PRESENCE: dict[str, Callable[[Any], bool]] = {
    "always": lambda s: True,
    "norm_weights": _parametric,  # OLMo 1's LayerNorm has no weights at all
    "post_norms": lambda s: _parametric(s) and s.norm_placement == "pre+post",
    "qk_norm": lambda s: _parametric(s) and s.qk_norm,
    "untied": lambda s: not s.tied_embeddings,
}


@dataclass(frozen=True)
class Role:
    key: str
    template: str  # canonical name; {i} = layer
    shape: tuple[str, ...]  # dimension names (spec attributes or DIMENSIONS), outermost first
    kind: str  # "norm" | "linear" | "embedding"
    group: str  # "embedding" | "output" | "attention" | "feedforward" | "norms"
    present: str = "always"  # a key of PRESENCE
    tied_to: str | None = None  # a role whose tensor stands in for this one when the spec ties them

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.template

    def applies(self, spec: Any) -> bool:
        return PRESENCE[self.present](spec)

    def shape_of(self, spec: Any) -> tuple[int, ...]:
        return tuple(DIMENSIONS[d][0](spec) if d in DIMENSIONS else int(getattr(spec, d)) for d in self.shape)

    def explain(self, spec: Any) -> str:
        """Which config values the shape comes from: 'num_attention_heads=8 x head_dim=256, hidden_size=2048'."""
        return ", ".join(DIMENSIONS[d][1](spec) if d in DIMENSIONS else f"{d}={getattr(spec, d)}"
                         for d in self.shape)

    def numel(self, spec: Any) -> int:
        n = 1
        for x in self.shape_of(spec):
            n *= x
        return n


_L = "model.layers.{i}."
ROLE_TABLE: dict[str, Role] = {r.key: r for r in (
    Role("embed", "model.embed_tokens.weight", ("vocab_size", "hidden_size"), "embedding", "embedding"),
    Role("final_norm", "model.norm.weight", ("hidden_size",), "norm", "norms", "norm_weights"),
    Role("lm_head", "lm_head.weight", ("vocab_size", "hidden_size"), "embedding", "output", "untied",
         tied_to="embed"),
    # per layer, in file order
    Role("attn_norm", _L + "input_layernorm.weight", ("hidden_size",), "norm", "norms", "norm_weights"),
    Role("post_attn_norm", _L + "post_attention_layernorm.weight", ("hidden_size",), "norm", "norms", "post_norms"),
    Role("ffn_norm", _L + "pre_feedforward_layernorm.weight", ("hidden_size",), "norm", "norms", "norm_weights"),
    Role("post_ffn_norm", _L + "post_feedforward_layernorm.weight", ("hidden_size",), "norm", "norms", "post_norms"),
    Role("q", _L + "self_attn.q_proj.weight", ("q_width", "hidden_size"), "linear", "attention"),
    Role("k", _L + "self_attn.k_proj.weight", ("kv_width", "hidden_size"), "linear", "attention"),
    Role("v", _L + "self_attn.v_proj.weight", ("kv_width", "hidden_size"), "linear", "attention"),
    Role("o", _L + "self_attn.o_proj.weight", ("hidden_size", "q_width"), "linear", "attention"),
    Role("q_norm", _L + "self_attn.q_norm.weight", ("head_dim",), "norm", "norms", "qk_norm"),
    Role("k_norm", _L + "self_attn.k_norm.weight", ("head_dim",), "norm", "norms", "qk_norm"),
    Role("gate", _L + "mlp.gate_proj.weight", ("intermediate_size", "hidden_size"), "linear", "feedforward"),
    Role("up", _L + "mlp.up_proj.weight", ("intermediate_size", "hidden_size"), "linear", "feedforward"),
    Role("down", _L + "mlp.down_proj.weight", ("hidden_size", "intermediate_size"), "linear", "feedforward"),
)}

class _View(Mapping[str, Any]):
    """A view of ROLE_TABLE read live, so that a row added at run time (a new family's tensors) shows everywhere."""

    def __init__(self, value: Callable[[Role], Any], keep: Callable[[Role], bool] = lambda r: True):
        self._value, self._keep = value, keep

    def __getitem__(self, key: str) -> Any:
        r = ROLE_TABLE[key]
        if not self._keep(r):
            raise KeyError(key)
        return self._value(r)

    def __iter__(self) -> Iterator[str]:
        return (k for k, r in ROLE_TABLE.items() if self._keep(r))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _KeySet(AbstractSet[str]):
    """The keys of the roles that pass `keep`, read live (`role in NORM_ROLES`)."""

    def __init__(self, keep: Callable[[Role], bool]):
        self._keep = keep

    def __contains__(self, key: object) -> bool:
        r = ROLE_TABLE.get(key) if isinstance(key, str) else None
        return r is not None and self._keep(r)

    def __iter__(self) -> Iterator[str]:
        return (k for k, r in ROLE_TABLE.items() if self._keep(r))

    def __len__(self) -> int:
        return sum(1 for _ in self)


ROLES: Mapping[str, str] = _View(lambda r: r.template)  # role -> canonical name template
LAYER_ROLES: AbstractSet[str] = _KeySet(lambda r: r.per_layer)  # in table (file) order
NORM_ROLES: AbstractSet[str] = _KeySet(lambda r: r.kind == "norm")
# The groups in the order the parameter breakdown and GGUF's quantization summary list them.
GROUPS = ("embedding", "attention", "feedforward", "norms", "output")


def role(key: str) -> Role:
    return ROLE_TABLE[key]


def group_of(key: str) -> str:
    return ROLE_TABLE[key].group


def layer_roles(spec: Any) -> list[str]:
    """The per-layer roles a checkpoint of this spec has, in a stable (file) order."""
    return [k for k, r in ROLE_TABLE.items() if r.per_layer and r.applies(spec)]


def top_roles(spec: Any) -> list[str]:
    """The top-level roles a checkpoint of this spec has."""
    return [k for k, r in ROLE_TABLE.items() if not r.per_layer and r.applies(spec)]


def role_shape(spec: Any, key: str) -> tuple[int, ...]:
    return ROLE_TABLE[key].shape_of(spec)


def parameter_breakdown(spec: Any) -> dict[str, int]:
    """Counts by group, tied weights counted once (the JSON `parameters` object of `summary`)."""
    groups = dict.fromkeys(GROUPS, 0)
    per_layer = 0
    tied_extra = 0
    for key, r in ROLE_TABLE.items():
        if r.tied_to and not r.applies(spec):  # stands in by tying: counted once, but an untied copy would add it
            tied_extra += r.numel(spec)
            continue
        if not r.applies(spec):
            continue
        n = r.numel(spec) * (spec.num_layers if r.per_layer else 1)
        groups[r.group] += n
        if r.per_layer:
            per_layer += r.numel(spec)
    total = sum(groups.values())
    return {
        "total": total,
        "total_if_untied": total + tied_extra,
        "embedding": groups["embedding"],
        "output": groups["output"],
        "attention": groups["attention"],
        "feedforward": groups["feedforward"],
        "norms": groups["norms"],
        "per_layer": per_layer,
    }


__all__ = ["Role", "ROLE_TABLE", "ROLES", "LAYER_ROLES", "NORM_ROLES", "DIMENSIONS", "PRESENCE", "role",
           "group_of", "layer_roles", "top_roles", "role_shape", "parameter_breakdown", "GROUPS"]
