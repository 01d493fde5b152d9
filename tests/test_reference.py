"""The reference runtime against transformers (1e-5 in float32 on every tiny family), the hidden-state
convention shared by all runtimes, and the runtime entry points (`run`, `resolve_runtime`, `resolve_device`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from defects import embedding_scale_in_float32
from gemma_inspect import load
from gemma_inspect.errors import InputError, UnsupportedError
from gemma_inspect.parity import default_tokens
from gemma_inspect.runtimes import reference, resolve_device, resolve_runtime, run
from gemma_inspect.tiny import random_weights, tiny_spec, write_hf

FAMILIES = ("gemma", "gemma-mha", "gemma2", "gemma3")


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _assert_matches(ref, hf, atol: float = 1e-5) -> None:
    assert len(ref.hidden_states) == len(hf.hidden_states)
    for i, (x, y) in enumerate(zip(ref.hidden_states, hf.hidden_states)):
        assert x.shape == y.shape
        # 1e-5 absolute, and relative to the tensor's scale where the residual stream grows past 1
        assert _max_abs(x, y) <= atol * max(1.0, float(y.abs().max())), f"hidden state {i}"
    assert ref.logits.shape == hf.logits.shape
    assert _max_abs(ref.logits, hf.logits) <= atol * max(1.0, float(hf.logits.abs().max()))


@pytest.fixture(scope="module")
def hf_paths(tiny_models):
    return {f: tiny_models.get(f, "hf") for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_matches_transformers_float32(hf_paths, family):
    ckpt = load(hf_paths[family])
    ids = default_tokens(ckpt)
    if ckpt.spec.sliding_layers:
        assert len(ids) > ckpt.spec.sliding_window  # the window actually cuts the sequence
    ref = run(ckpt, ids, "reference", "cpu", "float32")
    hf = run(ckpt, ids, "transformers", "cpu", "float32")
    assert ref.runtime == "reference" and hf.runtime == "transformers"
    assert len(ref.hidden_states) == ckpt.spec.num_layers + 2
    assert ref.logits.shape == (1, len(ids), ckpt.spec.vocab_size)
    _assert_matches(ref, hf)
    # not vacuous: the model is far from constant
    assert float(hf.logits.std()) > 0.1


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_sliding_window_off_by_one_is_caught(hf_paths, family):
    """A window one token wider (kv > q - (w + 1)) must already differ at the first sliding layer (0)."""
    ckpt = load(hf_paths[family])
    ids = default_tokens(ckpt)
    hf = run(ckpt, ids, "transformers", "cpu", "float32")
    wrong = load(hf_paths[family])
    wrong.spec = ckpt.spec.replace(sliding_window=ckpt.spec.sliding_window + 1)
    bad = run(wrong, ids, "reference", "cpu", "float32")
    assert _max_abs(bad.hidden_states[0], hf.hidden_states[0]) == 0.0  # embedding untouched
    assert _max_abs(bad.hidden_states[1], hf.hidden_states[1]) > 1e-3  # block 0 (sliding) differs


def test_batch_of_two_sequences_matches_single_runs(hf_paths):
    ckpt = load(hf_paths["gemma2"])
    ids = default_tokens(ckpt)
    other = [2] + list(reversed(ids[1:]))
    both = run(ckpt, [ids, other], "reference", "cpu", "float32")
    one = run(ckpt, other, "reference", "cpu", "float32")
    assert both.logits.shape[0] == 2
    assert _max_abs(both.logits[1], one.logits[0]) < 1e-5


@pytest.mark.parametrize("changes", [dict(query_pre_attn_scalar=24), dict(tied_embeddings=False)],
                         ids=["query_pre_attn_scalar-24", "untied-lm-head"])
def test_reference_follows_spec_quirks_like_transformers(tmp_path, changes):
    """query_pre_attn_scalar != head_dim (as the 27B models) and an untied output matrix."""
    spec = tiny_spec("gemma2", **changes)
    w = random_weights(spec, seed=3)
    ckpt = load(write_hf(spec, w, str(tmp_path / "hf")))
    assert ckpt.spec.query_pre_attn_scalar == spec.query_pre_attn_scalar
    assert ckpt.spec.tied_embeddings == spec.tied_embeddings
    ids = default_tokens(ckpt)
    _assert_matches(run(ckpt, ids, "reference", "cpu", "float32"), run(ckpt, ids, "transformers", "cpu", "float32"))


def test_embedding_scale_is_rounded_to_bfloat16(tmp_path, monkeypatch):
    """sqrt(48) = 6.9282 is applied as 6.9375 in bfloat16 (as sqrt(3072) = 55.4256 becomes 55.5)."""
    import ml_dtypes

    spec = tiny_spec("gemma", hidden_size=48, dtype="bfloat16")
    assert spec.embedding_scale == 6.9375
    w = random_weights(spec, seed=1)
    ckpt = load(write_hf(spec, w, str(tmp_path / "hf")))
    ids = [2, 10, 200, 383]
    res = run(ckpt, ids, "reference", "cpu", "bfloat16")
    table = w["model.embed_tokens.weight"].astype(ml_dtypes.bfloat16)
    expected = (table[ids].astype(np.float32) * np.float32(6.9375)).astype(ml_dtypes.bfloat16).astype(np.float32)
    assert np.array_equal(res.hidden_states[0][0].numpy(), expected)
    monkeypatch.setattr(reference, "embed", embedding_scale_in_float32)
    buggy = run(ckpt, ids, "reference", "cpu", "bfloat16")
    exact = (table[ids].astype(np.float32) * np.float32(math.sqrt(48))).astype(ml_dtypes.bfloat16)
    assert np.array_equal(buggy.hidden_states[0][0].numpy(), exact.astype(np.float32))
    assert not np.array_equal(buggy.hidden_states[0][0].numpy(), expected)


def test_hidden_state_convention_against_transformers_output_hidden_states(hf_paths):
    """transformers 5's hidden_states tuple has L + 1 entries and its last one is already the final
    norm's output; ours has L + 2: [embedding, block 0..L-1, final norm]."""
    from transformers import AutoModelForCausalLM

    ckpt = load(hf_paths["gemma2"])
    ids = default_tokens(ckpt)
    ours = run(ckpt, ids, "transformers", "cpu", "float32")
    model = AutoModelForCausalLM.from_pretrained(hf_paths["gemma2"], dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    n = ckpt.spec.num_layers
    assert len(out.hidden_states) == n + 1
    assert len(ours.hidden_states) == n + 2
    for i in range(n):  # embedding and blocks 0..L-2 line up
        assert torch.equal(out.hidden_states[i].float(), ours.hidden_states[i])
    assert torch.equal(out.hidden_states[n].float(), ours.hidden_states[n + 1])  # the final norm
    assert not torch.equal(ours.hidden_states[n], ours.hidden_states[n + 1])  # block L-1 is its own point
    assert torch.equal(out.logits.float(), ours.logits)


def test_keras_runtime_final_state_is_the_backbones_own_output(tiny_models):
    """The keras runtime calls the backbone's layers in sequence; the result equals the functional model's."""
    import keras_hub
    from keras import ops

    path = tiny_models.get("gemma3", "keras")
    ckpt = load(path)
    ids = default_tokens(ckpt)
    res = run(ckpt, ids, "keras", "cpu", "float32")
    backbone = keras_hub.models.Backbone.from_preset(path, dtype="float32")
    x = np.asarray([ids], dtype="int32")
    out = backbone({"token_ids": x, "padding_mask": np.ones_like(x)})
    assert np.array_equal(ops.convert_to_numpy(out), res.hidden_states[-1].numpy())
    assert len(res.hidden_states) == ckpt.spec.num_layers + 2


def test_run_on_other_formats_through_transformers_and_keras(tiny_models):
    """A Keras preset through transformers and an HF directory through keras-hub (built in memory)."""
    keras_ckpt = load(tiny_models.get("gemma2", "keras"))
    hf_ckpt = load(tiny_models.get("gemma2", "hf"))
    ids = default_tokens(hf_ckpt)
    a = run(keras_ckpt, ids, "transformers", "cpu", "float32")
    b = run(hf_ckpt, ids, "transformers", "cpu", "float32")
    assert torch.equal(a.logits, b.logits)
    c = run(hf_ckpt, ids, "keras", "cpu", "float32")
    assert _max_abs(c.logits, b.logits) < 1e-4


# ----------------------------------------------------------------------------- entry points
def test_resolve_runtime_by_format(tiny_models):
    assert resolve_runtime(load(tiny_models.get("gemma", "hf"))) == "transformers"
    assert resolve_runtime(load(tiny_models.get("gemma", "keras"))) == "keras"
    assert resolve_runtime(load(tiny_models.get("gemma", "hf")), "reference") == "reference"
    with pytest.raises(InputError, match="built-in card: it has an architecture but no weights"):
        resolve_runtime(load("gemma-2b"))
    with pytest.raises(InputError, match="unknown runtime 'jax'"):
        resolve_runtime(load(tiny_models.get("gemma", "hf")), "jax")


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedError, match="device cuda was requested but torch sees no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_run_rejects_bad_tokens_and_options(tiny_models):
    ckpt = load(tiny_models.get("gemma", "hf"))
    with pytest.raises(InputError, match=r"token id 384 is outside the vocabulary of .* \(0..383\)"):
        run(ckpt, [2, 384], "reference", "cpu")
    with pytest.raises(InputError, match="non-empty"):
        run(ckpt, [], "reference", "cpu")
    with pytest.raises(InputError, match="runtime reference has no option device_map"):
        run(ckpt, [2, 5], "reference", "cpu", device_map="auto")
    with pytest.raises(InputError, match="unknown dtype 'float16'"):
        run(ckpt, [2, 5], "reference", "cpu", "float16")


def test_transformers_runtime_accepts_device_map(tiny_models):
    """device_map="auto" goes to accelerate (one device here); the result is the same model's."""
    ckpt = load(tiny_models.get("gemma3", "hf"))
    ids = default_tokens(ckpt)
    spread = run(ckpt, ids, "transformers", "cpu", "float32", device_map="auto")
    plain = run(ckpt, ids, "transformers", "cpu", "float32")
    assert torch.equal(spread.logits, plain.logits)
    with pytest.raises(UnsupportedError, match="device_map needs a Hugging Face directory; this is keras"):
        run(load(tiny_models.get("gemma3", "keras")), ids, "transformers", "cpu", device_map="auto")
