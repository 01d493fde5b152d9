"""The reference runtime's Gemma 4 text decoder: per-layer head geometry, proportional RoPE, per-layer inputs,
KV sharing, K=V, layer scalars and the mixture of experts beside the dense MLP.

Read after reference.py, whose building blocks (`rms_norm`, `embed`, `apply_rope`, `attention_mask`, `soft_cap`,
`Linear`, `RMSNorm`) it uses unchanged; Gemma 4's norms apply w (norm_offset 0, no +1). Symbols: B batch, T tokens,
d hidden size, L layers, P per-layer input width, H query heads, K key/value heads, D head_dim (the layer's),
F FFN width, E experts, k experts per token, Fe one expert's FFN width.

What a Gemma 4 layer does beyond Gemma 3's sandwich block:
- Geometry per layer type: sliding layers use head_dim and num_key_value_heads, full layers global_head_dim and
  num_global_key_value_heads.
- Attention: q_norm and k_norm with weights, v_norm without; queries unscaled (scaling 1.0), no attention soft cap.
- RoPE: sliding layers the default rotation (theta 1e4) over the whole head; full layers "proportional" (theta 1e6):
  only the first partial_factor * D / 2 frequencies rotate, each theta^(-2j / D) with the FULL D as denominator,
  the others are 0 (those dimensions pass through unrotated).
- K=V (attention_k_eq_v): full layers have no v_proj; V = v_norm(raw K projection), before k_norm and RoPE.
- KV sharing: the last num_kv_shared_layers layers compute no K/V and attend with the normed, rotated K and normed V
  of the last non-shared layer of their type (tensors a file may still store for them are not read).
- The dense MLP is double-wide on the KV-shared layers (use_double_wide_mlp).
- Mixture of experts (enable_moe_block): the dense MLP AND k of E experts run on every token, their outputs summed
  after a norm each; the router reads the residual stream, not the normed MLP input.
- Per-layer inputs (PLE) after the feed-forward, then the whole hidden state times the layer's stored scalar.

Module names follow transformers' (`model.layers.0.self_attn.v_norm`, `model.layers.0.router.proj`), so `verify`
hooks both alike.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..checkpoint import canonical_name
from ..spec import FULL, GemmaSpec
from . import reference as R


# ----------------------------------------------------------------------------- building blocks
def rope_inv_freq(spec: GemmaSpec, layer: int, device: Any = None) -> torch.Tensor:
    """One layer's RoPE frequencies [D / 2], float32.

    Sliding layers: theta_local^(-2j / D) for every j < D / 2. Full layers (proportional RoPE): the first
    int(partial_factor * D / 2) frequencies theta^(-2j / D) - the denominator is the full D, not the rotated part
    (so they are the first frequencies of an ordinary RoPE over D, not a RoPE over the rotated dimensions) - and
    zeros for the rest: a zero frequency is cos 1, sin 0, those dimensions pass unrotated. Linear position scaling
    divides every frequency by the factor, as transformers does."""
    d = spec.layer_head_dim(layer)
    full = spec.layer_types[layer] == FULL
    base = spec.rope_theta if full else spec.local_rope_theta
    factor = spec.rope_scaling_factor if full else spec.rope_local_scaling_factor
    rotated = int(spec.rope_partial_factor * d // 2) if full else d // 2
    inv = 1.0 / (base ** (torch.arange(0, 2 * rotated, 2, dtype=torch.float32, device=device) / d))
    inv = torch.cat([inv, torch.zeros(d // 2 - rotated, dtype=torch.float32, device=device)])
    return inv / factor


def rope_cos_sin(spec: GemmaSpec, layer: int, positions: torch.Tensor,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [T, D] of one layer (half-split pairs, as reference.rope_cos_sin)."""
    freqs = positions.float()[:, None] * rope_inv_freq(spec, layer, positions.device)[None, :]  # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class PlainRMSNorm(nn.Module):
    """RMSNorm without a weight (v_norm, the router's norm): x / sqrt(mean(x^2) + eps), in float32."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return R.plain_rms_norm(x, self.eps)


# ----------------------------------------------------------------------------- modules
class Attention(nn.Module):
    """Gemma 4 self-attention with this layer's head_dim and K/V heads. A KV-shared layer has no k/v modules and
    reads its source layer's K/V from `kv`; a K=V layer has no v_proj and normalises the raw K projection as V."""

    def __init__(self, spec: GemmaSpec, w: dict[str, torch.Tensor], layer: int):
        super().__init__()
        self.spec, self.layer = spec, layer
        name = lambda role: canonical_name(role, layer)  # noqa: E731
        self.shared, self.k_eq_v = spec.kv_shared(layer), spec.k_eq_v(layer)
        self.head_dim, self.num_kv_heads = spec.layer_head_dim(layer), spec.layer_kv_heads(layer)
        self.q_proj, self.o_proj = R.Linear(w[name("q")]), R.Linear(w[name("o")])
        self.q_norm = R.RMSNorm(w[name("q_norm")], spec.rms_norm_eps, spec.norm_offset)
        if not self.shared:  # a file may store (unused) k/v for shared layers: they are not read
            self.k_proj = R.Linear(w[name("k")])
            self.v_proj = None if self.k_eq_v else R.Linear(w[name("v")])
            self.k_norm = R.RMSNorm(w[name("k_norm")], spec.rms_norm_eps, spec.norm_offset)
            self.v_norm = PlainRMSNorm(spec.rms_norm_eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor,
                kv: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        spec = self.spec
        b, t, _ = x.shape
        h, k, d = spec.num_attention_heads, self.num_kv_heads, self.head_dim
        cos, sin = rope_cos_sin(spec, self.layer, positions, x.dtype)
        q = R.apply_rope(self.q_norm(self.q_proj(x).view(b, t, h, d).transpose(1, 2)), cos, sin)  # [B, H, T, D]
        if self.shared:  # KV sharing: the source layer's normed, rotated K and normed V
            kk, v = kv[spec.kv_source(self.layer)]
        else:
            raw_k = self.k_proj(x).view(b, t, k, d).transpose(1, 2)  # [B, K, T, D]
            raw_v = raw_k if self.v_proj is None else self.v_proj(x).view(b, t, k, d).transpose(1, 2)
            kk = R.apply_rope(self.k_norm(raw_k), cos, sin)
            v = self.v_norm(raw_v)  # K=V: the raw K projection, not the normed, rotated K
            kv[self.layer] = (kk, v)
        return self.o_proj(R.attend(spec, self.layer, q, kk, v))  # scaling 1.0: q/k norms set the size; no cap


class Router(nn.Module):
    """Which k experts a token goes to, and with what weight. [N, d] -> (probabilities [N, E], weights [N, k],
    indices [N, k]) as transformers' Gemma4TextRouter returns them.

    Input: the residual stream, normed without a weight, times the stored `scale` [d] and d^-0.5. Softmax over
    the E experts in float32 (float64 in the oracle run), the k largest kept and renormalised to sum to 1, then
    each multiplied by its expert's stored per_expert_scale."""

    def __init__(self, spec: GemmaSpec, w: dict[str, torch.Tensor], layer: int):
        super().__init__()
        self.top_k = spec.moe_top_k
        self.norm = PlainRMSNorm(spec.rms_norm_eps)
        self.proj = R.Linear(w[canonical_name("router", layer)])  # [E, d]
        self.scale = R._param(w[canonical_name("router_scale", layer)])  # [d]
        self.per_expert_scale = R._param(w[canonical_name("expert_scale", layer)])  # [E]
        self.scalar_root_size = spec.hidden_size ** -0.5

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores = self.proj(self.norm(x) * self.scale * self.scalar_root_size)  # [N, E]
        probs = torch.softmax(R._wide(scores), dim=-1)
        weights, index = torch.topk(probs, k=self.top_k, dim=-1)  # [N, k]
        weights = weights / weights.sum(-1, keepdim=True)
        return probs, weights * self.per_expert_scale[index], index


class Experts(nn.Module):
    """E GeGLU experts stored stacked: gate_up_proj [E, 2 Fe, d] (the gate's Fe rows first, then up's) and
    down_proj [E, d, Fe]. Each token's output is the weighted sum of its k experts' outputs."""

    def __init__(self, spec: GemmaSpec, w: dict[str, torch.Tensor], layer: int):
        super().__init__()
        self.gate_up_proj = R._param(w[canonical_name("experts_gate_up", layer)])
        self.down_proj = R._param(w[canonical_name("experts_down", layer)])
        self.act_fn = R.Activation(spec.activation)

    def forward(self, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)  # [N, d]
        for e in index.unique().tolist():  # only the experts some token was routed to run
            token, slot = torch.where(index == e)
            gate, up = (x[token] @ self.gate_up_proj[e].T).chunk(2, dim=-1)  # [n, Fe] each
            y = (self.act_fn(gate) * up) @ self.down_proj[e].T  # [n, d]
            out.index_add_(0, token, (y * weights[token, slot, None]).to(out.dtype))
        return out


class DecoderBlock(nn.Module):
    """One Gemma 4 layer, [B, T, d] -> [B, T, d]:

        x = x + post_attn_norm(attn(input_norm(x)))
        m = mlp(pre_ffn_norm(x))
        MoE: m = post_ffn_norm_1(m) + post_ffn_norm_2(experts(pre_ffn_norm_2(x), router(x)))
        x = x + post_ffn_norm(m)
        PLE: x = x + post_ple_norm(per_layer_projection(gelu(per_layer_input_gate(x)) * ple_i))
        x = x * layer_scalar          (the whole stream, residual included)
    """

    def __init__(self, spec: GemmaSpec, w: dict[str, torch.Tensor], layer: int):
        super().__init__()
        norm = lambda role: R.RMSNorm(w[canonical_name(role, layer)], spec.rms_norm_eps, spec.norm_offset)  # noqa: E731
        self.spec, self.layer = spec, layer
        self.input_layernorm = norm("attn_norm")
        self.self_attn = Attention(spec, w, layer)
        self.post_attention_layernorm = norm("post_attn_norm")
        self.pre_feedforward_layernorm = norm("ffn_norm")
        self.mlp = R.FeedForward(spec, w, layer)  # its width is the weights': 2 x F on double-wide layers
        self.post_feedforward_layernorm = norm("post_ffn_norm")
        self.enable_moe_block = bool(spec.moe_experts)
        if self.enable_moe_block:
            self.router = Router(spec, w, layer)
            self.experts = Experts(spec, w, layer)
            self.post_feedforward_layernorm_1 = norm("post_dense_norm")
            self.pre_feedforward_layernorm_2 = norm("moe_ffn_norm")
            self.post_feedforward_layernorm_2 = norm("post_moe_norm")
        self.per_layer_inputs = bool(spec.per_layer_input_size)
        if self.per_layer_inputs:
            self.per_layer_input_gate = R.Linear(w[canonical_name("ple_gate", layer)])  # [P, d]
            self.per_layer_projection = R.Linear(w[canonical_name("ple_proj", layer)])  # [d, P]
            self.post_per_layer_input_norm = norm("ple_post_norm")
            self.act_fn = R.Activation(spec.activation)
        self.layer_scalar = R._param(w[canonical_name("layer_scalar", layer)]) if spec.layer_scalar else None

    def forward(self, x: torch.Tensor, positions: torch.Tensor, per_layer_input: torch.Tensor | None,
                kv: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), positions, kv))
        m = self.mlp(self.pre_feedforward_layernorm(x))
        if self.enable_moe_block:
            flat = x.reshape(-1, x.shape[-1])  # [B*T, d]: the router and the experts read the residual stream
            _, weights, index = self.router(flat)
            experts = self.experts(self.pre_feedforward_layernorm_2(flat), index, weights).view(x.shape)
            m = self.post_feedforward_layernorm_1(m) + self.post_feedforward_layernorm_2(experts)
        x = x + self.post_feedforward_layernorm(m)
        if self.per_layer_inputs:
            p = self.act_fn(self.per_layer_input_gate(x)) * per_layer_input  # [B, T, P]
            x = x + self.post_per_layer_input_norm(self.per_layer_projection(p))
        if self.layer_scalar is not None:
            x = x * self.layer_scalar
        return x


class Gemma4Model(nn.Module):
    """Embedding and per-layer inputs, L blocks sharing K/V as the spec says, final norm, head (soft cap)."""

    def __init__(self, spec: GemmaSpec, w: dict[str, torch.Tensor]):
        super().__init__()
        R.check_supported(spec)
        self.spec = spec
        self.embed_tokens = R.Embedding(spec, w[canonical_name("embed")])
        if spec.per_layer_input_size:
            self.embed_tokens_per_layer = R._param(w[canonical_name("ple")])  # [V_pl, L*P]
            self.per_layer_model_projection = R.Linear(w[canonical_name("ple_model_proj")])  # [L*P, d]
            self.per_layer_projection_norm = R.RMSNorm(w[canonical_name("ple_proj_norm")], spec.rms_norm_eps,
                                                       spec.norm_offset)
        self.layers = nn.ModuleList(DecoderBlock(spec, w, i) for i in range(spec.num_layers))
        self.norm = R.RMSNorm(w[canonical_name("final_norm")], spec.rms_norm_eps, spec.norm_offset)
        out = self.embed_tokens.weight if spec.tied_embeddings else w["lm_head.weight"]
        self.lm_head = R.OutputHead(out, spec.final_logit_softcap)

    def per_layer_inputs(self, token_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """[B, T, L, P]: (RMSNorm_P(x @ W_plmp^T * d^-0.5) + E_pl[ids] * sqrt(P)) * 2^-0.5 (each factor cast to
        the model dtype, as transformers' scaled embedding does); None without PLE."""
        spec = self.spec
        if not spec.per_layer_input_size:
            return None
        b, t = token_ids.shape
        n, p = spec.num_layers, spec.per_layer_input_size
        scale = torch.tensor(math.sqrt(p), dtype=torch.float32).to(x.dtype)
        tok = (self.embed_tokens_per_layer[token_ids] * scale).view(b, t, n, p)
        proj = self.per_layer_model_projection(x) * spec.hidden_size ** -0.5
        proj = self.per_layer_projection_norm(proj.view(b, t, n, p))
        return (proj + tok) * 2 ** -0.5

    def forward(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hidden = self.hidden_states(token_ids)
        return self.lm_head(hidden[-1]), hidden

    def hidden_states(self, token_ids: torch.Tensor) -> list[torch.Tensor]:
        """[0] the scaled embedding, [1..L] each block's output (after its layer scalar), [L+1] the final norm's."""
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        x = self.embed_tokens(token_ids)
        ple = self.per_layer_inputs(token_ids, x)
        hidden = [x]
        kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, block in enumerate(self.layers):
            x = block(x, positions, None if ple is None else ple[:, :, i], kv)
            hidden.append(x)
        hidden.append(self.norm(x))
        return hidden


MODEL = Gemma4Model  # what the family row's reference_module names

__all__ = ["MODEL", "Gemma4Model", "rope_inv_freq", "rope_cos_sin"]
