"""Tiny seeded Gemma checkpoints written by the real libraries (transformers, keras-hub), plus a tiny
SentencePiece tokenizer trained on the spot. Used by `demo`, the tests and the examples.

Weights are seeded random normals; norm weights are random too (never all-zero), so a converter that
drops or doubles the (1 + w) offset, or swaps two tensors, changes the logits.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from .checkpoint import expected_tensors, parse_canonical
from .families import family
from .spec import GemmaSpec, make_spec

TINY_VOCAB = 384

# Small but complete: every quirk of each family is present. head_dim * heads != hidden on purpose
# (as in Gemma 7B), Gemma 2 has more layers than one sliding pair, Gemma 3 has a global layer (index 5).
TINY_SPECS: dict[str, dict[str, Any]] = {
    # Gemma 1, MQA (as the 2B model).
    "gemma": dict(family="gemma", hidden_size=64, num_layers=2, num_attention_heads=4, num_key_value_heads=1,
                  head_dim=32, intermediate_size=96),
    # Gemma 1, MHA (as the 7B model, which keras-hub's exporter corrupts).
    "gemma-mha": dict(family="gemma", hidden_size=64, num_layers=2, num_attention_heads=4, num_key_value_heads=4,
                      head_dim=16, intermediate_size=96),
    # Gemma 2: GQA, sandwich norms, soft caps, sliding window on even layers.
    "gemma2": dict(family="gemma2", hidden_size=64, num_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=16, intermediate_size=96, sliding_window=6, query_pre_attn_scalar=16,
                   max_position_embeddings=8192),
    # Gemma 3: QK-norm, 5 local : 1 global, local/global RoPE bases, linear RoPE scaling on global layers.
    "gemma3": dict(family="gemma3", hidden_size=64, num_layers=7, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=16, intermediate_size=96, sliding_window=6, query_pre_attn_scalar=16,
                   rope_scaling_factor=8.0, max_position_embeddings=131072),
    # VaultGemma: Gemma 2 without post norms (pre-norm only), soft caps, sliding window on even layers.
    "vaultgemma": dict(family="vaultgemma", hidden_size=64, num_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, intermediate_size=96, sliding_window=6,
                       query_pre_attn_scalar=16, max_position_embeddings=8192),
    # Gemma 4: norms apply w, per-layer head geometry (head_dim 16 sliding, 32 full), proportional RoPE on full
    # layers, per-layer inputs, the last 2 layers sharing K/V (double-wide MLP there) from layers 2 (sliding) and 3
    # (full), as llama.cpp's gemma4 reads them too, layer scalars.
    "gemma4": dict(family="gemma4", hidden_size=64, num_layers=6, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=16, global_head_dim=32, intermediate_size=96, sliding_window=6,
                   layer_types=("sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
                                "sliding_attention", "full_attention"),
                   per_layer_input_size=8, num_kv_shared_layers=2, double_wide_mlp=True,
                   max_position_embeddings=4096),
}

CORPUS = """Gemma is a family of lightweight open models built from the research behind Gemini.
The models are decoder-only transformers with rotary position embeddings and GeGLU feed-forward layers.
RMSNorm scales each activation by the reciprocal root mean square; Gemma adds one to the stored weight.
Embeddings are multiplied by the square root of the hidden size before the first layer.
Gemma 2 interleaves local sliding-window attention with global attention and caps logits with tanh.
Gemma 3 replaces soft-capping with QK-norm and uses five local layers for each global one.
Converting a checkpoint between KerasHub, Hugging Face, GGUF and gemma_pytorch must be lossless.
Numbers such as 2048, 3072, 16384 and 256000 appear in configs; so do 1e-6 and 10000.
Unicode text: héllo wörld, naïve café, 日本語のテキスト, emoji 🙂 and symbols #$%&*.
<start_of_turn>user
Write a haiku about tensors.<end_of_turn>
<start_of_turn>model
Bytes flow, layer by layer.<end_of_turn>
"""


def train_tokenizer(path: str, vocab_size: int = TINY_VOCAB) -> str:
    """Train a Gemma-like SentencePiece model (BPE, byte fallback, ids pad 0 eos 1 bos 2 unk 3,
    `<start_of_turn>`/`<end_of_turn>` as user-defined symbols) and write it to `path`."""
    import sentencepiece as spm

    buf = io.BytesIO()
    lines = [line for line in CORPUS.splitlines() if line.strip()] * 4
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], byte_fallback=True,
        add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity",
        split_digits=True, allow_whitespace_only_pieces=True, hard_vocab_limit=False,
        character_coverage=1.0, minloglevel=2, num_threads=1,
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def tiny_spec(name: str, vocab_size: int = TINY_VOCAB, dtype: str = "float32", **overrides: Any) -> GemmaSpec:
    fields = dict(TINY_SPECS[name])
    family = fields.pop("family")
    fields.update(vocab_size=vocab_size, dtype=dtype, **overrides)
    if fields.get("per_layer_input_size") and "per_layer_vocab_size" not in fields:
        fields["per_layer_vocab_size"] = fields["vocab_size"]  # the per-layer table covers the vocabulary
    return make_spec(family, **fields)


def weight_std(spec: GemmaSpec, name: str, shape: tuple[int, ...]) -> float:
    """The standard deviation of random weights: norm weights 0.3 (non-trivial), the embedding and output
    1/sqrt(d), other matrices 1/sqrt(fan_in). The tiny checkpoints and the benchmarks draw from it."""
    parsed = parse_canonical(name)
    if len(shape) == 1:
        return 0.3
    if parsed is not None and parsed[0] in ("embed", "lm_head"):
        return 1.0 / float(np.sqrt(spec.hidden_size))
    return 1.0 / float(np.sqrt(shape[1]))


def random_weights(spec: GemmaSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical-name float32 weights ~ N(0, weight_std) (see there). A family whose norms apply w (no +1: Gemma 3n,
    Gemma 4) gets its norm weights around 1 (1 + N(0, 0.3): the same effective scales as 1 + w elsewhere); scales
    (router and per-expert scales) 1 + N(0, 0.1); a stored layer scalar uniform in [0.3, 0.9], far from 1 as
    released ones are, so that a converter or runtime dropping it cannot pass."""
    from .roles import ROLE_TABLE

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_tensors(spec).items():
        parsed = parse_canonical(name)
        kind = ROLE_TABLE[parsed[0]].kind if parsed is not None else None
        if kind == "scalar":
            out[name] = rng.uniform(0.3, 0.9, size=shape).astype(np.float32)
        elif kind == "scale":
            out[name] = (1.0 + rng.normal(0.0, 0.1, size=shape)).astype(np.float32)
        else:
            w = rng.normal(0.0, weight_std(spec, name, shape), size=shape)
            out[name] = (w + 1.0 if kind == "norm" and spec.norm_offset == 0 else w).astype(np.float32)
    return out


# ----------------------------------------------------------------------------- writers via the real libraries
def write_hf(spec: GemmaSpec, weights: dict[str, np.ndarray], out_dir: str, spm_path: str | None = None,
             max_shard_size: str | None = None) -> str:
    """Save with transformers' own `save_pretrained` (and its tokenizer class, plus tokenizer.model)."""
    import shutil

    import torch

    from .runtimes.transformers_rt import build_model

    state = {n: torch.from_numpy(a.copy()) for n, a in weights.items()}
    model = build_model(spec, state, "cpu", "float32", where="tiny HF model").to(getattr(torch, spec.dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars are noise for a tiny model
    model.save_pretrained(out_dir, **kwargs)
    if spm_path:
        from .tokenizer import write_hf_fast_tokenizer

        write_hf_fast_tokenizer(spm_path, out_dir, has_mask=False)
        shutil.copyfile(spm_path, os.path.join(out_dir, "tokenizer.model"))
    return out_dir


def write_keras(spec: GemmaSpec, weights: dict[str, np.ndarray], out_dir: str, spm_path: str | None = None,
                max_shard_size: float | None = None) -> str:
    """Save with keras-hub's own `save_to_preset` (a CausalLM with preprocessor when a tokenizer is given)."""
    from .quiet import native_stderr_silenced
    from .runtimes.keras_rt import build_backbone, import_keras

    import_keras()
    import keras_hub

    backbone = build_backbone(spec, {name: (lambda a=a: a) for name, a in weights.items()})
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    if spm_path:
        with native_stderr_silenced():  # tensorflow-text's SentencePiece op logs on load
            _save_causal_lm(keras_hub, spec, backbone, spm_path, out_dir, kwargs)
    else:
        backbone.save_to_preset(out_dir, **kwargs)
    return out_dir


def _save_causal_lm(keras_hub: Any, spec: GemmaSpec, backbone: Any, spm_path: str, out_dir: str,
                    kwargs: dict[str, Any]) -> None:
    """A CausalLM (backbone + preprocessor + tokenizer) saved by keras-hub, as Kaggle presets are; the classes are
    the family row's (KerasIds.class_prefix), a multimodal one's told there are no images."""
    ids = family(spec.family).keras
    assert ids is not None, spec.family
    name = ids.class_prefix
    tok_args: dict[str, Any] = {"has_vision_tokens": False} if ids.vision_tokens else {}
    pre_args: dict[str, Any] = {"image_converter": None} if ids.vision_tokens else {}
    tok = getattr(keras_hub.models, f"{name}Tokenizer")(proto=spm_path, **tok_args)
    pre = getattr(keras_hub.models, f"{name}CausalLMPreprocessor")(tokenizer=tok, **pre_args)
    lm = getattr(keras_hub.models, f"{name}CausalLM")(backbone=backbone, preprocessor=pre)
    lm.save_to_preset(out_dir, **kwargs)


def write_hf_multimodal_gemma3(spec: GemmaSpec, weights: dict[str, np.ndarray], out_dir: str) -> str:
    """A tiny Gemma3ForConditionalGeneration (SigLIP vision tower + projector + this text decoder), saved by
    transformers itself. Its text weights land under `language_model.model.` on disk."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    from .formats.hf import config_dict, from_canonical

    text_cfg = config_dict(spec)
    for key in ("model_type", "torch_dtype", "architectures"):
        text_cfg.pop(key)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    cfg = Gemma3Config(text_config=Gemma3TextConfig(**text_cfg), vision_config=vision, mm_tokens_per_image=4,
                       image_token_index=5, boi_token_index=6, eoi_token_index=7)
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(cfg)
    # In memory (transformers 5) the text decoder sits under model.language_model.
    state = {"model.language_model." + from_canonical(n, spec.family)[len("model."):]: torch.from_numpy(a.copy())
             for n, a in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "language_model" in m and "lm_head" not in m]:
        raise RuntimeError(f"tiny multimodal Gemma 3: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(out_dir)
    return out_dir
