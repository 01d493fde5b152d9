"""The reference runtime's Gemma 3n text decoder: AltUp, LAuReL, per-layer inputs, KV sharing, activation sparsity.

Read after reference.py, whose building blocks (`rms_norm`, `embed`, `rope_cos_sin`, `apply_rope`,
`attention_mask`, `soft_cap`, `Linear`, `RMSNorm`) it uses unchanged; Gemma 3n's norms apply w (norm_offset 0).
Symbols: B batch, T tokens, d hidden size, n AltUp streams, L layers, P per-layer input width, r LAuReL rank,
H query heads, K key/value heads, D head_dim, F FFN width.

What a Gemma 3n layer does beyond Gemma 3's sandwich block:
- AltUp: the residual stream is carried as n streams [n, B, T, d]. Each layer *predicts* every stream from all of
  them (a per-token n x n mixing matrix chosen by a small router), runs the ordinary block on the active stream
  only, then *corrects* every stream by the block's innovation (output - prediction), scaled per stream.
- LAuReL: a low-rank residual r(L(x)) beside attention; the attention output and it are averaged (/ sqrt 2).
- Activation sparsity: on the first layers the FFN gate keeps only what lies above mean + std * Phi^-1(p) of its
  own row (a Gaussian top-k: p = 0.95 keeps about 5 %).
- Per-layer inputs (PLE): every layer receives its own P-wide embedding of the token, mixed into streams 1..n-1.
- KV sharing: the last layers compute no K/V and attend with the last non-shared layer's of their type.

Module names follow transformers' (`model.layers.0.altup.modality_router`), so `verify` hooks both alike.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import canonical_name
from ..spec import GemmaSpec
from . import reference as R


# ----------------------------------------------------------------------------- building blocks
def gaussian_top_k(gate: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Activation sparsity: relu(g - (mean(g) + std(g) * Phi^-1(p))) over the FFN axis of each token.

    If g were Gaussian, a fraction p of it lies below the cutoff: those entries become 0 and the survivors are
    shifted down by the cutoff (so the GELU that follows sees them starting from 0). std is the population one
    (divided by F, not F - 1), as JAX's and transformers' implementations compute it."""
    multiplier = torch.special.ndtri(torch.tensor(sparsity, dtype=torch.float32)).to(gate.dtype)  # Phi^-1(p)
    cutoff = gate.mean(-1, keepdim=True) + gate.std(-1, keepdim=True, unbiased=False) * multiplier
    return F.relu(gate - cutoff)


def rescaled_to(x: torch.Tensor, target_rms: torch.Tensor) -> torch.Tensor:
    """x scaled so that its RMS over d equals `target_rms` (AltUp's stream projections keep stream 0's size);
    the RMS is floored at sqrt(1e-5) as transformers floors it."""
    rms = torch.sqrt(x.pow(2).mean(-1, keepdim=True).clamp(min=1e-5))
    return x * target_rms / rms


# ----------------------------------------------------------------------------- modules
class Attention(nn.Module):
    """Gemma 3n self-attention: q/k norms with weights, v_norm without, queries unscaled (the norms set their size);
    a KV-shared layer has no k/v projections and reads the K/V its source layer computed."""

    def __init__(self, spec: GemmaSpec, w: dict[str, torch.Tensor], layer: int):
        super().__init__()
        self.spec, self.layer = spec, layer
        name = lambda role: canonical_name(role, layer)  # noqa: E731
        self.shared = spec.kv_shared(layer)
        self.q_proj, self.o_proj = R.Linear(w[name("q")]), R.Linear(w[name("o")])
        self.q_norm = R.RMSNorm(w[name("q_norm")], spec.rms_norm_eps, spec.norm_offset)
        if not self.shared:
            self.k_proj, self.v_proj = R.Linear(w[name("k")]), R.Linear(w[name("v")])
            self.k_norm = R.RMSNorm(w[name("k_norm")], spec.rms_norm_eps, spec.norm_offset)

    def forward(self, x: torch.Tensor, positions: torch.Tensor,
                kv: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        spec = self.spec
        b, t, _ = x.shape
        h, k, d = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
        cos, sin = R.rope_cos_sin(spec, self.layer, positions, x.dtype)
        q = self.q_norm(self.q_proj(x).view(b, t, h, d).transpose(1, 2))  # [B, H, T, D]
        q = R.apply_rope(q, cos, sin)
        if self.shared:  # KV sharing: the source layer's normed, rotated K and normed V
            kk, v = kv[spec.kv_source(self.layer)]
        else:
            kk = R.apply_rope(self.k_norm(self.k_proj(x).view(b, t, k, d).transpose(1, 2)), cos, sin)  # [B, K, T, D]
            v = R.plain_rms_norm(self.v_proj(x).view(b, t, k, d).transpose(1, 2), spec.rms_norm_eps)  # [B, K, T, D]
            kv[self.layer] = (kk, v)
        return self.o_proj(R.attend(spec, self.layer, q, kk, v, spec.query_scale))  # query_scale 1: unscaled


class FeedForward(nn.Module):
    """GeGLU with this layer's width; on a sparse layer the gate passes through `gaussian_top_k` first."""

    def __init__(self, spec: GemmaSpec, w: dict[str, torch.Tensor], layer: int):
        super().__init__()
        self.gate_proj = R.Linear(w[canonical_name("gate", layer)])
        self.up_proj = R.Linear(w[canonical_name("up", layer)])
        self.down_proj = R.Linear(w[canonical_name("down", layer)])
        self.act_fn = R.Activation(spec.activation)
        self.activation_sparsity = spec.layer_sparsity(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)  # [B, T, F]
        if self.activation_sparsity > 0:
            gate = gaussian_top_k(gate, self.activation_sparsity)
        return self.down_proj(self.act_fn(gate) * self.up_proj(x))


class AltUp(nn.Module):
    """One layer's AltUp: predict the n streams before the block, correct them after it."""

    def __init__(self, spec: GemmaSpec, w: dict[str, torch.Tensor], layer: int):
        super().__init__()
        name = lambda role: canonical_name(role, layer)  # noqa: E731
        self.n, self.active = spec.altup_num_inputs, spec.altup_active_idx
        self.router_norm = R.RMSNorm(w[name("altup_router_norm")], spec.rms_norm_eps, spec.norm_offset)
        self.modality_router = R.Linear(w[name("altup_router")])  # [n, d]
        self.prediction_coefs = R.Linear(w[name("altup_predict")])  # [n*n, n]
        self.correction_coefs = R.Linear(w[name("altup_correct")])  # [n, n]
        self.correct_output_scale = R._param(w[name("altup_output_scale")])  # [d]
        self.router_input_scale = 1.0 / spec.hidden_size

    def modalities(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d] -> [B, T, n]: tanh of a linear router on the normed stream divided by d."""
        routed = self.modality_router(self.router_norm(x) * self.router_input_scale)
        return torch.tanh(R._wide(routed)).to(x.dtype)

    def predict(self, streams: torch.Tensor) -> torch.Tensor:
        """[n, B, T, d] -> [n, B, T, d]: stream i += sum_k C[i, k] * stream k, C [B, T, n, n] from the router on
        the active stream (prediction_coefs' output row i*n + k is C[i, k])."""
        m = self.modalities(streams[self.active])
        coefs = self.prediction_coefs(m).view(*m.shape[:-1], self.n, self.n)  # [B, T, n(i), n(k)]
        return streams + torch.einsum("btik,kbtd->ibtd", coefs, streams)

    def correct(self, predictions: torch.Tensor, activated: torch.Tensor) -> torch.Tensor:
        """Every stream moves by the block's innovation (activated - predicted active stream) times its own
        coefficient, 1 + correction_coefs(router on `activated`)."""
        innovation = activated - predictions[self.active]  # [B, T, d]
        coefs = self.correction_coefs(self.modalities(activated)) + 1.0  # [B, T, n]
        return predictions + coefs.permute(2, 0, 1).unsqueeze(-1) * innovation


class Laurel(nn.Module):
    """LAuReL: x + RMSNorm(R(L(x))), L [r, d] and R [d, r] a low-rank map."""

    def __init__(self, spec: GemmaSpec, w: dict[str, torch.Tensor], layer: int):
        super().__init__()
        self.linear_left = R.Linear(w[canonical_name("laurel_left", layer)])
        self.linear_right = R.Linear(w[canonical_name("laurel_right", layer)])
        self.post_laurel_norm = R.RMSNorm(w[canonical_name("laurel_norm", layer)], spec.rms_norm_eps,
                                          spec.norm_offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.post_laurel_norm(self.linear_right(self.linear_left(x)))


class DecoderBlock(nn.Module):
    """One Gemma 3n layer, streams [n, B, T, d] -> [n, B, T, d]."""

    def __init__(self, spec: GemmaSpec, w: dict[str, torch.Tensor], layer: int):
        super().__init__()
        norm = lambda role: R.RMSNorm(w[canonical_name(role, layer)], spec.rms_norm_eps, spec.norm_offset)  # noqa: E731
        self.spec, self.layer = spec, layer
        self.altup = AltUp(spec, w, layer)
        self.input_layernorm = norm("attn_norm")
        self.laurel = Laurel(spec, w, layer)
        self.self_attn = Attention(spec, w, layer)
        self.post_attention_layernorm = norm("post_attn_norm")
        self.pre_feedforward_layernorm = norm("ffn_norm")
        self.mlp = FeedForward(spec, w, layer)
        self.post_feedforward_layernorm = norm("post_ffn_norm")
        self.per_layer_input_gate = R.Linear(w[canonical_name("ple_gate", layer)])  # [P, d]
        self.per_layer_projection = R.Linear(w[canonical_name("ple_proj", layer)])  # [d, P]
        self.post_per_layer_input_norm = norm("ple_post_norm")
        self.act_fn = R.Activation(spec.activation)

    def forward(self, streams: torch.Tensor, positions: torch.Tensor, per_layer_input: torch.Tensor,
                kv: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        predictions = self.altup.predict(streams)
        active = predictions[self.altup.active]  # [B, T, d]: the block runs on this stream only
        normed = self.input_layernorm(active)
        laurel = self.laurel(normed)
        attn = self.post_attention_layernorm(self.self_attn(normed, positions, kv))
        x = (active + attn + laurel) / math.sqrt(2)  # the residual with attention, averaged with LAuReL's
        x = x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        corrected = self.altup.correct(predictions, x)

        # Per-layer input: gate the (scaled) corrected active stream, multiply by this layer's embedding, project
        # back to d, norm, and add to streams 1..n-1 (transformers adds to [1:], the active stream being 0).
        first = corrected[self.altup.active]
        if self.spec.altup_correct_scale:
            first = first * self.altup.correct_output_scale
        first = self.act_fn(self.per_layer_input_gate(first)) * per_layer_input  # [B, T, P]
        first = self.post_per_layer_input_norm(self.per_layer_projection(first))
        return torch.cat([corrected[:1], corrected[1:] + first], dim=0)


class Gemma3nModel(nn.Module):
    """Embedding and per-layer inputs, AltUp's stream projections, L blocks, the streams merged, final norm, head."""

    def __init__(self, spec: GemmaSpec, w: dict[str, torch.Tensor]):
        super().__init__()
        R.check_supported(spec)
        self.spec = spec
        self.embed_tokens = R.Embedding(spec, w[canonical_name("embed")])
        self.embed_tokens_per_layer = R._param(w[canonical_name("ple")])  # [V_pl, L*P]
        self.per_layer_model_projection = R.Linear(w[canonical_name("ple_model_proj")])  # [L*P, d]
        self.per_layer_projection_norm = R.RMSNorm(w[canonical_name("ple_proj_norm")], spec.rms_norm_eps,
                                                   spec.norm_offset)
        n = spec.altup_num_inputs
        self.altup_projections = nn.ModuleList(R.Linear(w[canonical_name(f"altup_proj{j}")]) for j in range(1, n))
        self.altup_unembed_projections = nn.ModuleList(R.Linear(w[canonical_name(f"altup_unembed{j}")])
                                                       for j in range(1, n))
        self.layers = nn.ModuleList(DecoderBlock(spec, w, i) for i in range(spec.num_layers))
        self.norm = R.RMSNorm(w[canonical_name("final_norm")], spec.rms_norm_eps, spec.norm_offset)
        out = self.embed_tokens.weight if spec.tied_embeddings else w["lm_head.weight"]
        self.lm_head = R.OutputHead(out, spec.final_logit_softcap)

    def per_layer_inputs(self, token_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """[B, T, L, P]: (RMSNorm_P(x @ W_plmp^T * d^-0.5) + E_pl[ids] * sqrt(P)) * 2^-0.5. Ids past the per-layer
        table (262,144 of Gemma 3n's 262,400) look up row 0."""
        spec = self.spec
        b, t = token_ids.shape
        table = self.embed_tokens_per_layer
        ids = torch.where(token_ids < table.shape[0], token_ids, 0)
        scale = torch.tensor(math.sqrt(spec.per_layer_input_size), dtype=torch.float32).to(x.dtype)
        tok = (table[ids] * scale).view(b, t, spec.num_layers, spec.per_layer_input_size)
        proj = self.per_layer_model_projection(x) * torch.tensor(spec.hidden_size ** -0.5).to(x.dtype)
        proj = self.per_layer_projection_norm(proj.view(b, t, spec.num_layers, spec.per_layer_input_size))
        return (proj + tok) * torch.tensor(2 ** -0.5).to(x.dtype)

    def forward(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hidden = self.hidden_states(token_ids)
        return self.lm_head(hidden[-1]), hidden

    def hidden_states(self, token_ids: torch.Tensor) -> list[torch.Tensor]:
        """[0] the scaled embedding, [1..L] the active stream after each block, [L+1] the final norm's output."""
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        x = self.embed_tokens(token_ids)  # [B, T, d]
        ple = self.per_layer_inputs(token_ids, x)
        target = torch.sqrt(x.pow(2).mean(-1, keepdim=True))  # stream 0's RMS, which the others take
        streams = torch.stack([x] + [rescaled_to(p(x), target) for p in self.altup_projections])  # [n, B, T, d]
        hidden = [x]
        kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, block in enumerate(self.layers):
            streams = block(streams, positions, ple[:, :, i], kv)
            hidden.append(streams[self.spec.altup_active_idx])
        # The streams back to one: streams 1..n-1 through their unembedding projections (rescaled to stream 0's
        # RMS), then the mean of all n.
        target = torch.sqrt(streams[0].pow(2).mean(-1, keepdim=True))
        merged = [streams[0]] + [rescaled_to(p(s), target) for p, s in zip(self.altup_unembed_projections,
                                                                            streams[1:])]
        hidden.append(self.norm(torch.stack(merged).mean(0)))
        return hidden


def active_stream(spec: GemmaSpec, output: Any) -> Any:
    """A decoder layer's output as the hidden state the runtimes compare: AltUp models return all n streams
    [n, B, T, d]; the active one is the block's own."""
    if spec.altup_num_inputs and getattr(output, "ndim", 0) == 4:
        return output[spec.altup_active_idx]
    return output


MODEL = Gemma3nModel  # what the family row's reference_module names

__all__ = ["MODEL", "Gemma3nModel", "active_stream", "gaussian_top_k"]
