"""The reference runtime: this project's own PyTorch forward pass of Gemma 1, 2 and 3, from GemmaSpec (Gemma 3n's
AltUp, LAuReL and per-layer inputs are in runtimes/gemma3n.py, Gemma 4's per-layer geometry, KV sharing, K=V and
experts in runtimes/gemma4.py, both built from these blocks).

One module, meant to be read top to bottom like a textbook. It takes the canonical tensors of any format
(HF names, [out, in] layout, zero-centred norm weights) and computes what the published implementations
compute, with every Gemma quirk written out where it acts. Symbols in the shape comments: B batch,
T tokens, d hidden size, H query heads, K key/value heads, D head_dim, F FFN width, V vocabulary.

The math is in plain functions (`rms_norm`, `embed`, `apply_rope`, `soft_cap`, ...); small `nn.Module`s
hold the weights and call them, so that `verify` can hook the real modules of this runtime exactly as it
hooks transformers' and keras-hub's (the module names follow transformers': `model.layers.0.self_attn.q_proj`).

It matches transformers to 1e-5 in float32 on tiny models of every family (tests/test_reference.py).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import Checkpoint, canonical_name, expected_tensors
from ..errors import UnsupportedError
from ..spec import SLIDING, GemmaSpec
from .types import torch_dtype

if TYPE_CHECKING:  # pragma: no cover
    from .types import Anatomy, RuntimeResult

# ----------------------------------------------------------------------------- weights
def load_weights(ckpt: Checkpoint, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every canonical tensor as a torch tensor on `device` in the model dtype.

    Norm weights are cast to the model dtype too, as transformers and keras-hub do (a bfloat16 model
    holds bfloat16 norm weights and upcasts them inside the norm), so a float32 checkpoint run in
    bfloat16 sees exactly what the other runtimes see.
    """
    import numpy as np

    out: dict[str, torch.Tensor] = {}
    for name, ref in ckpt.tensors.items():
        arr = ref.load()
        # bfloat16 arrive as ml_dtypes.bfloat16, which torch cannot wrap: widen (exactly) to float32 first.
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        out[name] = t.to(device=device, dtype=dtype)
    return out


# ----------------------------------------------------------------------------- building blocks
def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, offset: int) -> torch.Tensor:
    """RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * (offset + w).

    Gemma stores w zero-centred and the layer applies (1 + w) (offset 1). The whole computation runs in
    float32 and is cast to the model dtype only at the very end: (x * (1 + w)).to(bf16), not
    x.to(bf16) * (1 + w) as Llama does.
    """
    x32 = _wide(x)
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * (offset + _wide(w))).to(x.dtype)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or in float64 when it already is (the float64 run `parity` measures round-off against)."""
    return x if x.dtype == torch.float64 else x.float()


def embed(spec: GemmaSpec, table: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """E[tok] * sqrt(d): [B, T] -> [B, T, d].

    Gemma casts the factor to the activation dtype before multiplying: in bfloat16 sqrt(3072) = 55.4256
    becomes 55.5 and sqrt(2048) = 45.2548 becomes 45.25 (the common porting bug multiplies by the exact
    factor instead). Modules call it through this module's name at run time, so a test can swap in a defect.
    """
    x = table[token_ids]  # [B, T, d], model dtype
    if not spec.scale_embeddings:
        return x
    factor = torch.tensor(math.sqrt(spec.hidden_size), dtype=torch.float32, device=x.device).to(x.dtype)
    return x * factor


def rope_cos_sin(spec: GemmaSpec, layer: int, positions: torch.Tensor,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [T, D] of one layer's rotary embedding.

    Gemma 3 uses two bases: 10k on sliding (local) layers, 1M on global ones, and the 4B+ models
    scale global positions linearly by 8 (position / factor). Frequencies are computed in float32 and
    the tables cast to the activation dtype, as transformers does.
    """
    local = spec.layer_types[layer] == SLIDING
    base = spec.local_rope_theta if local else spec.rope_theta
    factor = spec.rope_local_scaling_factor if local else spec.rope_scaling_factor
    d = spec.head_dim
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32, device=positions.device) / d))  # [D/2]
    # Linear scaling divides the positions by the factor; transformers divides inv_freq, the same product.
    freqs = positions.float()[:, None] * (inv_freq / factor)[None, :]  # [T, D/2]
    # Half-split pairs: dimension i rotates with dimension i + D/2 (not interleaved neighbours).
    emb = torch.cat((freqs, freqs), dim=-1)  # [T, D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, D] rotated by position: x * cos + rotate_half(x) * sin."""
    return x * cos + rotate_half(x) * sin


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma 2's c * tanh(x / c): squashes logits smoothly into (-c, c)."""
    if not cap:
        return x
    return torch.tanh(x / cap) * cap


def attention_mask(spec: GemmaSpec, layer: int, t: int, device: Any) -> torch.Tensor:
    """Which keys each query may see, [T_q, T_k] booleans.

    Causal: key j <= query i. Sliding layers also require j > i - window, so a query sees exactly
    `window` keys, itself included (transformers' `sliding_window_overlay`: kv_idx > q_idx - window;
    keras-hub's band of width window - 1 below the diagonal is the same set).

    Bidirectional (EmbeddingGemma): every key; sliding layers only keys with |i - j| <= window // 2, as
    transformers applies the stored window (its config keeps window // 2 + 1 as an exclusive bound on |i - j|).
    """
    i = torch.arange(t, device=device)[:, None]
    j = torch.arange(t, device=device)[None, :]
    if spec.attention_mask == "bidirectional":
        if spec.layer_types[layer] == SLIDING:
            return (i - j).abs() <= spec.sliding_window // 2
        return torch.ones(t, t, dtype=torch.bool, device=device)
    allowed = j <= i
    if spec.layer_types[layer] == SLIDING:
        allowed = allowed & (j > i - spec.sliding_window)
    return allowed


def activation(kind: str, x: torch.Tensor) -> torch.Tensor:
    """The FFN gate's activation. Gemma's GELU is the tanh approximation (HF `gelu_pytorch_tanh`); the
    exact erf GELU, which some ports use, is a small but real error. SwiGLU peers use SiLU."""
    if kind == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if kind == "gelu":
        return F.gelu(x)
    return F.silu(x)


# ----------------------------------------------------------------------------- modules holding the weights
def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)  # wraps the tensor, no copy


class Linear(nn.Module):
    """y = x @ W^T with W stored [out, in] (no bias anywhere in Gemma)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = _param(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


class RMSNorm(nn.Module):
    """`rms_norm` with its stored (zero-centred) weight; the layer applies (offset + w)."""

    def __init__(self, weight: torch.Tensor, eps: float, offset: int):
        super().__init__()
        self.weight = _param(weight)
        self.eps, self.offset = eps, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, self.offset)


class Embedding(nn.Module):
    """Token ids -> `embed` (the lookup and Gemma's sqrt(d) scale)."""

    def __init__(self, spec: GemmaSpec, weight: torch.Tensor):
        super().__init__()
        self.spec = spec
        self.weight = _param(weight)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return embed(self.spec, self.weight, token_ids)


class Activation(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activation(self.kind, x)

    def extra_repr(self) -> str:
        return self.kind


class Attention(nn.Module):
    """Self-attention of one layer: [B, T, d] -> [B, T, d]. MQA (K = 1), GQA (1 < K < H) and MHA (K = H)
    are one code path: query head h reads key/value head h // (H / K)."""

    def __init__(self, spec: GemmaSpec, w: dict[str, torch.Tensor], layer: int):
        super().__init__()
        self.spec, self.layer = spec, layer
        name = lambda role: canonical_name(role, layer)  # noqa: E731
        self.q_proj, self.k_proj = Linear(w[name("q")]), Linear(w[name("k")])
        self.v_proj, self.o_proj = Linear(w[name("v")]), Linear(w[name("o")])
        self.q_norm = self.k_norm = None
        if spec.qk_norm:
            self.q_norm = RMSNorm(w[name("q_norm")], spec.rms_norm_eps, spec.norm_offset)
            self.k_norm = RMSNorm(w[name("k_norm")], spec.rms_norm_eps, spec.norm_offset)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        b, t, _ = x.shape
        h, k, d = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim

        q = self.q_proj(x).view(b, t, h, d).transpose(1, 2)  # [B, H, T, D]
        kk = self.k_proj(x).view(b, t, k, d).transpose(1, 2)  # [B, K, T, D]
        v = self.v_proj(x).view(b, t, k, d).transpose(1, 2)  # [B, K, T, D]

        if self.q_norm is not None:  # Gemma 3: RMSNorm over D on every query and key head, before RoPE
            q, kk = self.q_norm(q), self.k_norm(kk)

        cos, sin = rope_cos_sin(spec, self.layer, positions, x.dtype)
        q, kk = apply_rope(q, cos, sin), apply_rope(kk, cos, sin)

        # Queries are scaled by query_pre_attn_scalar ** -0.5: head_dim for most models, but d / H for the
        # Gemma 2 27B (144) and Gemma 3 27B (168); Gemma 2 soft-caps the attention logits (c = 50).
        out = attend(spec, self.layer, q, kk, v, spec.query_scale, spec.attention_logit_softcap)  # [B, T, H*D]
        return self.o_proj(out)  # [B, T, d]


def attend(spec: GemmaSpec, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0,
           cap: float | None = None) -> torch.Tensor:
    """Attention of queries [B, H, T, D] over keys and values [B, K, T, D]: softmax(mask(cap(q k^T x scale))) v,
    each K/V head shared among H / K query heads; returns [B, T, H*D] (H*D need not equal d)."""
    b, h, t, d = q.shape
    k = k.repeat_interleave(h // k.shape[1], dim=1)  # [B, K, T, D] -> [B, H, T, D]
    v = v.repeat_interleave(h // v.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale  # [B, H, T, T]
    scores = soft_cap(scores, cap)  # before the mask and the softmax
    scores = scores.masked_fill(~attention_mask(spec, layer, t, q.device), float("-inf"))
    probs = torch.softmax(_wide(scores), dim=-1).to(q.dtype)  # softmax in float32 (or float64)
    return (probs @ v).transpose(1, 2).reshape(b, t, h * d)


class FeedForward(nn.Module):
    """GeGLU: down(gelu(gate(x)) * up(x)), [B, T, d] -> [B, T, F] -> [B, T, d]."""

    def __init__(self, spec: GemmaSpec, w: dict[str, torch.Tensor], layer: int):
        super().__init__()
        self.gate_proj = Linear(w[canonical_name("gate", layer)])
        self.up_proj = Linear(w[canonical_name("up", layer)])
        self.down_proj = Linear(w[canonical_name("down", layer)])
        self.act_fn = Activation(spec.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(nn.Module):
    """One decoder block, [B, T, d] -> [B, T, d].

    Gemma 1 (pre-norm):        x += attn(n1(x));        x += mlp(n2(x))
    Gemma 2/3 (sandwich norm): x += n1b(attn(n1(x)));   x += n2b(mlp(n2(x)))
    The post norms act on the sub-layer output before the residual add, not on the stream.
    """

    def __init__(self, spec: GemmaSpec, w: dict[str, torch.Tensor], layer: int):
        super().__init__()
        norm = lambda role: RMSNorm(w[canonical_name(role, layer)], spec.rms_norm_eps, spec.norm_offset)  # noqa: E731
        sandwich = spec.norm_placement == "pre+post"
        self.input_layernorm = norm("attn_norm")
        self.self_attn = Attention(spec, w, layer)
        self.post_attention_layernorm = norm("post_attn_norm") if sandwich else None
        self.pre_feedforward_layernorm = norm("ffn_norm")
        self.mlp = FeedForward(spec, w, layer)
        self.post_feedforward_layernorm = norm("post_ffn_norm") if sandwich else None

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        a = self.self_attn(self.input_layernorm(x), positions)
        if self.post_attention_layernorm is not None:
            a = self.post_attention_layernorm(a)
        x = x + a

        m = self.mlp(self.pre_feedforward_layernorm(x))
        if self.post_feedforward_layernorm is not None:
            m = self.post_feedforward_layernorm(m)
        return x + m


class OutputHead(nn.Module):
    """[B, T, d] -> [B, T, V]. Tied: logits = h @ E^T, `weight` is the embedding's own Parameter (Gemma has
    no lm_head tensor). Gemma 2 then soft-caps the logits at 30, in the model dtype."""

    def __init__(self, weight: nn.Parameter | torch.Tensor, cap: float | None):
        super().__init__()
        self.weight = weight if isinstance(weight, nn.Parameter) else _param(weight)
        self.cap = cap

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return soft_cap(h @ self.weight.T, self.cap)


class GemmaModel(nn.Module):
    """The whole decoder: embedding, L blocks, final norm, output head."""

    def __init__(self, spec: GemmaSpec, w: dict[str, torch.Tensor]):
        super().__init__()
        check_supported(spec)
        self.spec = spec
        self.embed_tokens = Embedding(spec, w[canonical_name("embed")])
        self.layers = nn.ModuleList(DecoderBlock(spec, w, i) for i in range(spec.num_layers))
        self.norm = RMSNorm(w[canonical_name("final_norm")], spec.rms_norm_eps, spec.norm_offset)
        out = self.embed_tokens.weight if spec.tied_embeddings else w["lm_head.weight"]
        self.lm_head = OutputHead(out, spec.final_logit_softcap)

    def forward(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """token_ids [B, T] -> (logits [B, T, V], hidden states). Hidden states: [0] the scaled embedding,
        [1..L] each block's output, [L+1] the final norm's output; each [B, T, d] in the model dtype."""
        hidden = self.hidden_states(token_ids)
        return self.lm_head(hidden[-1]), hidden

    def hidden_states(self, token_ids: torch.Tensor) -> list[torch.Tensor]:
        """The hidden states of `forward` without the logits (whose [B, T, V] the caller may want in pieces)."""
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)  # [T]; one sequence, no padding
        x = self.embed_tokens(token_ids)
        hidden = [x]
        for block in self.layers:
            x = block(x, positions)
            hidden.append(x)
        hidden.append(self.norm(x))
        return hidden


def plain_rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without a weight (Gemma 3n's and Gemma 4's v_norm): x / sqrt(mean(x^2) + eps), in float32."""
    x32 = _wide(x)
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


# ----------------------------------------------------------------------------- the forward pass
def check_supported(spec: GemmaSpec) -> None:
    if spec.norm_kind != "rmsnorm":
        raise UnsupportedError(f"the reference runtime implements RMSNorm models; this one uses {spec.norm_kind}")


def model_class(spec: GemmaSpec) -> type:
    """GemmaModel, or the model of the family row's own module (Gemma 3n: runtimes/gemma3n.py)."""
    from importlib import import_module

    from ..families import FAMILY_TABLE

    row = FAMILY_TABLE.get(spec.family)
    if row is None or row.reference_module is None:
        return GemmaModel
    return import_module(f"{__package__}.{row.reference_module}").MODEL


class ReferenceModel:
    """The reference runtime's loaded model (a `runtimes.LoadedModel`): GemmaModel on a device."""

    runtime = "reference"

    def __init__(self, ckpt: Checkpoint, device: str, dtype: str):
        spec = ckpt.spec
        check_supported(spec)
        missing = [n for n in expected_tensors(spec) if n not in ckpt.tensors]
        if missing:
            raise UnsupportedError(f"{ckpt.source}: the reference runtime needs {', '.join(missing[:3])}")
        start = time.perf_counter()
        self.source, self.device, self.dtype = ckpt.source, device, dtype
        self.model = model_class(spec)(spec, load_weights(ckpt, device, torch_dtype(dtype))).eval()
        self.load_seconds = time.perf_counter() - start
        self.notes: list[str] = []
        self.logits = ckpt.embedding_head is None  # an embedding model has no LM head: token states only

    def forward(self, token_ids: Any) -> "RuntimeResult":
        from .types import RuntimeResult, to_cpu_float

        from .types import capture_routing, routing_of

        start = time.perf_counter()
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.device)
        handles, routed = capture_routing(self.model.layers)  # experts' routing (Gemma 4), for parity
        try:
            with torch.no_grad():
                if self.logits:
                    logits, hidden = self.model(ids)
                    logits = to_cpu_float(logits)
                else:
                    logits, hidden = None, self.model.hidden_states(ids)
        finally:
            for h in handles:
                h.remove()
        return RuntimeResult(logits=logits, hidden_states=[to_cpu_float(h) for h in hidden],
                             runtime="reference", device=self.device, dtype=self.dtype, source=self.source,
                             seconds=self.load_seconds + time.perf_counter() - start, notes=list(self.notes),
                             routing=routing_of(routed, len(self.model.layers)))

    def anatomy(self) -> "Anatomy":
        from .types import HF_MODULE_LAYOUTS, HF_MODULE_ROLES, Anatomy

        m = self.model
        return Anatomy(
            root=m, embedding=m.embed_tokens, embedding_weight=m.embed_tokens.weight, blocks=list(m.layers),
            block_names=[f"model.layers.{i}" for i in range(len(m.layers))], final_norm=m.norm,
            output_weight=m.lm_head.weight, roles=HF_MODULE_ROLES, layouts=HF_MODULE_LAYOUTS,
            head_dim=m.spec.head_dim)

    def close(self) -> None:
        del self.model
