"""The reference runtime: this project's own PyTorch forward pass of Gemma 1, 2 and 3, from GemmaSpec.

One module, meant to be read top to bottom like a textbook. It takes the canonical tensors of any format
(HF names, [out, in] layout, zero-centred norm weights) and computes what the published implementations
compute, with every Gemma quirk written out where it acts. Symbols in the shape comments: B batch,
T tokens, d hidden size, H query heads, K key/value heads, D head_dim, F FFN width, V vocabulary.

It matches transformers to 1e-5 in float32 on tiny models of every family (tests/test_reference.py).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..checkpoint import Checkpoint, canonical_name, layer_roles
from ..errors import UnsupportedError
from ..spec import SLIDING, GemmaSpec

if TYPE_CHECKING:  # pragma: no cover
    from . import RuntimeResult

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * (offset + w.float())).to(x.dtype)


def embed(spec: GemmaSpec, table: torch.Tensor, token_ids: torch.Tensor,
          scale_dtype: str | None = None) -> torch.Tensor:
    """E[tok] * sqrt(d): [B, T] -> [B, T, d].

    Gemma casts the factor to the activation dtype before multiplying: in bfloat16 sqrt(3072) = 55.4256
    becomes 55.5 and sqrt(2048) = 45.2548 becomes 45.25. `scale_dtype="float32"` reproduces the common
    porting bug of multiplying by the exact factor instead (for the seeded-defect tests only).
    """
    x = table[token_ids]  # [B, T, d], model dtype
    if not spec.scale_embeddings:
        return x
    if scale_dtype == "float32":  # the bug: exact factor, float32 product, rounded afterwards
        return (x.float() * math.sqrt(spec.hidden_size)).to(x.dtype)
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
    """
    i = torch.arange(t, device=device)[:, None]
    j = torch.arange(t, device=device)[None, :]
    allowed = j <= i
    if spec.layer_types[layer] == SLIDING:
        allowed = allowed & (j > i - spec.sliding_window)
    return allowed


def attention(spec: GemmaSpec, w: dict[str, torch.Tensor], layer: int, x: torch.Tensor,
              positions: torch.Tensor) -> torch.Tensor:
    """Self-attention of one layer: [B, T, d] -> [B, T, d]. MQA (K = 1), GQA (1 < K < H) and MHA (K = H)
    are one code path: query head h reads key/value head h // (H / K)."""
    b, t, _ = x.shape
    h, k, d = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    name = lambda role: canonical_name(role, layer)  # noqa: E731

    q = (x @ w[name("q")].T).view(b, t, h, d).transpose(1, 2)  # [B, H, T, D]
    kk = (x @ w[name("k")].T).view(b, t, k, d).transpose(1, 2)  # [B, K, T, D]
    v = (x @ w[name("v")].T).view(b, t, k, d).transpose(1, 2)  # [B, K, T, D]

    if spec.qk_norm:  # Gemma 3: RMSNorm over D on every query and key head, before RoPE
        q = rms_norm(q, w[name("q_norm")], spec.rms_norm_eps, spec.norm_offset)
        kk = rms_norm(kk, w[name("k_norm")], spec.rms_norm_eps, spec.norm_offset)

    cos, sin = rope_cos_sin(spec, layer, positions, x.dtype)
    q, kk = apply_rope(q, cos, sin), apply_rope(kk, cos, sin)

    # Share each K/V head among H / K query heads: [B, K, T, D] -> [B, H, T, D].
    kk = kk.repeat_interleave(spec.queries_per_kv_head, dim=1)
    v = v.repeat_interleave(spec.queries_per_kv_head, dim=1)

    # Queries are scaled by query_pre_attn_scalar ** -0.5: head_dim for most models, but d / H for the
    # Gemma 2 27B (144) and Gemma 3 27B (168).
    scores = (q @ kk.transpose(-1, -2)) * spec.query_scale  # [B, H, T, T]
    # Gemma 2 soft-caps the attention logits (c = 50) before the mask and the softmax.
    scores = soft_cap(scores, spec.attention_logit_softcap)
    scores = scores.masked_fill(~attention_mask(spec, layer, t, x.device), float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(x.dtype)  # softmax in float32
    out = (probs @ v).transpose(1, 2).reshape(b, t, h * d)  # [B, T, H*D]; H*D need not equal d
    return out @ w[name("o")].T  # [B, T, d]


def feed_forward(spec: GemmaSpec, w: dict[str, torch.Tensor], layer: int, x: torch.Tensor) -> torch.Tensor:
    """GeGLU: down(gelu(gate(x)) * up(x)), [B, T, d] -> [B, T, F] -> [B, T, d].

    Gemma's GELU is the tanh approximation (HF `gelu_pytorch_tanh`); the exact erf GELU, which some
    ports use, is a small but real error. SwiGLU peers use SiLU in the same place.
    """
    gate = x @ w[canonical_name("gate", layer)].T  # [B, T, F]
    up = x @ w[canonical_name("up", layer)].T  # [B, T, F]
    if spec.activation == "gelu_tanh":
        act = F.gelu(gate, approximate="tanh")
    elif spec.activation == "gelu":
        act = F.gelu(gate)
    else:
        act = F.silu(gate)
    return (act * up) @ w[canonical_name("down", layer)].T


def decoder_block(spec: GemmaSpec, w: dict[str, torch.Tensor], layer: int, x: torch.Tensor,
                  positions: torch.Tensor) -> torch.Tensor:
    """One decoder block, [B, T, d] -> [B, T, d].

    Gemma 1 (pre-norm):        x += attn(n1(x));        x += mlp(n2(x))
    Gemma 2/3 (sandwich norm): x += n1b(attn(n1(x)));   x += n2b(mlp(n2(x)))
    The post norms act on the sub-layer output before the residual add, not on the stream.
    """
    eps, off = spec.rms_norm_eps, spec.norm_offset
    norm = lambda role, v: rms_norm(v, w[canonical_name(role, layer)], eps, off)  # noqa: E731
    sandwich = spec.norm_placement == "pre+post"

    a = attention(spec, w, layer, norm("attn_norm", x), positions)
    if sandwich:
        a = norm("post_attn_norm", a)
    x = x + a

    m = feed_forward(spec, w, layer, norm("ffn_norm", x))
    if sandwich:
        m = norm("post_ffn_norm", m)
    return x + m


def output_logits(spec: GemmaSpec, w: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """[B, T, d] -> [B, T, V]. Tied: logits = h @ E^T (Gemma has no lm_head tensor). Gemma 2 then
    soft-caps the logits at 30, in the model dtype."""
    out = w["lm_head.weight"] if not spec.tied_embeddings else w[canonical_name("embed")]
    return soft_cap(h @ out.T, spec.final_logit_softcap)


# ----------------------------------------------------------------------------- the forward pass
def check_supported(spec: GemmaSpec) -> None:
    if spec.norm_kind != "rmsnorm":
        raise UnsupportedError(f"the reference runtime implements RMSNorm models; this one uses {spec.norm_kind}")


@torch.no_grad()
def forward(spec: GemmaSpec, w: dict[str, torch.Tensor], token_ids: torch.Tensor,
            embedding_scale_dtype: str | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """token_ids [B, T] -> (logits [B, T, V], hidden states). Hidden states: [0] the scaled embedding,
    [1..L] each block's output, [L+1] the final norm's output; each [B, T, d] in the model dtype."""
    check_supported(spec)
    positions = torch.arange(token_ids.shape[1], device=token_ids.device)  # [T]; one sequence, no padding
    x = embed(spec, w[canonical_name("embed")], token_ids, embedding_scale_dtype)
    hidden = [x]
    for i in range(spec.num_layers):
        x = decoder_block(spec, w, i, x, positions)
        hidden.append(x)
    x = rms_norm(x, w[canonical_name("final_norm")], spec.rms_norm_eps, spec.norm_offset)
    hidden.append(x)
    return output_logits(spec, w, x), hidden


def run(ckpt: Checkpoint, token_ids: Any, device: str, dtype: str,
        embedding_scale_dtype: str | None = None) -> "RuntimeResult":
    """Load `ckpt` onto `device` in `dtype` and run the reference forward pass on `token_ids` [B, T]."""
    from . import RuntimeResult, to_cpu_float

    spec = ckpt.spec
    check_supported(spec)
    missing = [n for n in _required(spec) if n not in ckpt.tensors]
    if missing:
        raise UnsupportedError(f"{ckpt.source}: the reference runtime needs {', '.join(missing[:3])}")
    start = time.perf_counter()
    w = load_weights(ckpt, device, TORCH_DTYPES[dtype])
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=device)
    logits, hidden = forward(spec, w, ids, embedding_scale_dtype)
    result = RuntimeResult(logits=to_cpu_float(logits), hidden_states=[to_cpu_float(h) for h in hidden],
                           runtime="reference", device=device, dtype=dtype, source=ckpt.source,
                           seconds=time.perf_counter() - start)
    del w
    return result


def _required(spec: GemmaSpec) -> list[str]:
    names = [canonical_name("embed"), canonical_name("final_norm")]
    names += [canonical_name(r, i) for i in range(spec.num_layers) for r in layer_roles(spec)]
    if not spec.tied_embeddings:
        names.append(canonical_name("lm_head"))
    return names
