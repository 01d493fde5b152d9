"""GGUF: reading, writing, quantization, tokenizer and hostile files, judged by transformers and the gguf package."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from gemma_inspect.checkpoint import NORM_ROLES, parse_canonical
from gemma_inspect.cli import main
from gemma_inspect.convert import WriteOptions, convert
from gemma_inspect.errors import InputError, UnsupportedError
from gemma_inspect.formats import gguf as G
from gemma_inspect.formats import load
from gemma_inspect.tokenizer import PARITY_TEXTS

FAMILIES = ("gemma", "gemma-mha", "gemma2", "gemma3")
# Longer than the tiny models' sliding window (6), so local layers really mask.
TOKENS = np.array([[2, 17, 45, 301, 8, 99, 120, 7, 250, 33, 64, 5, 4, 200, 150, 11, 90, 310, 42, 77]])
F32_EPS = float(np.finfo(np.float32).eps)


def is_norm(name: str) -> bool:
    return parse_canonical(name)[0] in NORM_ROLES


@pytest.fixture(scope="module")
def gguf_of(tiny_models, tmp_path_factory):
    """`gguf_of(family, dtype="float32", tokenizer=True)`: the tiny HF checkpoint converted to GGUF once."""
    root = tmp_path_factory.mktemp("gguf")
    built: dict[tuple, str] = {}

    def get(family: str, dtype: str = "float32", tokenizer: bool = True) -> str:
        key = (family, dtype, tokenizer)
        if key not in built:
            dest = str(root / f"{family}-{dtype}-{tokenizer}.gguf")
            convert(tiny_models.get(family, tokenizer=tokenizer), dest, "gguf", WriteOptions(dtype=dtype))
            built[key] = dest
        return built[key]

    return get


def hf_logits(path: str, gguf_file: str | None = None, config=None) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    if config is not None:
        kwargs["config"] = config
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(TOKENS)).logits.float().numpy()


def custom_hf(tmp_path, spm: str, family: str, seed: int = 0, **overrides) -> str:
    from gemma_inspect import tiny

    spec = tiny.tiny_spec(family, **overrides)
    return tiny.write_hf(spec, tiny.random_weights(spec, seed), str(tmp_path / f"hf-{family}-custom"), spm)


# ----------------------------------------------------------------------------- names
def test_tensor_names_are_llama_cpps():
    import gguf

    T = gguf.MODEL_TENSOR
    role_tensor = {"embed": T.TOKEN_EMBD, "final_norm": T.OUTPUT_NORM, "lm_head": T.OUTPUT, "attn_norm": T.ATTN_NORM,
                   "post_attn_norm": T.ATTN_POST_NORM, "post_ffn_norm": T.FFN_POST_NORM, "q": T.ATTN_Q,
                   "k": T.ATTN_K, "v": T.ATTN_V, "o": T.ATTN_OUT, "q_norm": T.ATTN_Q_NORM, "k_norm": T.ATTN_K_NORM,
                   "gate": T.FFN_GATE, "up": T.FFN_UP, "down": T.FFN_DOWN}

    def llama_cpp(tensor) -> str:
        return gguf.TENSOR_NAMES[tensor].replace("{bid}", "{i}") + ".weight"

    for role, tensor in role_tensor.items():
        assert G.GGUF_NAMES[role] == llama_cpp(tensor), role
    # The pre-FFN norm: FFN_NORM in Gemma 1, FFN_PRE_NORM in Gemma 2/3 - both spelled blk.N.ffn_norm.
    assert G.GGUF_NAMES["ffn_norm"] == llama_cpp(T.FFN_NORM) == llama_cpp(T.FFN_PRE_NORM) == "blk.{i}.ffn_norm.weight"
    arch = {"gemma": gguf.MODEL_ARCH.GEMMA, "gemma2": gguf.MODEL_ARCH.GEMMA2, "gemma3": gguf.MODEL_ARCH.GEMMA3}
    from gemma_inspect.checkpoint import layer_roles
    from gemma_inspect.tiny import tiny_spec

    for family in ("gemma", "gemma2", "gemma3"):
        allowed = {llama_cpp(t) for t in gguf.MODEL_TENSORS[arch[family]]}
        for role in ["embed", "final_norm", *layer_roles(tiny_spec(family))]:
            assert G.GGUF_NAMES[role] in allowed, (family, role)
    assert G.parse_gguf_name("blk.12.post_ffw_norm.weight") == ("post_ffn_norm", 12)
    assert G.canonical_of("blk.3.ffn_norm.weight") == "model.layers.3.pre_feedforward_layernorm.weight"
    assert G.canonical_of("rope_freqs.weight") is None


def test_query_scale_is_inferred_as_llama_cpp_does():
    from gemma_inspect.spec import CARD_NAMES, card

    assert G.llama_cpp_query_scalar("gemma2", 46, 4608, 32, 128)[0] == 144
    assert G.llama_cpp_query_scalar("gemma3", 62, 5376, 32, 128)[0] == 168
    assert G.llama_cpp_query_scalar("gemma2", 42, 3584, 16, 256) == (256, "head_dim")
    assert G.llama_cpp_query_scalar("gemma3", 46, 5376, 32, 128)[0] == 128  # 46 layers is 27B for Gemma 2 only
    for name in CARD_NAMES:  # llama.cpp's rule gives every published Gemma 2/3 its own scale
        c = card(name)
        if c.family in ("gemma2", "gemma3"):
            got = G.llama_cpp_query_scalar(c.family, c.num_layers, c.hidden_size, c.num_attention_heads, c.head_dim)
            assert got[0] == c.query_pre_attn_scalar, name


# ----------------------------------------------------------------------------- HF -> GGUF -> back
@pytest.mark.parametrize("family", FAMILIES)
def test_hf_gguf_roundtrip_float32(tiny_models, gguf_of, tmp_path, family):
    src = load(tiny_models.get(family))
    path = gguf_of(family)
    got = load(path)
    assert got.format == "gguf"
    assert got.spec == src.spec
    assert list(got.tensors) == list(src.tensors)
    for name, ref in src.tensors.items():
        a, b = ref.load(), got.tensors[name].load()
        assert b.dtype == np.float32 and got.tensors[name].dtype == "float32"
        if is_norm(name):
            # stored as 1 + w in float32, read back as (1 + w) - 1: float32 rounding of the sum, no more
            assert not np.array_equal(a, 0)
            np.testing.assert_allclose(b, a, rtol=0, atol=F32_EPS * (1 + np.abs(a).max()))
        else:
            assert np.array_equal(a, b), name
    # ... and on to HF: every tensor back exactly, except the norms (float32 rounding).
    convert(path, str(tmp_path / "hf"), "hf")
    back = load(str(tmp_path / "hf"))
    assert back.spec == src.spec
    for name, ref in src.tensors.items():
        a, b = ref.load(), back.tensors[name].load()
        if is_norm(name):
            np.testing.assert_allclose(b, a, rtol=0, atol=F32_EPS * (1 + np.abs(a).max()))
        else:
            assert np.array_equal(a, b), name
    qpas_note = [n for n in got.notes if "query_pre_attn_scalar" in n]
    if family in ("gemma2", "gemma3"):
        assert qpas_note == ["query_pre_attn_scalar is not stored in GGUF; inferred as llama.cpp does: 16 (head_dim)"]
        assert {"query_pre_attn_scalar", "layer_types"} <= got.assumed
    else:
        assert qpas_note == []


@pytest.mark.parametrize("family", ("gemma", "gemma2", "gemma3"))
def test_written_file_has_llama_cpp_metadata_and_norms_plus_one(tiny_models, gguf_of, family):
    path = gguf_of(family)
    header = G.read_header(path)
    md = header.metadata
    spec = load(tiny_models.get(family)).spec
    assert md["general.architecture"] == family
    expected = {
        f"{family}.context_length": spec.max_position_embeddings,
        f"{family}.embedding_length": 64,
        f"{family}.block_count": spec.num_layers,
        f"{family}.feed_forward_length": 96,
        f"{family}.attention.head_count": 4,
        f"{family}.attention.head_count_kv": spec.num_key_value_heads,
        f"{family}.attention.key_length": spec.head_dim,
        f"{family}.attention.value_length": spec.head_dim,
        "general.file_type": 0,  # ALL_F32
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": False,
        "tokenizer.ggml.eot_token_id": 5,  # <end_of_turn> in the tiny vocabulary
    }
    for key, value in expected.items():
        assert md[key] == value, key
    assert md[f"{family}.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    if family == "gemma2":
        assert (md["gemma2.attn_logit_softcapping"], md["gemma2.final_logit_softcapping"]) == (50.0, 30.0)
        assert md["gemma2.attention.sliding_window"] == 6
        assert md["gemma2.rope.freq_base"] == 10000.0
    if family == "gemma3":
        assert md["gemma3.attention.sliding_window"] == 6
        assert md["gemma3.rope.freq_base"] == 1_000_000.0
        assert (md["gemma3.rope.scaling.type"], md["gemma3.rope.scaling.factor"]) == ("linear", 8.0)
        assert "gemma3.attn_logit_softcapping" not in md
    if family == "gemma":
        assert not any("softcapping" in k or "sliding_window" in k for k in md)
    assert len(md["tokenizer.ggml.tokens"]) == 384
    names = [t.name for t in header.tensors]
    assert "output.weight" not in names  # tied: the embedding is written once
    assert len(names) == len(set(names)) == len(load(tiny_models.get(family)).tensors)
    # The stored norms are 1 + w, in float32.
    src = load(tiny_models.get(family))
    for t in header.tensors:
        if t.name.endswith("norm.weight"):
            assert t.type_name == "F32"
            stored = np.fromfile(path, dtype=np.float32, count=t.numel, offset=t.start)
            w = src.tensors[G.canonical_of(t.name)].load()
            np.testing.assert_array_equal(stored, w + np.float32(1))


def test_transformers_reads_our_gguf_metadata(gguf_of):
    from transformers import AutoConfig

    path = gguf_of("gemma2")
    cfg = AutoConfig.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == ("gemma2", 4, 64, 96)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 2, 16)
    assert (cfg.sliding_window, cfg.attn_logit_softcapping, cfg.final_logit_softcapping) == (6, 50.0, 30.0)
    assert cfg.tie_word_embeddings is True
    # transformers does not restore query_pre_attn_scalar from a GGUF (GEMMA_FACTS section 4): it keeps 256.
    assert cfg.query_pre_attn_scalar == 256


@pytest.mark.parametrize("family", ("gemma2", "gemma3"))
def test_our_gguf_runs_in_transformers_with_the_source_logits(tiny_models, gguf_of, family):
    from transformers import AutoConfig

    src = tiny_models.get(family)
    path = gguf_of(family)
    cfg = AutoConfig.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    # What GGUF leaves implicit and transformers does not infer: the query scale llama.cpp infers (head_dim
    # 16 here) and, for Gemma 3, the linear RoPE scaling (stored as rope.scaling.*, which transformers skips).
    cfg.query_pre_attn_scalar = 16
    if family == "gemma3":
        cfg.rope_parameters["full_attention"] = {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0}
    got = hf_logits(os.path.dirname(path), os.path.basename(path), cfg)
    np.testing.assert_allclose(got, hf_logits(src), rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", ("gemma2", "gemma3"))
def test_our_gguf_runs_in_transformers_unaided_when_its_defaults_hold(tiny_tokenizer, tmp_path, family):
    # head_dim 256 (so query_pre_attn_scalar 256, transformers' default) and no RoPE scaling: the GGUF alone
    # carries everything transformers needs.
    src = custom_hf(tmp_path, tiny_tokenizer, family, seed=3, head_dim=256, query_pre_attn_scalar=256,
                    rope_scaling_factor=1.0)
    dest = str(tmp_path / "m.gguf")
    convert(src, dest, "gguf")
    np.testing.assert_allclose(hf_logits(str(tmp_path), "m.gguf"), hf_logits(src), rtol=0, atol=1e-4)


def test_gemma1_gguf_works_here(tiny_models, gguf_of, tmp_path):
    # transformers cannot read a Gemma 1 GGUF; we can, and the HF we write from it computes the source's logits.
    path = gguf_of("gemma")
    assert G.read_header(path).metadata["general.architecture"] == "gemma"
    convert(path, str(tmp_path / "hf"), "hf")
    np.testing.assert_allclose(hf_logits(str(tmp_path / "hf")), hf_logits(tiny_models.get("gemma")), rtol=0,
                               atol=1e-5)


def test_bfloat16_and_float16_outputs(tiny_models, gguf_of):
    src = load(tiny_models.get("gemma2", dtype="bfloat16"))
    kept = load(_bf16_keep(tiny_models, gguf_of))
    assert kept.spec.dtype == "bfloat16"
    for name, ref in src.tensors.items():
        if is_norm(name):
            assert kept.tensors[name].dtype == "float32"
            np.testing.assert_allclose(kept.tensors[name].load(), ref.load().astype(np.float32), rtol=0, atol=1e-6)
        else:
            assert kept.tensors[name].dtype == "bfloat16"
            assert kept.tensors[name].load().tobytes() == ref.load().tobytes(), name
    half = load(gguf_of("gemma2", dtype="float16"))
    f32 = load(tiny_models.get("gemma2"))
    assert half.quantization["file_type"] == "MOSTLY_F16"
    for name, ref in f32.tensors.items():
        if not is_norm(name):
            assert half.tensors[name].dtype == "float16"
            assert np.array_equal(half.tensors[name].load(), ref.load().astype(np.float16))


def _bf16_keep(tiny_models, gguf_of) -> str:
    dest = os.path.join(os.path.dirname(gguf_of("gemma2")), "bf16-keep.gguf")
    if not os.path.exists(dest):
        convert(tiny_models.get("gemma2", dtype="bfloat16"), dest, "gguf")
    return dest


# ----------------------------------------------------------------------------- q8_0
@pytest.mark.parametrize("family", ("gemma", "gemma2", "gemma3"))
def test_q8_0_output_is_close_and_keeps_top1(tiny_models, gguf_of, tmp_path, family):
    import gguf

    src = load(tiny_models.get(family))
    q = load(gguf_of(family, dtype="q8_0"))
    for name, ref in src.tensors.items():
        got = q.tensors[name]
        a = ref.load()
        if is_norm(name):
            assert got.dtype == "float32"
            continue
        assert got.dtype == "Q8_0" and got.nbytes == a.size // 32 * 34
        b = got.load()
        # exactly what the gguf package's own quantizer and dequantizer give ...
        np.testing.assert_array_equal(
            b, gguf.quants.dequantize(gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0),
                                      gguf.GGMLQuantizationType.Q8_0))
        # ... within Q8_0's error: half a step d = (block max / 127), plus 127 times the float16 rounding of d
        d = np.abs(a.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
        assert (np.abs(b - a).reshape(-1, 32) <= d * (0.5 + 127 * 2**-11)).all(), name
    stats = q.quantization
    assert stats["file_type"] == "MOSTLY_Q8_0"
    groups = {g["group"]: g for g in stats["groups"]}
    assert groups["embedding"]["types"] == {"Q8_0": 1} and groups["embedding"]["bits_per_weight"] == 8.5
    assert groups["norms"]["types"] == {"F32": len([n for n in src.tensors if is_norm(n)])}
    assert groups["norms"]["bits_per_weight"] == 32.0
    # Logits: the dequantized weights in transformers agree with the source on every position's top token.
    convert(gguf_of(family, dtype="q8_0"), str(tmp_path / "hf"), "hf")
    expected, got = hf_logits(tiny_models.get(family))[0], hf_logits(str(tmp_path / "hf"))[0]
    top2 = np.sort(expected, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.05  # positions whose top token leads the runner-up by > 0.05
    agree = got.argmax(-1) == expected.argmax(-1)
    assert clear.sum() >= 15 and agree[clear].all()
    assert agree.mean() >= 0.95
    # Q8_0 keeps each weight to ~0.5% (rms); through 2-7 random layers the logits move by 1.4-3% on average.
    diff = np.abs(got - expected)
    assert 0 < diff.mean() < 0.05 * np.abs(expected).mean() and diff.max() < 0.1 * np.abs(expected).max()


@pytest.mark.parametrize("to", ["hf", "keras", "gemma-pytorch"])
def test_dequantized_output_dtype_and_its_note(gguf_of, tmp_path, to):
    """A Q8_0 source written by a float-only format: float32 (with a note saying so) unless a cast is asked for,
    which is then what is stored (and no float32 note); q8_0 itself is refused by name."""
    src = gguf_of("gemma3", dtype="q8_0")
    note = "quantized tensors were dequantized and are stored as float32"
    ext = ".ckpt" if to == "gemma-pytorch" else ""
    for dtype, stored in (("keep", "float32"), ("bfloat16", "bfloat16")):
        report = convert(src, str(tmp_path / f"{to}-{dtype}{ext}"), to, WriteOptions(dtype=dtype))
        assert (note in report["notes"]) == (dtype == "keep")
        assert set(load(report["dest"]).dtype_counts()) == {stored}
    name = {"hf": "HF", "keras": "Keras", "gemma-pytorch": "gemma_pytorch"}[to]
    with pytest.raises(UnsupportedError) as e:
        convert(src, str(tmp_path / f"{to}-q8"), to, WriteOptions(dtype="q8_0"))
    assert str(e.value) == ("--dtype q8_0 is a GGUF quantization; choose one of keep, float32, bfloat16, float16 "
                            f"for {name}")


def test_write_options_reused_for_several_conversions_carry_no_notes_over(gguf_of, tiny_models, tmp_path):
    options = WriteOptions()
    first = convert(gguf_of("gemma3", dtype="q8_0"), str(tmp_path / "a"), "hf", options)
    second = convert(tiny_models.get("gemma3"), str(tmp_path / "b"), "hf", options)
    note = "quantized tensors were dequantized and are stored as float32"
    assert note in first["notes"] and note not in second["notes"]
    assert options.notes == [] and options.io == "auto"  # the caller's object is left as it was


def test_gguf_to_gguf_copies_quantized_blocks_as_they_are(gguf_of, tmp_path):
    src = gguf_of("gemma3", dtype="q8_0")
    for dtype in ("keep", "q8_0"):
        dest = str(tmp_path / f"{dtype}.gguf")
        convert(src, dest, "gguf", WriteOptions(dtype=dtype))
        a, b = G.read_header(src), G.read_header(dest)
        assert b.metadata["general.file_type"] == 7  # MOSTLY_Q8_0
        by_name = {t.name: t for t in b.tensors}
        for t in a.tensors:
            u = by_name[t.name]
            assert (u.type_name, u.shape) == (t.type_name, t.shape)
            if t.type_name == "Q8_0":
                assert G._read_raw(dest, u.start, u.nbytes).tobytes() == G._read_raw(src, t.start, t.nbytes).tobytes()


# ----------------------------------------------------------------------------- files quantized by the gguf package
# Every row a multiple of 256 values, as K- and I-quants need.
WIDE = dict(hidden_size=256, num_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
            query_pre_attn_scalar=64, intermediate_size=512)


def requantize(src: str, dest: str, types: list[str], seed: int = 0) -> dict[str, tuple[str, bytes]]:
    """Rewrite a float32 GGUF with the gguf package's own writer, matrix i stored as types[i]: quantized with
    gguf.quants.quantize where the package can, otherwise random (finite) blocks. Returns name -> (type, bytes)."""
    import gguf

    header = G.read_header(src)
    vt = {v.name: v for v in gguf.GGUFValueType}
    w = gguf.GGUFWriter(dest, header.metadata["general.architecture"])
    for key, value in header.metadata.items():
        if key == "general.architecture":
            continue
        tname = header.value_types[key]
        if tname.startswith("ARRAY"):
            sub = vt[tname[6:-1]]
            w.add_key_value(key, value.tolist() if isinstance(value, np.ndarray) else list(value),
                            gguf.GGUFValueType.ARRAY, sub_type=sub)
        else:
            w.add_key_value(key, value, vt[tname])
    rng = np.random.default_rng(seed)
    written: dict[str, tuple[str, bytes]] = {}
    matrices = iter(types)
    for t in header.tensors:
        arr = np.fromfile(src, dtype=np.float32, count=t.numel, offset=t.start).reshape(t.shape)
        qname = "F32" if arr.ndim == 1 else next(matrices)
        qtype = gguf.GGMLQuantizationType[qname]
        try:
            data = gguf.quants.quantize(arr, qtype)
        except NotImplementedError:  # dequantize-only types: finite random blocks (bytes < 0x3C keep f16 finite)
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            data = rng.integers(0, 0x3C, size=(t.shape[0], t.shape[1] // block * size), dtype=np.uint8)
        data = np.ascontiguousarray(data)
        if qname in ("F32", "F16"):
            w.add_tensor(t.name, data)
        else:
            w.add_tensor(t.name, data, raw_dtype=qtype)
        written[t.name] = (qname, data.tobytes())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


@pytest.fixture(scope="module")
def wide_gguf(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("wide")
    from gemma_inspect import tiny

    spec = tiny.tiny_spec("gemma3", **WIDE)
    hf = tiny.write_hf(spec, tiny.random_weights(spec, 1), str(root / "hf"), tiny_tokenizer)
    path = str(root / "f32.gguf")
    convert(hf, path, "gguf")
    return hf, path


def test_every_type_the_gguf_package_supports_reads_back_as_its_dequantize(wide_gguf, tmp_path):
    import gguf

    hf, f32 = wide_gguf
    supported = ["F16", *sorted(q.name for q in gguf.quants._type_traits)]  # every type it can dequantize
    assert {"Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q5_K", "Q6_K", "BF16", "IQ4_XS"} <= set(supported)
    n_matrices = 1 + 4 * 7
    assert len(supported) <= n_matrices
    types = (supported * 2)[:n_matrices]
    dest = str(tmp_path / "mixed.gguf")
    written = requantize(f32, dest, types)
    ckpt = load(dest)
    src = load(hf)
    quantizable = {"BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}
    tolerance = {"F16": 1e-3, "BF16": 1e-2, "Q8_0": 0.02, "Q5_0": 0.1, "Q5_1": 0.1, "Q4_0": 0.2, "Q4_1": 0.2}
    seen = set()
    for name, ref in ckpt.tensors.items():
        gname = G.gguf_name(*parse_canonical(name))
        qname, raw = written[gname]
        seen.add(qname)
        got = ref.load()
        assert got.shape == ref.shape
        if qname == "F32":  # norms: stored 1 + w
            np.testing.assert_array_equal(got, np.frombuffer(raw, np.float32).reshape(ref.shape) - np.float32(1))
            continue
        qtype = gguf.GGMLQuantizationType[qname]
        if qname == "F16":
            expected = np.frombuffer(raw, np.float16).reshape(ref.shape)
            assert ref.dtype == "float16"
        else:
            expected = gguf.quants.dequantize(np.frombuffer(raw, np.uint8).reshape(ref.shape[0], -1), qtype)
            assert ref.dtype == ("bfloat16" if qname == "BF16" else qname)
            assert ref.nbytes == len(raw)
        np.testing.assert_array_equal(got.astype(np.float32), expected.astype(np.float32), err_msg=f"{name} {qname}")
        if qname in quantizable or qname == "F16":
            a = src.tensors[name].load()
            assert np.abs(got.astype(np.float32) - a).max() <= tolerance[qname] * np.abs(a).max(), (name, qname)
    assert seen == set(supported) | {"F32"}
    # summary: types per group and bits per weight from the stored sizes
    q = ckpt.quantization
    total_bytes = sum(g["bytes"] for g in q["groups"])
    total_params = sum(g["parameters"] for g in q["groups"])
    assert q["bits_per_weight"] == round(8 * total_bytes / total_params, 3)
    emb = next(g for g in q["groups"] if g["group"] == "embedding")
    assert emb["types"] == {types[0]: 1}


def test_q4_0_file_summary_shows_types_and_bits_per_weight(wide_gguf, tmp_path):
    _hf, f32 = wide_gguf
    dest = str(tmp_path / "q4.gguf")
    requantize(f32, dest, ["Q6_K"] + ["Q4_0"] * 28)
    result = CliRunner().invoke(main, ["summary", dest, "--json"])
    assert result.exit_code == 0, result.output
    q = json.loads(result.output)["quantization"]
    groups = {g["group"]: g for g in q["groups"]}
    assert groups["embedding"]["types"] == {"Q6_K": 1} and groups["embedding"]["bits_per_weight"] == 6.562
    assert groups["attention"]["types"] == {"Q4_0": 16} and groups["attention"]["bits_per_weight"] == 4.5
    assert groups["feedforward"]["types"] == {"Q4_0": 12} and groups["feedforward"]["bits_per_weight"] == 4.5
    assert groups["norms"]["types"] == {"F32": 25} and groups["norms"]["bits_per_weight"] == 32.0
    table = CliRunner().invoke(main, ["summary", dest]).output
    assert "Quantization" in table and "Q4_0 x16" in table and "4.50" in table and "6.56" in table
    assert "inferred as llama.cpp does: 64 (head_dim)" in table


def test_gguf_summary_reads_headers_only_and_never_imports_torch(gguf_of):
    path = gguf_of("gemma3")
    code = ("import sys, json; from click.testing import CliRunner; from gemma_inspect.cli import main; "
            f"r = CliRunner().invoke(main, ['summary', {path!r}, '--json']); "
            "assert r.exit_code == 0, r.output; "
            "print(json.dumps([json.loads(r.output)['family'], 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '["gemma3", false]'


# ----------------------------------------------------------------------------- tokenizer
@pytest.mark.parametrize("family", ("gemma", "gemma2", "gemma3"))
def test_embedded_vocabulary_rebuilds_a_sentencepiece_model_with_equal_ids(tiny_models, gguf_of, family):
    src = load(tiny_models.get(family)).tokenizer
    tok = load(gguf_of(family)).tokenizer
    assert tok is not None and tok.spm_path is None and tok.has_spm
    for text in PARITY_TEXTS:
        assert tok.encode(text) == src.encode(text), text
    assert tok.special_ids() == src.special_ids() == {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3,
                                                      "<start_of_turn>": 4, "<end_of_turn>": 5}
    assert tok.vocab_size == 384


def test_gguf_to_hf_and_keras_gets_working_tokenizers(tiny_models, gguf_of, tmp_path, tiny_tokenizer):
    from transformers import AutoTokenizer

    from gemma_inspect.tokenizer import Tokenizer

    src_spm = Tokenizer("src", spm_path=tiny_tokenizer)
    src_hf = AutoTokenizer.from_pretrained(tiny_models.get("gemma2"))
    convert(gguf_of("gemma2"), str(tmp_path / "hf"), "hf")
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    convert(gguf_of("gemma2"), str(tmp_path / "k"), "keras")
    keras_spm = Tokenizer("k", spm_path=str(tmp_path / "k" / "assets" / "tokenizer" / "vocabulary.spm"))
    for text in PARITY_TEXTS:
        assert list(hf_tok(text)["input_ids"]) == list(src_hf(text)["input_ids"]), text
        assert keras_spm.encode(text) == src_spm.encode(text), text


def test_vocabulary_shorter_than_the_embedding_is_padded_with_unused_tokens(tiny_tokenizer, tmp_path):
    src = custom_hf(tmp_path, tiny_tokenizer, "gemma3", vocab_size=400)
    dest = str(tmp_path / "padded.gguf")
    report = convert(src, dest, "gguf")
    assert "the vocabulary has 384 pieces for 400 embedding rows: 16 unused [PAD] tokens added" in report["notes"]
    md = G.read_header(dest).metadata
    assert md["tokenizer.ggml.tokens"][384:386] == ["[PAD384]", "[PAD385]"] and len(md["tokenizer.ggml.tokens"]) == 400
    assert md["tokenizer.ggml.token_type"][384:].tolist() == [5] * 16
    tok = load(dest).tokenizer
    for text in PARITY_TEXTS:
        assert tok.encode(text) == load(src).tokenizer.encode(text)


def test_no_tokenizer_writes_no_tokenizer_metadata_and_says_llama_cpp_will_refuse(gguf_of, tiny_models):
    path = gguf_of("gemma2", tokenizer=False)
    md = G.read_header(path).metadata
    assert not any(k.startswith("tokenizer.") for k in md)
    report_note = ("the source has no tokenizer: the GGUF has no tokenizer metadata, and llama.cpp will refuse "
                   "to load it (it needs tokenizer.ggml.model, tokens, scores and token types)")
    report = convert(tiny_models.get("gemma2", tokenizer=False), path + ".again.gguf", "gguf")
    assert report_note in report["notes"]
    ckpt = load(path)
    assert ckpt.tokenizer is None
    assert "no tokenizer metadata in this GGUF (llama.cpp refuses to load such a file)" in ckpt.notes


# ----------------------------------------------------------------------------- what GGUF cannot express
def test_query_scale_gguf_cannot_store_is_refused_unless_forced(tiny_models, tmp_path):
    ckpt = load(tiny_models.get("gemma2"))
    ckpt.spec = ckpt.spec.replace(query_pre_attn_scalar=144)
    with pytest.raises(UnsupportedError, match=r"query_pre_attn_scalar is 144, but GGUF cannot store it and "
                                               r"llama.cpp will use 16 \(head_dim\)"):
        convert(ckpt, str(tmp_path / "x.gguf"), "gguf")
    assert not os.path.exists(tmp_path / "x.gguf")
    report = convert(ckpt, str(tmp_path / "x.gguf"), "gguf", WriteOptions(force=True))
    assert any(n.startswith("--force: query_pre_attn_scalar is 144") for n in report["notes"])
    assert load(str(tmp_path / "x.gguf")).spec.query_pre_attn_scalar == 16


def test_layouts_llama_cpp_hard_codes_are_refused(tiny_models, tmp_path):
    ckpt = load(tiny_models.get("gemma3"))
    ckpt.spec = ckpt.spec.replace(rope_local_theta=20000.0)
    with pytest.raises(UnsupportedError, match="hard-codes Gemma 3's local RoPE"):
        convert(ckpt, str(tmp_path / "a.gguf"), "gguf")
    ckpt = load(tiny_models.get("gemma2"))
    ckpt.spec = ckpt.spec.replace(layer_types=("full_attention",) * 4)
    with pytest.raises(UnsupportedError, match="sliding-window layout differs"):
        convert(ckpt, str(tmp_path / "b.gguf"), "gguf")


def test_writer_streams_one_tensor_at_a_time(tiny_models, tmp_path):
    calls = []
    convert(tiny_models.get("gemma3"), str(tmp_path / "s.gguf"), "gguf", progress=calls.append)
    header = G.read_header(str(tmp_path / "s.gguf"))
    assert calls == [t.nbytes for t in header.tensors]


# ----------------------------------------------------------------------------- hostile files
def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


@pytest.fixture(scope="module")
def small_gguf(gguf_of) -> bytes:
    with open(gguf_of("gemma"), "rb") as f:
        return f.read()


def _write(tmp_path, data: bytes, name: str = "bad.gguf") -> str:
    p = str(tmp_path / name)
    with open(p, "wb") as f:
        f.write(data)
    return p


def test_wrong_magic(tmp_path, small_gguf):
    p = _write(tmp_path, b"GGUX" + small_gguf[4:])
    with pytest.raises(InputError, match="must start with the magic 'GGUF'") as e:
        load(p)
    assert e.value.path == p
    with pytest.raises(InputError, match=r"not a GGUF file: starts with b'GGUX'"):
        G.read(p)


@pytest.mark.parametrize("fraction", (0.0005, 0.001, 0.01, 0.2, 0.5, 0.9, 0.999))
def test_truncated_file(tmp_path, small_gguf, fraction):
    cut = max(24, int(len(small_gguf) * fraction))
    p = _write(tmp_path, small_gguf[:cut])
    with pytest.raises(InputError, match="truncated") as e:
        load(p)
    assert e.value.path == p


def test_truncated_below_the_fixed_header(tmp_path, small_gguf):
    p = _write(tmp_path, small_gguf[:10])
    with pytest.raises(InputError, match="not a GGUF file: 10 bytes, too short for a header"):
        load(p)


KEY0 = 24 + 8 + len("general.architecture")  # offset of the first key's value type


@pytest.mark.parametrize("patch, message", [
    (lambda b: b[:4] + struct.pack("<I", 7) + b[8:], "unsupported GGUF version 7"),
    (lambda b: b[:4] + struct.pack(">I", 3) + b[8:], "big-endian GGUF files are not supported"),
    (lambda b: b[:8] + _u64(2**50) + b[16:], "tensor count 1125899906842624 is over the limit"),
    (lambda b: b[:16] + _u64(2**40) + b[24:], "metadata key count 1099511627776 is over the limit"),
    (lambda b: b[:KEY0] + struct.pack("<I", 99) + b[KEY0 + 4:],
     "metadata 'general.architecture': unknown value type 99"),
    (lambda b: b[:KEY0 + 4] + _u64(2**60) + b[KEY0 + 12:], "truncated: metadata 'general.architecture'"),
    (lambda b: b[:24] + _u64(len("general.architecture")) + b"\xff" * 20 + b[52:], "metadata key 0 is not valid UTF-8"),
    (lambda b: b.replace(b"gemma.context_length", b"general.architecture"), "'general.architecture' appears twice"),
    (lambda b: b.replace(b"gemma.block_count", b"gemma.block_cnt__"), "metadata 'gemma.block_count' is missing"),
    (lambda b: b.replace(_u64(5) + b"gemma", _u64(5) + b"llama", 1), "architecture 'llama' is not a Gemma"),
])
def test_corrupted_metadata(tmp_path, small_gguf, patch, message):
    data = patch(small_gguf)
    assert data != small_gguf
    p = _write(tmp_path, data)
    with pytest.raises((InputError, UnsupportedError), match=message) as e:
        load(p)
    assert p in str(e.value)


def _tensor_info_offset(data: bytes, path: str, name: str) -> int:
    i = data.index(_u64(len(name)) + name.encode())
    return i + 8 + len(name)  # at n_dims


def test_corrupted_tensor_infos(tmp_path, small_gguf):
    name = "blk.0.attn_q.weight"
    at = _tensor_info_offset(small_gguf, "", name)
    cases = [
        (small_gguf[:at] + struct.pack("<I", 9) + small_gguf[at + 4:], "has 9 dimensions"),
        (small_gguf[:at + 4 + 16] + struct.pack("<I", 77) + small_gguf[at + 24:], "unknown GGML type 77"),
        (small_gguf[:at + 24] + _u64(3) + small_gguf[at + 32:], "data offset 3 is not aligned"),
        (small_gguf[:at + 24] + _u64(2**40) + small_gguf[at + 32:], "truncated: tensor 'blk.0.attn_q.weight'"),
        (small_gguf[:at + 24] + _u64(0) + small_gguf[at + 32:], "overlap in the data section"),
        (small_gguf[:at + 4] + _u64(0) + small_gguf[at + 12:], "invalid dimensions"),
    ]
    for data, message in cases:
        p = _write(tmp_path, data)
        with pytest.raises(InputError, match=message) as e:
            load(p)
        assert e.value.path == p


def test_cli_says_one_error_line_and_exits_2(tmp_path, small_gguf):
    p = _write(tmp_path, small_gguf[: len(small_gguf) // 2])
    result = CliRunner().invoke(main, ["summary", p])
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {p}: truncated: ") and result.output.count("\n") == 1


def test_source_with_only_tokenizer_json_gets_its_vocabulary_rebuilt(tiny_models, copy_dir, tmp_path, tiny_tokenizer):
    from gemma_inspect.tokenizer import Tokenizer

    src = copy_dir(tiny_models.get("gemma2"))
    os.remove(os.path.join(src, "tokenizer.model"))
    dest = str(tmp_path / "j.gguf")
    report = convert(src, dest, "gguf")
    assert ("rebuilt the SentencePiece vocabulary from tokenizer.json (ids checked equal on the parity texts)"
            in report["notes"])
    tok, original = load(dest).tokenizer, Tokenizer("spm", spm_path=tiny_tokenizer)
    for text in PARITY_TEXTS:
        assert tok.encode(text) == original.encode(text), text


def test_summary_leaves_the_vocabulary_undecoded_and_a_bad_token_fails_when_used(tmp_path, small_gguf):
    from gemma_inspect.summary import summarize

    # Corrupt one token's bytes (same length): headers stay valid, the vocabulary does not.
    i = small_gguf.index(b"<start_of_turn>")
    p = _write(tmp_path, small_gguf[:i] + b"\xff" + small_gguf[i + 1:])
    ckpt = load(p)
    tokens = G.read_header(p).metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == 384 and tokens._items is None  # walked for its bounds, not decoded
    assert summarize(ckpt)["tokenizer"] == {"backend": "sentencepiece", "files": []}
    assert ckpt.tokenizer._built is None  # summary never builds the SentencePiece model
    with pytest.raises(InputError, match=r"'tokenizer.ggml.tokens'\[4\] is not valid UTF-8") as e:
        ckpt.tokenizer.encode("hello")
    assert e.value.path == p


def test_summary_of_a_27b_gguf_reads_headers_only(tmp_path):
    """A Gemma 3 27B-shaped Q4_K GGUF with its 262k vocabulary whose tensor data was never written (a sparse
    file): summarised in a fresh process from the header alone."""
    import gguf

    from gemma_inspect.checkpoint import expected_tensors
    from gemma_inspect.spec import card

    spec = card("gemma3-27b")
    path = str(tmp_path / "gemma3-27b-q4_k.gguf")
    w = gguf.GGUFWriter(path, "gemma3")
    w.add_context_length(131072)
    w.add_embedding_length(spec.hidden_size)
    w.add_block_count(spec.num_layers)
    w.add_feed_forward_length(spec.intermediate_size)
    w.add_head_count(spec.num_attention_heads)
    w.add_head_count_kv(spec.num_key_value_heads)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1_000_000.0)
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(8.0)
    w.add_sliding_window(1024)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(spec.vocab_size)])
    w.add_token_scores([0.0] * spec.vocab_size)
    w.add_token_types([1] * spec.vocab_size)
    total = 0
    for name, shape in expected_tensors(spec).items():
        q = gguf.GGMLQuantizationType.F32 if len(shape) == 1 else gguf.GGMLQuantizationType.Q4_K
        block, size = gguf.GGML_QUANT_SIZES[q]
        nbytes = int(np.prod(shape)) // block * size
        total += w.ggml_pad(nbytes, 32)
        w.add_tensor_info(G.gguf_name(*parse_canonical(name)), shape, np.dtype(np.float32), nbytes, raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    header_end = w.fout[0].tell()
    w.close()
    os.truncate(path, header_end + (-header_end % 32) + total)  # 16 GB, none of it on disk
    assert os.path.getsize(path) > 15e9
    code = ("import json, resource, subprocess, sys; "
            "p = subprocess.run([sys.executable, '-m', 'gemma_inspect', 'summary', sys.argv[1], '--json'], "
            "capture_output=True, text=True); u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(json.dumps({'rc': p.returncode, 'out': p.stdout, 'cpu': u.ru_utime + u.ru_stime, "
            "'rss_mb': u.ru_maxrss / 1024}))")
    r = json.loads(subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                                  timeout=120).stdout)
    assert r["rc"] == 0, r
    m = json.loads(r["out"])
    assert m["parameters"]["total"] == spec.num_parameters
    a = m["architecture"]
    assert (a["num_layers"], a["query_pre_attn_scalar"], a["rope_scaling_factor"], a["sliding_window"]) == \
        (62, 168, 8.0, 1024)
    groups = {g["group"]: g for g in m["quantization"]["groups"]}
    assert m["quantization"]["file_type"] == "MOSTLY_Q4_K_M" and groups["attention"]["bits_per_weight"] == 4.5
    assert r["rss_mb"] < 200 and r["cpu"] < 2.0, r  # CPU time: other processes cannot inflate it

