"""Gemma 4 (text decoder) run: the reference runtime against transformers, `parity` across runtimes (with the
experts' routing compared), and `verify` observing Gemma 4's pieces in the running model.

The tiny seeded checkpoints are test_gemma4.py's (`dense`: PLE, KV sharing, double-wide MLP, mixed head geometry;
`moe`: experts beside the dense MLP, K=V); every expected logit comes from the transformers model that wrote them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_gemma4 import dense, moe, run  # noqa: F401  (module fixtures)

# BOS, then ids past the 4-token sliding window: every sliding layer's last queries see only part of the sequence
TOKENS = [2, 17, 40, 5, 63, 9, 31, 12, 50, 7, 44, 26, 3, 58, 21, 36, 11, 60, 29, 48]


def _agree(ckpt_dir: str, model) -> None:
    """Reference and transformers runs of `ckpt_dir`: every hidden state within 1e-4 of its scale, the logits
    within 1e-4 of the model that wrote the files."""
    from gemma_inspect.formats import load
    from gemma_inspect.runtimes import run as run_model

    ckpt = load(ckpt_dir)
    ref = run_model(ckpt, TOKENS, "reference", "cpu", "float32")
    hf = run_model(ckpt, TOKENS, "transformers", "cpu", "float32")
    n = ckpt.spec.num_layers
    assert len(ref.hidden_states) == len(hf.hidden_states) == n + 2
    for a, b in zip(ref.hidden_states, hf.hidden_states):
        assert a.shape == b.shape == (1, len(TOKENS), 32)
        assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())
    with torch.no_grad():
        want = model(torch.tensor([TOKENS])).logits
    scale = float(want.abs().max())
    assert float((ref.logits - want).abs().max()) <= 1e-4 * scale
    assert float((hf.logits - want).abs().max()) <= 1e-5 * scale


# ----------------------------------------------------------------------------- reference vs transformers
def test_reference_and_transformers_agree_dense(dense):
    """PLE, KV sharing (layers 4-5 attend with 3's and 2's K/V), double-wide MLP, head_dim 8 / 16."""
    _agree(*dense)


def test_reference_and_transformers_agree_moe(moe):
    """Experts beside the dense MLP on every layer, K=V on the full layers with their own K/V head count."""
    _agree(*moe)


def test_unused_kv_of_shared_layers_are_not_read(dense, tmp_path):
    """Google's original files store k/v/k_norm for the KV-shared layers: both runtimes run such a file, and the
    stored (here: garbage) tensors change nothing - a shared layer attends with its source layer's K/V."""
    from safetensors.torch import load_file, save_file

    d, m = dense
    out = tmp_path / "with-kv"
    shutil.copytree(d, out)
    tensors = load_file(str(out / "model.safetensors"))
    for i, head_dim in ((4, 8), (5, 16)):
        for name, shape in (("k_proj.weight", (2 * head_dim, 32)), ("v_proj.weight", (2 * head_dim, 32)),
                            ("k_norm.weight", (head_dim,))):
            tensors[f"model.layers.{i}.self_attn.{name}"] = 5 * torch.ones(shape)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _agree(str(out), m)
