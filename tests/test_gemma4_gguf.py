"""Gemma 4 <-> GGUF `gemma4` (llama.cpp's converter's layout), both ways: tiny seeded checkpoints written by
transformers, their GGUF read by the gguf package's own reader, converted back bit-exactly and run by transformers
to the source's logits; what transformers' own GGUF loader does with such a file; llama.cpp (llama-cpp-python)
running it, where installed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from test_gemma4 import FULL, SLIDING, _build, dense, moe, run, summary_json  # noqa: F401 - fixtures

ROUTER_GAIN = 40.0
IDS = [2, 5, 9, 13, 22, 40, 7, 3, 11, 19, 33, 60, 1, 8]  # longer than the sliding window (4)


@pytest.fixture(scope="module")
def shaped(tmp_path_factory):
    """Everything at once, shaped as llama.cpp's gemma4 runs it: PLE, KV sharing whose sources are llama.cpp's
    (the last layer computing K/V is full, the one before sliding), K=V on full layers with the sliding layers'
    K/V head count, experts beside the dense MLP."""
    d = str(tmp_path_factory.mktemp("g4shaped"))
    m = _build(d, 3, num_hidden_layers=6, layer_types=[SLIDING, SLIDING, SLIDING, FULL, SLIDING, FULL],
               vocab_size_per_layer_input=64, hidden_size_per_layer_input=4, num_kv_shared_layers=2,
               attention_k_eq_v=True, num_global_key_value_heads=2, enable_moe_block=True, num_experts=4,
               top_k_experts=2, moe_intermediate_size=8)
    return d, m


def _convert(src: str, dest: str, to: str, *extra: str) -> str:
    r = run("convert", src, dest, "--to", to, *extra)
    assert r.exit_code == 0, r.output
    return r.output


def _hf_tensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


def _logits(path_or_model, ids=IDS) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    m = path_or_model
    if isinstance(m, str):
        m = AutoModelForCausalLM.from_pretrained(m, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0].numpy()


def _fields(path: str) -> tuple[dict, dict]:
    from gguf import GGUFReader

    r = GGUFReader(path)
    return {k: v.contents() for k, v in r.fields.items()}, {t.name: t for t in r.tensors}


def _arr(t) -> np.ndarray:
    """A GGUFReader tensor in numpy order (its shape reversed from GGUF's ne)."""
    return np.asarray(t.data).reshape(tuple(reversed([int(x) for x in t.shape])))


def test_hf_to_gguf_is_llama_cpps_layout(moe, tmp_path):
    d, m = moe
    g = str(tmp_path / "m.gguf")
    _convert(d, g, "gguf")
    f, t = _fields(g)
    sd = m.state_dict()
    assert f["general.architecture"] == "gemma4"
    assert (f["gemma4.block_count"], f["gemma4.embedding_length"], f["gemma4.feed_forward_length"]) == (4, 32, 48)
    # full layers: their own head_dim (key_length) and K/V head count; sliding layers: key_length_swa
    assert (f["gemma4.attention.key_length"], f["gemma4.attention.key_length_swa"]) == (16, 8)
    assert (f["gemma4.attention.value_length"], f["gemma4.attention.value_length_swa"]) == (16, 8)
    assert f["gemma4.attention.head_count_kv"] == [2, 1, 2, 1] and f["gemma4.attention.head_count"] == 4
    assert (f["gemma4.rope.dimension_count"], f["gemma4.rope.dimension_count_swa"]) == (16, 8)
    assert (f["gemma4.rope.freq_base"], f["gemma4.rope.freq_base_swa"]) == (1e6, 1e4)
    assert f["gemma4.attention.sliding_window_pattern"] == [True, False, True, False]
    assert (f["gemma4.attention.sliding_window"], f["gemma4.attention.shared_kv_layers"]) == (4, 0)
    assert f["gemma4.embedding_length_per_layer_input"] == 0 and f["gemma4.final_logit_softcapping"] == 30.0
    assert (f["gemma4.expert_count"], f["gemma4.expert_used_count"]) == (4, 2)
    assert f["gemma4.expert_feed_forward_length"] == 8
    # proportional RoPE: 0.25 of the 16-wide full heads rotated = 2 pairs at divisor 1, the other 6 left alone
    assert _arr(t["rope_freqs.weight"]).tolist() == [1.0, 1.0] + [np.float32(1e30)] * 6
    for i in range(4):
        L = f"model.layers.{i}."
        # norms as they are (no +1), the layer scalar, the router's scales, the fused experts: HF's values exactly
        for gname, hf in ((f"blk.{i}.attn_norm.weight", L + "input_layernorm.weight"),
                          (f"blk.{i}.layer_output_scale.weight", L + "layer_scalar"),
                          (f"blk.{i}.ffn_gate_inp.weight", L + "router.proj.weight"),
                          (f"blk.{i}.ffn_gate_inp.scale", L + "router.scale"),
                          (f"blk.{i}.ffn_down_exps.scale", L + "router.per_expert_scale"),
                          (f"blk.{i}.ffn_gate_up_exps.weight", L + "experts.gate_up_proj"),
                          (f"blk.{i}.ffn_down_exps.weight", L + "experts.down_proj"),
                          (f"blk.{i}.pre_ffw_norm_2.weight", L + "pre_feedforward_layernorm_2.weight"),
                          (f"blk.{i}.post_ffw_norm_1.weight", L + "post_feedforward_layernorm_1.weight"),
                          (f"blk.{i}.post_ffw_norm_2.weight", L + "post_feedforward_layernorm_2.weight")):
            assert np.array_equal(_arr(t[gname]), sd[hf].numpy()), gname
        assert t[f"blk.{i}.layer_output_scale.weight"].tensor_type.name == "F32"
        # K=V: full layers store no attn_v (llama.cpp then takes K as V)
        assert (f"blk.{i}.attn_v.weight" in t) == (i % 2 == 0)
    assert 0.3 <= float(_arr(t["blk.0.layer_output_scale.weight"])[0]) <= 0.9
    assert t["blk.1.ffn_gate_up_exps.weight"].shape.tolist() == [32, 16, 4]  # ne: [hidden, 2 x expert width, E]
    assert "output.weight" not in t  # tied


def test_dense_layout_and_kv_sources_llama_cpp_would_misread(dense, tmp_path):
    """The dense fixture's KV-shared layers read layers 3 and 2; llama.cpp's gemma4 reads n_kv - 2 = 2 for a sliding
    layer and n_kv - 1 = 3 for a full one: refused, written under --force with a note."""
    d, m = dense
    g = tmp_path / "m.gguf"
    r = run("convert", d, str(g), "--to", "gguf")
    assert r.exit_code == 2 and not g.exists()
    assert r.output == ("Error: GGUF cannot express this checkpoint faithfully: KV-shared layers 4 (reads layer 3, "
                        "llama.cpp reads 2), 5 (reads layer 2, llama.cpp reads 3): llama.cpp's gemma4 reads layer "
                        "n_kv - 2 on sliding layers and n_kv - 1 on full ones (use --force to write it anyway)\n")
    out = _convert(d, str(g), "gguf", "--force")
    assert "note: --force: KV-shared layers 4 (reads layer 3, llama.cpp reads 2)" in out
    f, t = _fields(str(g))
    assert f["gemma4.feed_forward_length"] == [48, 48, 48, 48, 96, 96]  # double-wide on the KV-shared layers
    assert f["gemma4.attention.head_count_kv"] == 2 and f["gemma4.attention.shared_kv_layers"] == 2
    assert f["gemma4.embedding_length_per_layer_input"] == 4
    sd = m.state_dict()
    assert np.array_equal(_arr(t["per_layer_token_embd.weight"]), sd["model.embed_tokens_per_layer.weight"].numpy())
    assert np.array_equal(_arr(t["per_layer_model_proj.weight"]), sd["model.per_layer_model_projection.weight"].numpy())
    # KV-shared layers store no k/v/k_norm (llama.cpp asks for them only where K/V are computed)
    assert "blk.3.attn_k.weight" in t and not any(f"blk.{i}.attn_{k}" in n for i in (4, 5) for k in "kv" for n in t)


@pytest.mark.parametrize("which", ["dense", "moe", "shaped"])
def test_gguf_round_trip_is_exact_and_runs_as_the_source(which, request, tmp_path):
    """HF -> GGUF -> HF: the same tensors (torch.equal), the same config, and transformers computes the source's
    logits from the result; `diff` says the GGUF holds the source's tensors, `summary` the same model."""
    d, m = request.getfixturevalue(which)
    g, back = str(tmp_path / "m.gguf"), str(tmp_path / "hf")
    _convert(d, g, "gguf", "--force")
    _convert(g, back, "hf")
    a, b = _hf_tensors(d), _hf_tensors(back)
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    got, want = _logits(back), _logits(m)
    assert float(np.abs(got - want).max()) <= 1e-4
    r = run("diff", d, g)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1] == f"{len(a)} equal: identical"
    s_hf, s_gguf = summary_json(d), summary_json(g)
    assert s_gguf["architecture"] == s_hf["architecture"] and s_gguf["parameters"] == s_hf["parameters"]
    assert s_gguf["format"] == "gguf" and s_gguf["layer_scalars_stored"] == m.config.num_hidden_layers


def _patched(g, tmp_path, index: int, value: float, name: str):
    """A copy of the GGUF `g` with rope_freqs[index] = value."""
    from gemma_inspect.formats.gguf_header import read_header

    info = next(t for t in read_header(str(g)).tensors if t.name == "rope_freqs.weight")
    raw = bytearray(g.read_bytes())
    raw[info.start + 4 * index:info.start + 4 * index + 4] = np.float32(value).tobytes()
    out = tmp_path / name
    out.write_bytes(bytes(raw))
    return out


def test_reader_takes_the_rotated_fraction_from_rope_freqs_and_refuses_another_tensor(moe, tmp_path):
    """rope_freqs is set aside on reading: the rotated fraction of full heads comes from it (one more pair at
    divisor 1: 3 of 8 pairs, 0.375), and a tensor that is not the converter's pattern is refused in one line."""
    d, _ = moe
    g = tmp_path / "m.gguf"
    _convert(d, str(g), "gguf")
    assert summary_json(str(g))["architecture"]["rope_partial_factor"] == 0.25
    wider = _patched(g, tmp_path, 2, 1.0, "wider.gguf")
    assert summary_json(str(wider))["architecture"]["rope_partial_factor"] == 0.375
    bad = _patched(g, tmp_path, 7, 1.0, "bad.gguf")
    r = run("summary", str(bad))
    assert r.exit_code == 2
    assert r.output == (f"Error: {bad}: rope_freqs.weight is not proportional RoPE's frequency divisors for head_dim "
                        f"16 (1 on the first pairs, 1e+30 on the others)\n")


def test_transformers_gguf_loader_drops_gemma4_scales(shaped, moe, dense, tmp_path):
    """transformers 5.24's own GGUF loader (from_pretrained(dir, gguf_file=...)) and a gemma4 GGUF as llama.cpp's
    converter writes it: its name map looks for `blk.N.layer_output_scale`, `blk.N.ffn_gate_up_exps` and
    `blk.N.ffn_down_exps` without the `.weight` the converter writes, and has no name at all for the router's
    `ffn_gate_inp.scale` and `ffn_down_exps.scale`: the layer scalars, the experts and both MoE scales would be left
    at their initial values. It reads neither key_length_swa nor the per-layer keys, so on these files it stops
    before running: per-layer K/V head counts and FFN widths fail its config's type check, and the rest as size
    mismatches. Our GGUF -> HF conversion keeps every one of them (logits: the round-trip test above)."""
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    d, src = shaped
    g = tmp_path / "shaped.gguf"
    _convert(d, str(g), "gguf")
    _, stored = _fields(str(g))
    names = get_gguf_hf_weights_map(src, TensorProcessor(config=src.config))
    unread = sorted({n.split(".", 2)[2] for n in stored if n.startswith("blk.") and n not in names})
    assert unread == ["ffn_down_exps.scale", "ffn_down_exps.weight", "ffn_gate_inp.scale", "ffn_gate_up_exps.weight",
                      "layer_output_scale.weight"]
    assert names["blk.0.layer_output_scale"] == "model.layers.0.layer_scalar"
    assert "blk.0.layer_output_scale" not in stored and "blk.0.layer_output_scale.weight" in stored
    targets = set(names.values())
    assert "model.layers.0.router.scale" not in targets and "model.layers.0.router.per_expert_scale" not in targets
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="shaped.gguf")
    for fixture, key in ((moe, "num_key_value_heads"), (dense, "intermediate_size")):
        gd = tmp_path / key
        gd.mkdir()
        _convert(fixture[0], str(gd / "m.gguf"), "gguf", "--force")
        with pytest.raises(Exception, match=f"Field '{key}' expected int, got list"):
            AutoModelForCausalLM.from_pretrained(str(gd), gguf_file="m.gguf")


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, tiny_tokenizer):
    """The llama-shaped model with a 384-token vocabulary and a tokenizer.json (BPE with byte fallback, Gemma's
    layout, no tokenizer.model beside it), as Gemma 4 ships its tokenizer. The routers' weights are scaled up so
    that every token's top-2 experts win clearly (a near tie flips with any kernel's rounding)."""
    from gemma_inspect.tokenizer import write_hf_fast_tokenizer

    d = str(tmp_path_factory.mktemp("g4tok"))
    m = _build(d, 4, vocab_size=384, num_hidden_layers=6, layer_types=[SLIDING, SLIDING, SLIDING, FULL, SLIDING, FULL],
               vocab_size_per_layer_input=384, hidden_size_per_layer_input=4, num_kv_shared_layers=2,
               attention_k_eq_v=True, num_global_key_value_heads=2, enable_moe_block=True, num_experts=4,
               top_k_experts=2, moe_intermediate_size=8)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.router.proj.weight.mul_(ROUTER_GAIN)
    m.save_pretrained(d)
    write_hf_fast_tokenizer(tiny_tokenizer, d)
    assert not os.path.exists(os.path.join(d, "tokenizer.model"))
    return d, m


def test_tokenizer_json_to_gguf_as_llama_cpps_converter_writes_it(tokenized, tmp_path):
    """tokenizer.ggml.* as Gemma4Model.set_vocab writes them: model 'gemma4', gguf's LlamaHfVocab's tokens, scores
    and types (its chat parser's tokens USER_DEFINED: none in this vocabulary), SpecialVocab's merges and ids."""
    from pathlib import Path

    import gguf

    d, _ = tokenized
    g = str(tmp_path / "m.gguf")
    _convert(d, g, "gguf")
    f, _ = _fields(g)
    want = list(gguf.LlamaHfVocab(Path(d)).all_tokens())
    assert f["tokenizer.ggml.model"] == "gemma4" and len(want) == 384
    assert f["tokenizer.ggml.tokens"] == [t.decode() for t, _, _ in want]
    assert f["tokenizer.ggml.scores"] == [s for _, s, _ in want] == [-1000.0] * 384
    assert f["tokenizer.ggml.token_type"] == [int(k) for _, _, k in want]
    assert f["tokenizer.ggml.merges"] == gguf.SpecialVocab(Path(d), load_merges=True).merges
    assert len(f["tokenizer.ggml.merges"]) > 0
    ids = {k: f[f"tokenizer.ggml.{k}_token_id"] for k in ("bos", "eos", "unknown", "padding")}
    assert ids == {"bos": 2, "eos": 1, "unknown": 3, "padding": 0}
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.add_space_prefix"] is False


def test_gguf_tokenizer_back_to_hf_tokenizes_as_the_source(tokenized, tmp_path):
    """GGUF -> HF: the tokenizer rebuilt from the tokens and merges (pieces no merge produces, such as
    <start_of_turn>, matched whole) gives the source tokenizer.json's ids on every parity text, and the weights
    come back exactly."""
    from transformers import AutoTokenizer

    from gemma_inspect.tokenizer import PARITY_TEXTS

    d, _ = tokenized
    g, back = str(tmp_path / "m.gguf"), str(tmp_path / "hf")
    _convert(d, g, "gguf")
    out = _convert(g, back, "hf")
    assert ("note (source): 2 tokens no merge produces (e.g. '<start_of_turn>') are read as user-defined pieces, "
            "matched whole in text as the tokenizer.json they came from matches them") in out
    a, b = AutoTokenizer.from_pretrained(d), AutoTokenizer.from_pretrained(back)
    assert any("<start_of_turn>" in t for t in PARITY_TEXTS)
    for text in PARITY_TEXTS:
        assert b(text)["input_ids"] == a(text)["input_ids"], text
    x, y = _hf_tensors(d), _hf_tensors(back)
    assert sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.slow
def test_llama_cpp_runs_our_gemma4_gguf_as_transformers(tokenized, tmp_path):
    """llama.cpp (llama-cpp-python) loads our gemma4 GGUF of a model shaped as its gemma4 runs it (PLE, KV sharing
    with its source layers, K=V full layers, experts with both MoE scales, layer scalars, proportional RoPE on
    16-wide full heads, a sliding window shorter than the sequence, the tokenizer as 'gemma4' BPE) and computes
    transformers' logits: within 3% of their scale (ggml's GELU from a float16 table, its own accumulation; measured
    2.1%), the same argmax everywhere; without the layer scalars transformers is off by over 10%. The routers are
    scaled up (the fixture) so that rounding cannot flip a token's choice of experts."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it builds from source)")
    d, m = tokenized
    g = str(tmp_path / "m.gguf")
    _convert(d, g, "gguf")
    ids = [2, 17, 40, 5, 99, 250, 31, 8, 77, 120, 64, 3, 200, 11, 45, 9]
    # K/V cached in float32 (type 0), not llama.cpp's default float16: the computations are compared, not the cache
    llm = llama_cpp.Llama(model_path=g, n_ctx=64, logits_all=True, verbose=False, type_k=0, type_v=0)
    llm.eval(ids)
    got = np.asarray(llm.scores)[: len(ids)]
    want = _logits(m, ids)
    assert got.shape == want.shape == (len(ids), 384)
    scale = float(np.abs(want).max())
    assert float(np.abs(got - want).max()) <= 0.03 * scale
    assert (got.argmax(-1) == want.argmax(-1)).all()
    # its 'gemma4' BPE tokenizer reads our vocabulary and merges as the source tokenizer.json does (texts without
    # the chat markers, which the converter types NORMAL and llama.cpp then spells out)
    from transformers import AutoTokenizer

    from gemma_inspect.tokenizer import PARITY_TEXTS

    hf_tok = AutoTokenizer.from_pretrained(d)
    plain = [t for t in PARITY_TEXTS if "<" not in t]
    assert len(plain) >= 4
    for text in plain:
        assert llm.tokenize(text.encode(), add_bos=True) == hf_tok(text)["input_ids"], text
    # the layer scalars matter: the same file without them computes something else
    m_plain = type(m)(m.config).eval()
    m_plain.load_state_dict({k: (torch.ones_like(v) if k.endswith("layer_scalar") else v)
                             for k, v in m.state_dict().items()})
    assert float(np.abs(_logits(m_plain, ids) - want).max()) > 0.1 * scale


def test_gguf_to_gguf_keeps_quantized_blocks_and_the_gemma4_vocabulary(tokenized, tmp_path):
    """A Q8_0 gemma4 GGUF converted to GGUF again: the same metadata (its 'gemma4' vocabulary and merges as they
    are), the same tensors in the same types, block for block."""
    d, _ = tokenized
    q, again = str(tmp_path / "q.gguf"), str(tmp_path / "again.gguf")
    _convert(d, q, "gguf", "--dtype", "q8_0")
    _convert(q, again, "gguf")
    fa, ta = _fields(q)
    fb, tb = _fields(again)
    assert sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k)) == ["general.name"]
    assert fb["tokenizer.ggml.model"] == "gemma4" and list(ta) == list(tb)
    assert ta["blk.0.attn_q.weight"].tensor_type.name == "Q8_0"
    for n in ta:
        assert ta[n].tensor_type == tb[n].tensor_type and np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data))


def test_gguf_writer_refuses_a_model_without_sliding_layers(tmp_path):
    """llama.cpp's gemma4 always builds a sliding-window KV cache and aborts (GGML_ASSERT is_swa_any) on a model
    without a sliding layer: refused in one line, nothing written; --force writes it, and it reads back exactly."""
    d = str(tmp_path / "hf")
    _build(d, 5, num_hidden_layers=2, layer_types=[FULL, FULL], hidden_size_per_layer_input=0)
    g = tmp_path / "m.gguf"
    r = run("convert", d, str(g), "--to", "gguf")
    assert r.exit_code == 2 and not g.exists()
    assert r.output == ("Error: GGUF cannot express this checkpoint faithfully: no sliding-window layer: llama.cpp's "
                        "gemma4 stops on an assertion (is_swa_any) when it makes its KV cache (use --force to write "
                        "it anyway)\n")
    _convert(d, str(g), "gguf", "--force")
    back = str(tmp_path / "back")
    _convert(str(g), back, "hf")
    a, b = _hf_tensors(d), _hf_tensors(back)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_gguf_metadata_that_gemma4_cannot_mean_is_refused(moe, tmp_path):
    """Metadata no Gemma 4 has, one line each: a layout without the per-layer pattern llama.cpp requires, K/V head
    counts varying within a layer type, FFN widths neither uniform nor double-wide on the KV-shared layers."""
    from gemma_inspect.errors import GemmaInspectError
    from gemma_inspect.formats import gguf_gemma4 as G4
    from gemma_inspect.formats.gguf_header import read_header

    d, _ = moe
    g = str(tmp_path / "m.gguf")
    _convert(d, g, "gguf")

    def message(**changes) -> str:
        header = read_header(g)
        for key, value in changes.items():
            key = "gemma4." + key.replace("__", ".")
            if value is None:
                del header.metadata[key]
            else:
                header.metadata[key] = value
        with pytest.raises(GemmaInspectError) as e:
            G4.hf_config(header, g)
        return str(e.value)

    assert message(attention__sliding_window_pattern=None) == (
        f"{g}: metadata 'gemma4.attention.sliding_window_pattern' must be 4 booleans (llama.cpp's gemma4 requires "
        f"them)")
    assert message(attention__head_count_kv=np.array([2, 1, 1, 1], np.uint32)) == (
        f"{g}: attention.head_count_kv [2, 1, 1, 1] varies within a layer type; Gemma 4 has one K/V head count for "
        f"sliding layers and one for full layers")
    assert message(feed_forward_length=np.array([48, 48, 96, 48], np.uint32)) == (
        f"{g}: feed_forward_length [48, 48, 96, 48] is neither one width nor twice it on the 0 KV-shared layers "
        f"(use_double_wide_mlp); Gemma 4 has no other layout")


def test_keras_to_gguf_and_back_to_keras_is_exact(shaped, tmp_path):
    """The other directions through GGUF: HF -> Keras -> GGUF -> Keras gives the first preset's tensors back bit for
    bit (diff: identical), and the GGUF runs as the Keras preset (parity keras-hub vs the reference runtime)."""
    from gemma_inspect.formats import load

    d, _ = shaped
    keras, gguf_path, back = str(tmp_path / "k"), str(tmp_path / "k.gguf"), str(tmp_path / "k2")
    _convert(d, keras, "keras")
    _convert(keras, gguf_path, "gguf")
    _convert(gguf_path, back, "keras")
    a, b = load(keras), load(back)
    assert a.spec == b.spec and a.tensors.keys() == b.tensors.keys()
    for name, ref in a.tensors.items():
        assert np.array_equal(ref.load(), b.tensors[name].load()), name
    r = run("diff", keras, gguf_path)
    assert r.exit_code == 0 and r.output.rstrip().endswith("equal: identical"), r.output
    r = run("parity", keras, gguf_path, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["passed"] is True and report["first_divergent_layer"] is None, report["layers"]
