"""gemma_pytorch `.ckpt`: round trips, the fused qkv split, inferring the spec, and pickles that must never run."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gemma_inspect.cli import main
from gemma_inspect.convert import WriteOptions, convert
from gemma_inspect.errors import InputError, UnsupportedError
from gemma_inspect.formats import gemma_pytorch as GP
from gemma_inspect.formats import load
from gemma_inspect.tokenizer import PARITY_TEXTS

FAMILIES = ("gemma", "gemma-mha", "gemma2", "gemma3")
TOKENS = np.array([[2, 17, 45, 301, 8, 99, 120, 7, 250, 33, 64, 5, 4, 200, 150, 11, 90, 310, 42, 77]])


def gemma_pytorch_names(family: str, layers: int) -> set[str]:
    """The parameter names of gemma_pytorch's GemmaForCausalLM (gemma/model.py), written out independently:
    Gemma 1 layers have input_layernorm + post_attention_layernorm (its pre-FFN norm); Gemma 2/3 add
    pre/post_feedforward_layernorm; Gemma 3 adds self_attn.query_norm/key_norm."""
    names = {"embedder.weight", "model.norm.weight"}
    per_layer = ["input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.qkv_proj.weight",
                 "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]
    if family in ("gemma2", "gemma3"):
        per_layer += ["pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"]
    if family == "gemma3":
        per_layer += ["self_attn.query_norm.weight", "self_attn.key_norm.weight"]
    return names | {f"model.layers.{i}.{n}" for i in range(layers) for n in per_layer}


def google_state(src_dir: str) -> dict[str, torch.Tensor]:
    """A state dict laid out the way Google's own .ckpt files are (no gemma_inspect key), built from an HF
    checkpoint by an independent, hand-written mapping; the rotary table buffer included."""
    src = load(src_dir)
    spec = src.spec

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(src.tensors[name].load()).copy())

    sd = {"embedder.weight": t("model.embed_tokens.weight"), "model.norm.weight": t("model.norm.weight"),
          "freqs_cis": torch.polar(torch.ones(16, 4), torch.zeros(16, 4))}
    for i in range(spec.num_layers):
        p, g = f"model.layers.{i}.", f"model.layers.{i}."
        sd[g + "self_attn.qkv_proj.weight"] = torch.cat([t(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
        sd[g + "self_attn.o_proj.weight"] = t(p + "self_attn.o_proj.weight")
        for x in ("gate", "up", "down"):
            sd[g + f"mlp.{x}_proj.weight"] = t(p + f"mlp.{x}_proj.weight")
        sd[g + "input_layernorm.weight"] = t(p + "input_layernorm.weight")
        if spec.family == "gemma":
            sd[g + "post_attention_layernorm.weight"] = t(p + "pre_feedforward_layernorm.weight")
        else:
            for x in ("post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
                sd[g + f"{x}.weight"] = t(p + f"{x}.weight")
        if spec.family == "gemma3":
            sd[g + "self_attn.query_norm.weight"] = t(p + "self_attn.q_norm.weight")
            sd[g + "self_attn.key_norm.weight"] = t(p + "self_attn.k_norm.weight")
    return sd


@pytest.fixture(scope="module")
def ckpt_of(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    built: dict[tuple, str] = {}

    def get(family: str, dtype: str = "float32") -> str:
        if (family, dtype) not in built:
            dest = str(root / f"{family}-{dtype}.ckpt")
            convert(tiny_models.get(family, dtype=dtype), dest, "gemma-pytorch")
            built[(family, dtype)] = dest
        return built[(family, dtype)]

    return get


def hf_logits(path: str) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.from_numpy(TOKENS)).logits.numpy()


# ----------------------------------------------------------------------------- writing
@pytest.mark.parametrize("family", FAMILIES)
def test_written_ckpt_is_what_gemma_pytorch_loads(tiny_models, ckpt_of, family):
    src = load(tiny_models.get(family))
    spec = src.spec
    # gemma_pytorch's load_weights: torch.load(path, mmap=True, weights_only=True)['model_state_dict']
    obj = torch.load(ckpt_of(family), mmap=True, weights_only=True)
    sd = obj["model_state_dict"]
    assert set(sd) == gemma_pytorch_names(spec.family, spec.num_layers)
    h, k, d = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    for i in range(spec.num_layers):
        qkv = sd[f"model.layers.{i}.self_attn.qkv_proj.weight"]
        assert tuple(qkv.shape) == ((h + 2 * k) * d, spec.hidden_size)
        parts = [src.tensors[f"model.layers.{i}.self_attn.{x}_proj.weight"].load() for x in "qkv"]
        assert np.array_equal(qkv.numpy(), np.concatenate(parts))
    assert np.array_equal(sd["embedder.weight"].numpy(), src.tensors["model.embed_tokens.weight"].load())
    pre_ffn = "post_attention_layernorm" if spec.family == "gemma" else "pre_feedforward_layernorm"
    assert np.array_equal(sd[f"model.layers.1.{pre_ffn}.weight"].numpy(),
                          src.tensors["model.layers.1.pre_feedforward_layernorm.weight"].load())
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in sd.values())
    assert obj["gemma_inspect"]["config"]["num_key_value_heads"] == k
    assert obj["gemma_inspect"]["tokenizer.model"] == open(tiny_models.spm, "rb").read()
    # The classic (non-mmap) load reads the same bytes (CRCs and alignment as torch.save writes them).
    classic = torch.load(ckpt_of(family), weights_only=True)["model_state_dict"]
    assert all(torch.equal(classic[n], sd[n]) for n in sd)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ("float32", "bfloat16"))
def test_hf_ckpt_hf_is_bit_identical(tiny_models, ckpt_of, tmp_path, family, dtype):
    src = load(tiny_models.get(family, dtype=dtype))
    mid = load(ckpt_of(family, dtype))
    assert mid.format == "gemma-pytorch" and mid.spec == src.spec and mid.assumed == frozenset()
    convert(ckpt_of(family, dtype), str(tmp_path / "hf"), "hf")
    back = load(str(tmp_path / "hf"))
    assert back.spec == src.spec
    for name, ref in src.tensors.items():
        for other in (mid.tensors[name], back.tensors[name]):
            assert other.dtype == ref.dtype == dtype
            assert other.load().tobytes() == ref.load().tobytes(), name
    for text in PARITY_TEXTS:
        assert mid.tokenizer.encode(text) == src.tokenizer.encode(text)


def test_converted_ckpt_computes_the_source_logits(tiny_models, ckpt_of, tmp_path):
    convert(ckpt_of("gemma2"), str(tmp_path / "hf"), "hf")
    assert np.array_equal(hf_logits(str(tmp_path / "hf")), hf_logits(tiny_models.get("gemma2")))


def test_writer_streams_one_tensor_at_a_time(tiny_models, tmp_path):
    calls = []
    convert(tiny_models.get("gemma3"), str(tmp_path / "s.ckpt"), "gemma-pytorch", progress=calls.append)
    sd = torch.load(str(tmp_path / "s.ckpt"), weights_only=True)["model_state_dict"]
    assert sorted(calls) == sorted(v.numel() * v.element_size() for v in sd.values())
    assert len(calls) == len(sd) == 2 + 7 * 11


def test_what_gemma_pytorch_cannot_hold_is_refused(tiny_models, tmp_path):
    with pytest.raises(UnsupportedError, match="q8_0 is a GGUF quantization"):
        convert(tiny_models.get("gemma"), str(tmp_path / "a.ckpt"), "gemma-pytorch", WriteOptions(dtype="q8_0"))
    ckpt = load(tiny_models.get("gemma"))
    ckpt.spec = ckpt.spec.replace(tied_embeddings=False)
    with pytest.raises(UnsupportedError, match="always uses the embedding as the output projection"):
        convert(ckpt, str(tmp_path / "b.ckpt"), "gemma-pytorch")
    assert not os.path.exists(tmp_path / "a.ckpt") and not os.path.exists(tmp_path / "b.ckpt")


# ----------------------------------------------------------------------------- Google's own layout
@pytest.mark.parametrize("family, config", [
    ("gemma", {"head_dim": 32}),  # MQA: q 4 x 32 rows, k and v 1 x 32 each - equal thirds would be wrong
    ("gemma-mha", {"head_dim": 16}),
    ("gemma2", {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 6}),
    ("gemma3", {"sliding_window": 6, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
                "max_position_embeddings": 131072}),
])
def test_google_style_ckpt_takes_what_shapes_cannot_tell_from_a_config(tiny_models, tmp_path, family, config):
    src = load(tiny_models.get(family))
    path = str(tmp_path / "model.ckpt")
    torch.save({"model_state_dict": google_state(tiny_models.get(family))}, path)
    with open(tmp_path / "gemma_inspect.json", "w") as f:
        json.dump(config, f)
    got = load(path)
    assert got.spec == src.spec
    for name, ref in src.tensors.items():
        assert np.array_equal(got.tensors[name].load(), ref.load()), name
    spec = src.spec
    q, kv = spec.num_attention_heads * spec.head_dim, spec.num_key_value_heads * spec.head_dim
    assert got.tensors["model.layers.0.self_attn.q_proj.weight"].shape == (q, 64)
    assert got.tensors["model.layers.0.self_attn.k_proj.weight"].shape == (kv, 64)
    assert "freqs_cis" in got.ignored
    assert "rotary tables dropped (freqs_cis): they are recomputed from the spec" in got.notes


@pytest.mark.parametrize("family", ("gemma", "gemma2"))
def test_head_dim_shapes_cannot_tell_needs_a_config(tiny_models, tmp_path, family):
    path = str(tmp_path / "model.ckpt")
    torch.save({"model_state_dict": google_state(tiny_models.get(family))}, path)
    with pytest.raises(InputError, match="head_dim 256 does not divide the query width") as e:
        load(path)
    assert e.value.path == path
    result = CliRunner().invoke(main, ["summary", path])
    assert result.exit_code == 2 and result.output.startswith(f"Error: {path}: head_dim 256")


def test_gemma3_shapes_tell_head_dim_and_the_rest_is_assumed_and_said(tiny_models, tmp_path):
    path = str(tmp_path / "model.ckpt")
    torch.save({"model_state_dict": google_state(tiny_models.get("gemma3"))}, path)
    got = load(path)
    assert (got.spec.head_dim, got.spec.num_attention_heads, got.spec.num_key_value_heads) == (16, 4, 2)
    assert got.spec.family == "gemma3" and got.spec.qk_norm and got.spec.norm_placement == "pre+post"
    note = next(n for n in got.notes if n.startswith("gemma_pytorch checkpoints store no configuration"))
    assert "sliding_window=1024" in note and "query_pre_attn_scalar=16" in note and "assumed from gemma3 defaults" in note
    assert "gemma_inspect.json" in note
    assert {"sliding_window", "query_pre_attn_scalar", "rope_theta", "rope_scaling_factor",
            "max_position_embeddings"} <= got.assumed
    # An HF-style config.json next to the checkpoint works as well, opened by the file or by its directory.
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"model_type": "gemma3_text", "sliding_window": 6}, f)
    assert load(path).spec.sliding_window == 6
    assert (load(str(tmp_path)).format, load(str(tmp_path)).spec.sliding_window) == ("gemma-pytorch", 6)
    with open(tmp_path / "config.json", "w") as f:  # gemma_pytorch's own keys, no model_type
        json.dump({"sliding_window": 5}, f)
    assert (load(str(tmp_path)).format, load(str(tmp_path)).spec.sliding_window) == ("gemma-pytorch", 5)


def test_side_files_of_a_ckpt_opened_as_a_file_stay_inside_its_directory(tiny_models, tmp_path):
    """The .ckpt is given as a file: its side config and tokenizer are checked where they are opened."""
    d = tmp_path / "c"
    d.mkdir()
    path = str(d / "model.ckpt")
    torch.save({"model_state_dict": google_state(tiny_models.get("gemma3"))}, path)
    (tmp_path / "elsewhere.json").write_text(json.dumps({"sliding_window": 6}))
    os.symlink(tmp_path / "elsewhere.json", d / "config.json")
    with pytest.raises(InputError) as e:
        load(path)
    assert str(e.value) == f"{d}/config.json: is a symlink to {tmp_path}/elsewhere.json, outside the checkpoint directory"
    os.remove(d / "config.json")
    os.symlink(tiny_models.spm, d / "tokenizer.model")
    with pytest.raises(InputError, match=r"tokenizer.model: is a symlink to .*, outside the checkpoint directory"):
        load(path)


def test_published_shapes_take_the_published_values():
    notes: list[str] = []
    shapes = {"embed": (256000, 4608), "model.layers.45.input_layernorm.weight": (4608,),
              "model.layers.0.self_attn.o_proj.weight": (4608, 32 * 128),
              "model.layers.0.self_attn.qkv_proj.weight": ((32 + 2 * 16) * 128, 4608),
              "model.layers.0.mlp.gate_proj.weight": (36864, 4608)}
    spec, assumed = GP._spec("gemma2", shapes, "bfloat16", "/nowhere/gemma2-27b.ckpt", None, notes)
    assert (spec.head_dim, spec.num_attention_heads, spec.num_key_value_heads) == (128, 32, 16)
    assert (spec.query_pre_attn_scalar, spec.sliding_window) == (144, 4096)
    assert (spec.attention_logit_softcap, spec.final_logit_softcap) == (50.0, 30.0)
    assert "assumed from the published gemma2-27b" in notes[0]
    assert {"head_dim", "query_pre_attn_scalar", "sliding_window"} <= assumed
    assert GP._matching_card("gemma3", 1152, 26, 6912, 4 * 256, 256) == "gemma3-1b"
    assert GP._matching_card("gemma", 2048, 18, 16384, 8 * 256, 256) == "gemma-2b"


def test_multimodal_gemma3_names_and_buffers(tiny_models, tmp_path):
    sd = google_state(tiny_models.get("gemma3"))
    sd["text_token_embedder.weight"] = sd.pop("embedder.weight")
    sd.pop("freqs_cis")
    sd["local_freqs_cis"] = torch.zeros(4, 2, dtype=torch.complex64)
    sd["global_freqs_cis"] = torch.zeros(4, 2, dtype=torch.complex64)
    sd["siglip_vision_model.encoder.weight"] = torch.zeros(3, 3)
    sd["mm_input_projection.weight"] = torch.zeros(64, 3)
    sd["mm_soft_embedding_norm.weight"] = torch.zeros(3)
    path = str(tmp_path / "mm.ckpt")
    torch.save({"model_state_dict": sd}, path)
    got = load(path)
    src = load(tiny_models.get("gemma3"))
    assert np.array_equal(got.tensors["model.embed_tokens.weight"].load(), src.tensors["model.embed_tokens.weight"].load())
    assert "multimodal Gemma 3: 3 vision tensors reported and ignored; only the text decoder is read" in got.notes
    assert {"local_freqs_cis", "global_freqs_cis", "mm_input_projection.weight"} <= set(got.ignored)


def test_sharded_form(tiny_models, tmp_path):
    sd = google_state(tiny_models.get("gemma3"))
    names = sorted(sd)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    for fname, keys in shards.items():
        torch.save({k: sd[k] for k in keys}, str(tmp_path / fname))
    with open(tmp_path / "pytorch_model.bin.index.json", "w") as f:
        json.dump({"weight_map": {k: fname for fname, keys in shards.items() for k in keys}}, f)
    got = load(str(tmp_path))
    assert got.format == "gemma-pytorch" and len(got.files) == 2
    src = load(tiny_models.get("gemma3"))
    for name, ref in src.tensors.items():
        assert np.array_equal(got.tensors[name].load(), ref.load()), name


def test_int8_checkpoints_are_dequantized_with_their_scalers(tiny_models, tmp_path):
    sd = google_state(tiny_models.get("gemma"))
    expected = {}
    for name in [n for n in sd if n.endswith(("_proj.weight", "embedder.weight"))]:
        w = sd[name]
        scale = w.abs().amax(dim=1) / 127
        q = torch.round(w / scale.unsqueeze(-1)).to(torch.int8)
        sd[name], sd[name.removesuffix(".weight") + ".weight_scaler"] = q, scale
        expected[name] = (q.float() * scale.unsqueeze(-1)).numpy()
    path = str(tmp_path / "int8.ckpt")
    torch.save({"model_state_dict": sd}, path)
    with open(tmp_path / "gemma_inspect.json", "w") as f:
        json.dump({"head_dim": 32}, f)
    got = load(path)
    assert "int8 weights (gemma_pytorch quant=True) are dequantized with their weight_scaler to float32" in got.notes
    assert got.tensors["model.layers.0.self_attn.k_proj.weight"].dtype == "int8"
    assert np.array_equal(got.tensors["model.embed_tokens.weight"].load(), expected["embedder.weight"])
    qkv = expected["model.layers.1.self_attn.qkv_proj.weight"]
    assert np.array_equal(got.tensors["model.layers.1.self_attn.v_proj.weight"].load(), qkv[160:192])
    convert(path, str(tmp_path / "hf"), "hf")
    back = load(str(tmp_path / "hf"))
    assert back.tensors["model.layers.1.self_attn.v_proj.weight"].dtype == "float32"
    assert np.array_equal(back.tensors["model.layers.1.self_attn.q_proj.weight"].load(), qkv[:128])


# ----------------------------------------------------------------------------- every pair of formats
@pytest.mark.parametrize("src_fmt, via", [("hf", "gemma-pytorch"), ("keras", "gemma-pytorch"),
                                          ("gguf", "gemma-pytorch"), ("gemma-pytorch", "gguf"),
                                          ("gemma-pytorch", "keras"), ("gemma-pytorch", "gemma-pytorch")])
def test_conversions_to_and_from_gemma_pytorch(tiny_models, tmp_path, src_fmt, via):
    ext = {"hf": "", "keras": "", "gguf": ".gguf", "gemma-pytorch": ".ckpt"}
    base = tiny_models.get("gemma2", "keras" if src_fmt == "keras" else "hf")
    src = base
    if src_fmt in ("gguf", "gemma-pytorch"):
        src = str(tmp_path / f"src{ext[src_fmt]}")
        convert(base, src, src_fmt)
    dest = str(tmp_path / f"out{ext[via]}")
    convert(src, dest, via)
    a, b = load(base), load(dest)
    assert b.spec == a.spec
    gguf_hop = "gguf" in (src_fmt, via)
    for name, ref in a.tensors.items():
        x, y = ref.load(), b.tensors[name].load()
        if gguf_hop and name.endswith("norm.weight"):  # 1 + w in float32 and back
            np.testing.assert_allclose(y, x, rtol=0, atol=2.4e-7)
        else:
            assert np.array_equal(x, y), name
    for text in PARITY_TEXTS:
        assert b.tokenizer.encode(text) == a.tokenizer.encode(text)


def test_summary_of_a_ckpt(ckpt_of):
    result = CliRunner().invoke(main, ["summary", ckpt_of("gemma3"), "--json"])
    assert result.exit_code == 0, result.output
    m = json.loads(result.output)
    assert (m["format"], m["family"], m["architecture"]["num_key_value_heads"]) == ("gemma-pytorch", "gemma3", 2)
    assert m["tokenizer"] == {"backend": "sentencepiece", "files": []}


# ----------------------------------------------------------------------------- pickles that are not tensors
class Payload:
    """Unpickling this creates a marker file: the proof that code inside a pickle ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("how", ("torch.save", "plain pickle", "inside the state dict"))
def test_malicious_pickle_is_refused_and_its_payload_never_runs(tmp_path, how):
    marker = tmp_path / "PAYLOAD_RAN"
    path = str(tmp_path / "evil.ckpt")
    if how == "torch.save":
        torch.save({"model_state_dict": {"embedder.weight": torch.zeros(2, 2)}, "x": Payload(str(marker))}, path)
    elif how == "plain pickle":
        with open(path, "wb") as f:
            pickle.dump({"model_state_dict": Payload(str(marker))}, f, protocol=2)
    else:
        torch.save({"model_state_dict": {"embedder.weight": Payload(str(marker))}}, path)
    with pytest.raises(InputError, match=r"refused: the pickle is not plain tensors \(.+\); it was opened with "
                                         r"weights_only=True, so nothing in it ran") as e:
        load(path)
    assert e.value.path == path
    result = CliRunner().invoke(main, ["summary", path])
    assert result.exit_code == 2 and result.output.startswith(f"Error: {path}: refused:")
    assert result.output.count("\n") == 1
    result = CliRunner().invoke(main, ["convert", path, str(tmp_path / "out"), "--to", "hf"])
    assert result.exit_code == 2 and not os.path.exists(tmp_path / "out")
    assert not marker.exists()
    # The payload is real: unpickled without weights_only (in another process), it does create the marker.
    code = f"import torch; torch.load({path!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True)
    assert marker.exists()


def test_pickles_of_plain_data_that_is_not_a_state_dict(tmp_path):
    cases = [
        ({"weights": {"embedder.weight": torch.zeros(2)}}, "expected a dict with 'model_state_dict', got dict "
                                                           "with keys ['weights']"),
        ({"model_state_dict": {"embedder.weight": [1, 2]}}, "state dict entry 'embedder.weight' is a list, not a tensor"),
        ({"model_state_dict": [torch.zeros(1)]}, "'model_state_dict' must be a dict of tensors, got list"),
        ({"model_state_dict": {"embedder.weight": torch.zeros(4, 2, dtype=torch.int64)}},
         "tensor 'embedder.weight' has dtype int64"),
    ]
    for i, (obj, message) in enumerate(cases):
        path = str(tmp_path / f"c{i}.ckpt")
        torch.save(obj, path)
        if "int64" in message:  # needs the rest of a model to get that far
            sd = obj["model_state_dict"]
            sd.update({"model.layers.0.self_attn.qkv_proj.weight": torch.zeros(12, 2),
                       "model.layers.0.self_attn.o_proj.weight": torch.zeros(2, 4),
                       "model.layers.0.mlp.gate_proj.weight": torch.zeros(3, 2)})
            torch.save(obj, path)
        with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
            load(path)
        assert e.value.path == path


def test_corrupt_and_ambiguous_inputs(ckpt_of, tmp_path):
    data = open(ckpt_of("gemma"), "rb").read()
    cut = str(tmp_path / "cut.ckpt")
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint") as e:
        load(cut)
    assert e.value.path == cut
    noise = str(tmp_path / "noise.ckpt")
    with open(noise, "wb") as f:
        f.write(os.urandom(4096))
    with pytest.raises(InputError) as e:
        load(noise)
    assert e.value.path == noise
    two = tmp_path / "two"
    two.mkdir()
    for n in ("a.ckpt", "b.ckpt"):
        (two / n).write_bytes(data)
    with pytest.raises(InputError, match="expected one .ckpt file or pytorch_model.bin.index.json in this "
                                         "directory, found 2 .ckpt files"):
        load(str(two))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"a": "../outside.bin"}}))
    with pytest.raises(InputError, match="leaves the checkpoint directory"):
        load(str(sharded))


def test_legacy_non_zip_pickle_is_read_without_mmap(ckpt_of, tiny_models, tmp_path):
    path = str(tmp_path / "legacy.ckpt")
    torch.save(torch.load(ckpt_of("gemma2"), weights_only=True), path, _use_new_zipfile_serialization=False)
    got, src = load(path), load(tiny_models.get("gemma2"))
    assert got.spec == src.spec
    assert all(np.array_equal(got.tensors[n].load(), r.load()) for n, r in src.tensors.items())
