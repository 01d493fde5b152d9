"""The tensor-role table: one row per kind of tensor a checkpoint holds.

A row gives the canonical name template (Hugging Face's Gemma 2/3 names), the canonical shape as a formula of
spec fields, the kind (norm, linear, embedding), the group it is counted and quantized in, when a spec has it,
and what it is tied to. `expected_tensors`, the parameter breakdown, shape messages and the quantization
groups are all derived from these rows; the formats map roles to their own names in their own tables.

Templates may hold `{i}` (the layer). Mixture-of-experts weights are stacked, as transformers and llama.cpp store
them: such a role's shape starts with the expert count (a spec field), e.g. ("moe_experts", "ffn2", "hidden_size").
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
    # Gemma 4: the per-layer embedding table packs every layer's P-wide embedding side by side
    "ple_width": (lambda s: s.num_layers * s.per_layer_input_size,
                  lambda s: f"num_layers={s.num_layers} x per_layer_input_size={s.per_layer_input_size}"),
    "moe_gate_up": (lambda s: 2 * s.moe_intermediate_size,
                    lambda s: f"2 x moe_intermediate_size={s.moe_intermediate_size}"),
    "one": (lambda s: 1, lambda s: "one value"),
    # Gemma 3n's AltUp: the prediction coefficients map the router's n modalities to an n x n mixing matrix
    "altup_coefs": (lambda s: s.altup_num_inputs ** 2,
                    lambda s: f"altup_num_inputs={s.altup_num_inputs} squared"),
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
    "per_layer_inputs": lambda s: bool(getattr(s, "per_layer_input_size", 0)),
    "experts": lambda s: bool(getattr(s, "moe_experts", 0)),
    "layer_scalar": lambda s: bool(getattr(s, "layer_scalar", False)),
    "altup": lambda s: getattr(s, "altup_num_inputs", 0) > 1,
    # one stream projection in and one out per stream beyond the active one (Gemma 3n: streams 1..3)
    **{f"altup_stream{j}": (lambda s, j=j: getattr(s, "altup_num_inputs", 0) > j) for j in (1, 2, 3)},
    "laurel": lambda s: bool(getattr(s, "laurel_rank", 0)),
}

# Per-layer presence rules: whether layer i of a spec has a role the spec has (KV-shared layers compute no K/V;
# K=V layers have no v_proj). A spec without those fields has every role on every layer.
LAYER_PRESENCE: dict[str, Callable[[Any, int], bool]] = {
    "every_layer": lambda s, i: True,
    "computes_kv": lambda s, i: not (hasattr(s, "kv_shared") and s.kv_shared(i)),
    "stores_v": lambda s, i: not (hasattr(s, "kv_shared") and (s.kv_shared(i) or s.k_eq_v(i))),
}


def _at(spec: Any, layer: int | None) -> Any:
    """The spec as layer `layer` sees it (its own head geometry and FFN width), or the spec itself."""
    return spec if layer is None or not hasattr(spec, "at_layer") else spec.at_layer(layer)


@dataclass(frozen=True)
class Role:
    key: str
    template: str  # canonical name; {i} = layer
    shape: tuple[str, ...]  # dimension names (spec attributes or DIMENSIONS), outermost first
    kind: str  # "norm" | "linear" | "embedding"
    group: str  # "embedding" | "output" | "attention" | "feedforward" | "norms"
    present: str = "always"  # a key of PRESENCE
    tied_to: str | None = None  # a role whose tensor stands in for this one when the spec ties them
    layer_present: str = "every_layer"  # a key of LAYER_PRESENCE: which layers have it
    # files may store the tensor on a layer that does not use it (Gemma 4's original files keep k/v of KV-shared
    # layers): a reader accepts it there and sets it aside
    stored_unused: bool = False
    # a finer count the breakdown adds beside its group (Gemma 4: "per_layer_embedding", "per_layer_inputs",
    # "experts"), listed only where a spec has it
    subgroup: str | None = None
    parameter: bool = True  # False: a stored buffer (layer_scalar), counted apart and not in the total

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.template

    def applies(self, spec: Any, layer: int | None = None) -> bool:
        """Whether the spec has the role; with `layer`, whether that layer has it."""
        return PRESENCE[self.present](spec) and (layer is None or LAYER_PRESENCE[self.layer_present](spec, layer))

    def shape_of(self, spec: Any, layer: int | None = None) -> tuple[int, ...]:
        """The shape; with `layer`, that layer's (Gemma 4: head geometry of full layers, double-wide MLP)."""
        s = _at(spec, layer)
        return tuple(DIMENSIONS[d][0](s) if d in DIMENSIONS else int(getattr(s, d)) for d in self.shape)

    def explain(self, spec: Any, layer: int | None = None) -> str:
        """Which config values the shape comes from: 'num_attention_heads=8 x head_dim=256, hidden_size=2048'."""
        def says(s: Any) -> str:
            return ", ".join(DIMENSIONS[d][1](s) if d in DIMENSIONS else f"{d}={getattr(s, d)}" for d in self.shape)

        text = says(_at(spec, layer))
        return text + (f" on layer {layer}" if layer is not None and text != says(spec) else "")

    def numel(self, spec: Any, layer: int | None = None) -> int:
        n = 1
        for x in self.shape_of(spec, layer):
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
    Role("k", _L + "self_attn.k_proj.weight", ("kv_width", "hidden_size"), "linear", "attention",
         layer_present="computes_kv", stored_unused=True),
    Role("v", _L + "self_attn.v_proj.weight", ("kv_width", "hidden_size"), "linear", "attention",
         layer_present="stores_v", stored_unused=True),
    Role("o", _L + "self_attn.o_proj.weight", ("hidden_size", "q_width"), "linear", "attention"),
    Role("q_norm", _L + "self_attn.q_norm.weight", ("head_dim",), "norm", "norms", "qk_norm"),
    Role("k_norm", _L + "self_attn.k_norm.weight", ("head_dim",), "norm", "norms", "qk_norm",
         layer_present="computes_kv", stored_unused=True),
    Role("gate", _L + "mlp.gate_proj.weight", ("intermediate_size", "hidden_size"), "linear", "feedforward"),
    Role("up", _L + "mlp.up_proj.weight", ("intermediate_size", "hidden_size"), "linear", "feedforward"),
    Role("down", _L + "mlp.down_proj.weight", ("hidden_size", "intermediate_size"), "linear", "feedforward"),
    # Gemma 4: a stored per-layer output scale (a buffer in transformers, not a parameter)
    Role("layer_scalar", _L + "layer_scalar", ("one",), "scalar", "norms", "layer_scalar", parameter=False),
    # Gemma 4 per-layer input embeddings (PLE): the gate, the projection back and its norm in every layer ...
    Role("ple_gate", _L + "per_layer_input_gate.weight", ("per_layer_input_size", "hidden_size"), "linear",
         "embedding", "per_layer_inputs", subgroup="per_layer_inputs"),
    Role("ple_proj", _L + "per_layer_projection.weight", ("hidden_size", "per_layer_input_size"), "linear",
         "embedding", "per_layer_inputs", subgroup="per_layer_inputs"),
    Role("ple_post_norm", _L + "post_per_layer_input_norm.weight", ("hidden_size",), "norm", "norms",
         "per_layer_inputs"),
    # Gemma 3n per layer: AltUp's router (its norm, the modality projection), prediction and correction coefficients
    # and the scale of the corrected active stream; LAuReL's low-rank residual and its norm
    Role("altup_router_norm", _L + "altup.router_norm.weight", ("hidden_size",), "norm", "norms", "altup"),
    Role("altup_router", _L + "altup.modality_router.weight", ("altup_num_inputs", "hidden_size"), "linear",
         "attention", "altup", subgroup="altup"),
    Role("altup_predict", _L + "altup.prediction_coefs.weight", ("altup_coefs", "altup_num_inputs"), "linear",
         "attention", "altup", subgroup="altup"),
    Role("altup_correct", _L + "altup.correction_coefs.weight", ("altup_num_inputs", "altup_num_inputs"), "linear",
         "attention", "altup", subgroup="altup"),
    Role("altup_output_scale", _L + "altup.correct_output_scale", ("hidden_size",), "scale", "attention", "altup",
         subgroup="altup"),
    Role("laurel_left", _L + "laurel.linear_left.weight", ("laurel_rank", "hidden_size"), "linear", "attention",
         "laurel", subgroup="laurel"),
    Role("laurel_right", _L + "laurel.linear_right.weight", ("hidden_size", "laurel_rank"), "linear", "attention",
         "laurel", subgroup="laurel"),
    Role("laurel_norm", _L + "laurel.post_laurel_norm.weight", ("hidden_size",), "norm", "norms", "laurel"),
    # ... and the mixture of experts beside the dense MLP: router, its scales, stacked experts, their norms
    Role("router", _L + "router.proj.weight", ("moe_experts", "hidden_size"), "linear", "feedforward", "experts",
         subgroup="experts"),
    Role("router_scale", _L + "router.scale", ("hidden_size",), "scale", "feedforward", "experts",
         subgroup="experts"),
    Role("expert_scale", _L + "router.per_expert_scale", ("moe_experts",), "scale", "feedforward", "experts",
         subgroup="experts"),
    Role("experts_gate_up", _L + "experts.gate_up_proj", ("moe_experts", "moe_gate_up", "hidden_size"),
         "linear", "feedforward", "experts", subgroup="experts"),
    Role("experts_down", _L + "experts.down_proj", ("moe_experts", "hidden_size", "moe_intermediate_size"),
         "linear", "feedforward", "experts", subgroup="experts"),
    Role("moe_ffn_norm", _L + "pre_feedforward_layernorm_2.weight", ("hidden_size",), "norm", "norms", "experts"),
    Role("post_dense_norm", _L + "post_feedforward_layernorm_1.weight", ("hidden_size",), "norm", "norms",
         "experts"),
    Role("post_moe_norm", _L + "post_feedforward_layernorm_2.weight", ("hidden_size",), "norm", "norms", "experts"),
    # top level: the per-layer embedding table, the model-side projection into it and its norm
    Role("ple", "model.embed_tokens_per_layer.weight", ("per_layer_vocab_size", "ple_width"), "embedding",
         "embedding", "per_layer_inputs", subgroup="per_layer_embedding"),
    Role("ple_model_proj", "model.per_layer_model_projection.weight", ("ple_width", "hidden_size"), "linear",
         "embedding", "per_layer_inputs", subgroup="per_layer_inputs"),
    Role("ple_proj_norm", "model.per_layer_projection_norm.weight", ("per_layer_input_size",), "norm", "norms",
         "per_layer_inputs"),
    # Gemma 3n top level: AltUp's projections of the embedding into streams 1..n-1, and back before the final norm
    *(Role(f"altup_proj{j}", f"model.altup_projections.{j - 1}.weight", ("hidden_size", "hidden_size"), "linear",
           "attention", f"altup_stream{j}", subgroup="altup") for j in (1, 2, 3)),
    *(Role(f"altup_unembed{j}", f"model.altup_unembed_projections.{j - 1}.weight", ("hidden_size", "hidden_size"),
           "linear", "attention", f"altup_stream{j}", subgroup="altup") for j in (1, 2, 3)),
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
# The finer counts only Gemma 4's and Gemma 3n's rows have (Role.subgroup; listed only where a spec has them), and "buffers":
# stored values that are not parameters (transformers' num_parameters leaves them out, and so does the total).
EXTRA_GROUPS = ("per_layer_embedding", "per_layer_inputs", "experts", "altup", "laurel", "buffers")


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


def role_shape(spec: Any, key: str, layer: int | None = None) -> tuple[int, ...]:
    return ROLE_TABLE[key].shape_of(spec, layer)


def parameter_breakdown(spec: Any) -> dict[str, int]:
    """Counts by group, tied weights counted once (the JSON `parameters` object of `summary`). Per-layer roles are
    counted layer by layer (Gemma 4's layers differ; `per_layer` is layer 0's count). Keys only a spec with such
    rows gets: the rows' subgroups `per_layer_embedding` (the PLE table, inside `embedding`), `per_layer_inputs`
    (its projections, inside `embedding`) and `experts` (router and stacked experts, inside `feedforward`);
    `effective` (the total without the PLE table: the count Google quotes for E2B/E4B), `experts_active` (the
    total with top_k of the experts per token) and `buffers` (stored values that are not parameters)."""
    groups = dict.fromkeys(GROUPS, 0)
    extra: dict[str, int] = {}
    first_layer = 0
    tied_extra = 0
    for key, r in ROLE_TABLE.items():
        if r.tied_to and not r.applies(spec):  # stands in by tying: counted once, but an untied copy would add it
            tied_extra += r.numel(spec)
            continue
        if not r.applies(spec):
            continue
        if r.per_layer:
            n = sum(r.numel(spec, i) for i in range(spec.num_layers) if r.applies(spec, i))
            if r.parameter and spec.num_layers and r.applies(spec, 0):
                first_layer += r.numel(spec, 0)
        else:
            n = r.numel(spec)
        if not r.parameter:
            extra["buffers"] = extra.get("buffers", 0) + n
            continue
        groups[r.group] += n
        if r.subgroup:
            extra[r.subgroup] = extra.get(r.subgroup, 0) + n
    total = sum(groups.values())
    out = {
        "total": total,
        "total_if_untied": total + tied_extra,
        "embedding": groups["embedding"],
        "output": groups["output"],
        "attention": groups["attention"],
        "feedforward": groups["feedforward"],
        "norms": groups["norms"],
        "per_layer": first_layer,
        **extra,
    }
    if extra.get("per_layer_embedding"):
        out["effective"] = total - extra["per_layer_embedding"]
    experts = getattr(spec, "moe_experts", 0)
    if experts:  # the stacked experts' weights: only top_k of them run for a token
        stacked = sum(r.numel(spec) * spec.num_layers for r in ROLE_TABLE.values()
                      if r.subgroup == "experts" and r.per_layer and r.shape[:1] == ("moe_experts",)
                      and len(r.shape) == 3 and r.applies(spec))
        out["experts_active"] = total - stacked + stacked * spec.moe_top_k // experts
    return out


__all__ = ["Role", "ROLE_TABLE", "ROLES", "LAYER_ROLES", "NORM_ROLES", "DIMENSIONS", "PRESENCE", "role",
           "group_of", "layer_roles", "top_roles", "role_shape", "parameter_breakdown", "GROUPS", "EXTRA_GROUPS",
           "LAYER_PRESENCE"]
