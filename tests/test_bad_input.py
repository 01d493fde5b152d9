"""Unusable input: every case gives exit 2, nothing on stdout, and exactly one `Error: ...` line on stderr
that names the file and the problem (no traceback). Hostile files are built byte by byte or by damaging
copies of tiny real checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
from click.testing import CliRunner

from files import edit_json
from gemma_inspect.cli import main
from gemma_inspect.formats import EXPECTED


def fail(*args: str) -> str:
    """Run `summary`/`compare` on bad input; return the message after `Error: `."""
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(main, [*args, *extra])
        assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
        assert result.stdout == ""
        err = result.stderr
        assert err.endswith("\n") and err.count("\n") == 1, err
        assert err.startswith("Error: "), err
        assert "Traceback" not in err
    return err[len("Error: "):-1]


def summary_fails(path: str) -> str:
    msg = fail("summary", path)
    assert fail("compare", "gemma-2b", path) == msg
    return msg


def write_safetensors(path: str, header: bytes | dict, data: bytes = b"", hlen: int | None = None) -> str:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw) if hlen is None else hlen))
        f.write(raw)
        f.write(data)
    return path


@pytest.fixture
def hf_dir(tiny_models, copy_dir):
    """A writable copy of a tiny single-file HF checkpoint (Gemma 2, no tokenizer)."""
    return copy_dir(tiny_models.get("gemma2", "hf", tokenizer=False), "hf")


@pytest.fixture
def keras_dir(tiny_models, copy_dir):
    return copy_dir(tiny_models.get("gemma2", "keras", tokenizer=False), "keras")


@pytest.fixture
def hf_sharded(tiny_models, copy_dir):
    return copy_dir(tiny_models.get("gemma2", "hf", tokenizer=False, shard=True), "hf-sharded")


@pytest.fixture
def keras_sharded(tiny_models, copy_dir):
    return copy_dir(tiny_models.get("gemma2", "keras", tokenizer=False, shard=True), "keras-sharded")


# --------------------------------------------------------------------------- paths and directories
def test_missing_path(tmp_path):
    p = str(tmp_path / "no-such-checkpoint")
    assert summary_fails(p) == f"{p}: no such file or directory; expected {EXPECTED}"
    assert "a built-in card (gemma-2b, gemma-7b, gemma2-2b" in EXPECTED


def test_misspelt_card_lists_the_cards():
    from gemma_inspect.spec import CARD_NAMES

    msg = fail("summary", "gemma-7")
    assert msg == (f"gemma-7: no such file or directory, and not a built-in card; did you mean 'gemma-7b'? "
                   f"cards: {', '.join(CARD_NAMES)}")
    assert msg.endswith("mistral-7b")


def test_empty_directory(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    assert summary_fails(str(d)) == f"{d}: empty directory; expected {EXPECTED}"


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert summary_fails(str(tmp_path)) == f"{tmp_path}: no config.json in this directory; expected {EXPECTED}"


def test_unrecognised_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    assert summary_fails(str(p)) == f"{p}: unrecognised file; expected {EXPECTED}"


def test_bare_safetensors_file(hf_dir):
    p = os.path.join(hf_dir, "model.safetensors")
    assert summary_fails(p) == (f"{p}: a bare .safetensors file has no config: pass the directory that holds "
                                f"it with its config.json")


def test_hf_directory_without_weights(hf_dir):
    os.remove(os.path.join(hf_dir, "model.safetensors"))
    assert summary_fails(hf_dir) == (f"{hf_dir}: no model.safetensors or model.safetensors.index.json in this "
                                     f"Hugging Face directory")


def test_keras_directory_without_weights(keras_dir):
    os.remove(os.path.join(keras_dir, "model.weights.h5"))
    assert summary_fails(keras_dir) == f"{keras_dir}: no model.weights.h5 or model.weights.json in this Keras preset"


# --------------------------------------------------------------------------- config.json
@pytest.mark.parametrize("which", ["hf", "keras"])
def test_config_that_is_not_json(hf_dir, keras_dir, which):
    d = hf_dir if which == "hf" else keras_dir
    cfg = os.path.join(d, "config.json")
    with open(cfg, "w") as f:
        f.write('{"model_type": "gemma2",\n  oops}')
    assert summary_fails(d) == (f"{cfg}: not valid JSON: Expecting property name enclosed in double quotes "
                                f"at line 2 column 3")


def test_config_that_is_not_utf8(hf_dir):
    cfg = os.path.join(hf_dir, "config.json")
    with open(cfg, "wb") as f:
        f.write(b"\xff\xfe{}")
    assert summary_fails(hf_dir) == f"{cfg}: config.json is not UTF-8 text"


def test_config_that_is_not_an_object(hf_dir):
    cfg = os.path.join(hf_dir, "config.json")
    with open(cfg, "w") as f:
        f.write("[1, 2]")
    assert summary_fails(hf_dir) == f"{cfg}: config.json must be a JSON object, got list"


def test_config_of_no_known_kind(hf_dir):
    cfg = os.path.join(hf_dir, "config.json")
    with open(cfg, "w") as f:
        f.write('{"hidden_size": 64}')
    assert summary_fails(hf_dir) == (f"{cfg}: has neither 'model_type' (Hugging Face) nor 'class_name'/'config' "
                                     f"(KerasHub preset)")


def test_unsupported_model_type(hf_dir):
    cfg = os.path.join(hf_dir, "config.json")
    edit_json(cfg, lambda c: c.update(model_type="llama"))
    assert summary_fails(hf_dir) == (f"{cfg}: unsupported model_type 'llama'; supported: gemma, gemma2, "
                                     f"gemma3_text, gemma3, vaultgemma, gemma4_text, gemma4, gemma3n_text, gemma3n")


def test_unsupported_multimodal_text_config(hf_dir):
    cfg = os.path.join(hf_dir, "config.json")
    edit_json(cfg, lambda c: c.update(model_type="gemma3", text_config={"model_type": "gemma2"}))
    assert summary_fails(hf_dir) == f"{cfg}: unsupported text_config model_type 'gemma2'"


@pytest.mark.parametrize("key,value,problem", [
    ("hidden_size", "64", "config 'hidden_size' must be an integer, got '64'"),
    ("num_hidden_layers", 0, "config 'num_hidden_layers' must be positive, got 0"),
    ("vocab_size", True, "config 'vocab_size' must be an integer, got True"),
    ("rms_norm_eps", "small", "config 'rms_norm_eps' must be a number, got 'small'"),
    ("dtype", "int8", "config dtype 'int8' is not float32, bfloat16 or float16"),
    ("layer_types", ["full_attention"], "config layer_types must list 4 entries of 'sliding_attention'/"
                                        "'full_attention', got ['full_attention']"),
    ("sliding_window", None, "config declares sliding-window layers but sliding_window is null"),
])
def test_bad_hf_config_values(hf_dir, key, value, problem):
    cfg = os.path.join(hf_dir, "config.json")
    edit_json(cfg, lambda c: c.update({key: value}))
    assert summary_fails(hf_dir) == f"{cfg}: {problem}"


def test_unsupported_rope_type(hf_dir):
    cfg = os.path.join(hf_dir, "config.json")
    edit_json(cfg, lambda c: c.update(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}))
    assert summary_fails(hf_dir) == (f"{cfg}: RoPE type 'yarn' in rope_parameters is not supported "
                                     f"(default or linear)")


# --------------------------------------------------------------------------- safetensors headers
def test_safetensors_header_longer_than_its_file(hf_dir):
    st = write_safetensors(os.path.join(hf_dir, "model.safetensors"), b"{}", hlen=1000)
    assert summary_fails(hf_dir) == (f"{st}: safetensors header length 1000 is longer than the file (10 bytes): "
                                     f"truncated or not a safetensors file")


def test_safetensors_absurd_header_length(hf_dir):
    st = write_safetensors(os.path.join(hf_dir, "model.safetensors"), b"{}", hlen=2**63 + 5)
    assert summary_fails(hf_dir) == (f"{st}: safetensors header length {2**63 + 5} exceeds the 100 MB limit")


def test_safetensors_file_too_short_for_a_header(hf_dir):
    st = os.path.join(hf_dir, "model.safetensors")
    with open(st, "wb") as f:
        f.write(b"\x01\x02")
    assert summary_fails(hf_dir) == f"{st}: not a safetensors file: 2 bytes, too short for a header"


def test_safetensors_header_not_json(hf_dir):
    st = write_safetensors(os.path.join(hf_dir, "model.safetensors"), b"hello, world")
    assert summary_fails(hf_dir) == (f"{st}: safetensors header is not valid JSON (JSONDecodeError: Expecting "
                                     f"value: line 1 column 1 (char 0))")


def test_safetensors_header_not_utf8(hf_dir):
    st = write_safetensors(os.path.join(hf_dir, "model.safetensors"), b'{"\xff": 1}')
    assert summary_fails(hf_dir) == (f"{st}: safetensors header is not valid JSON (UnicodeDecodeError: 'utf-8' "
                                     f"codec can't decode byte 0xff in position 2: invalid start byte)")


def test_safetensors_header_not_an_object(hf_dir):
    st = write_safetensors(os.path.join(hf_dir, "model.safetensors"), b"[]")
    assert summary_fails(hf_dir) == f"{st}: safetensors header is not a JSON object"


def test_safetensors_offsets_beyond_the_data(hf_dir):
    st = write_safetensors(os.path.join(hf_dir, "model.safetensors"),
                           {"model.norm.weight": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}},
                           data=b"\0" * 100)
    assert summary_fails(hf_dir) == (f"{st}: tensor 'model.norm.weight': data_offsets [0, 256] point beyond the "
                                     f"data (100 bytes): truncated file")


def test_truncated_real_safetensors(hf_dir):
    from gemma_inspect.formats.safetensors_io import read_header

    st = os.path.join(hf_dir, "model.safetensors")
    entries, _ = read_header(st)
    last = max(entries.values(), key=lambda e: e.start)
    with open(st, "r+b") as f:
        data_start = 8 + struct.unpack("<Q", f.read(8))[0]
        f.truncate(last.start + last.nbytes - 1)
    lo, hi = last.start - data_start, last.start - data_start + last.nbytes  # offsets within the data section
    assert summary_fails(hf_dir) == (f"{st}: tensor '{last.name}': data_offsets [{lo}, {hi}] point beyond the data "
                                     f"({hi - 1} bytes): truncated file")


@pytest.mark.parametrize("entry,problem", [
    ({"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}, "unknown dtype 'F8_E4M3'"),
    ({"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}, "invalid shape [-4]"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}, "data_offsets [16, 0] are not increasing"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}, "12 bytes for shape [4] of float32 (expected 16)"),
    ({"dtype": "F32", "shape": [4], "data_offsets": "0-16"}, "invalid data_offsets '0-16'"),
    ([1, 2], "header entry is not an object"),
])
def test_safetensors_bad_entries(hf_dir, entry, problem):
    st = write_safetensors(os.path.join(hf_dir, "model.safetensors"), {"x": entry}, data=b"\0" * 64)
    assert summary_fails(hf_dir) == f"{st}: tensor 'x': {problem}"


def test_safetensors_overlapping_tensors(hf_dir):
    st = write_safetensors(os.path.join(hf_dir, "model.safetensors"), {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, data=b"\0" * 24)
    assert summary_fails(hf_dir) == f"{st}: tensors 'a' and 'b' overlap in the data section"


def test_safetensors_is_a_directory(hf_dir):
    st = os.path.join(hf_dir, "model.safetensors")
    os.remove(st)
    os.mkdir(st)
    assert summary_fails(hf_dir) == f"{st}: is a directory, not a regular file"


# --------------------------------------------------------------------------- indexes
def test_hf_index_naming_a_missing_shard(hf_sharded):
    index = os.path.join(hf_sharded, "model.safetensors.index.json")
    os.remove(os.path.join(hf_sharded, "model-00003-of-00006.safetensors"))
    assert summary_fails(hf_sharded) == (f"{index}: names shard 'model-00003-of-00006.safetensors', which does "
                                         f"not exist")


def test_keras_index_naming_a_missing_shard(keras_sharded):
    index = os.path.join(keras_sharded, "model.weights.json")
    os.remove(os.path.join(keras_sharded, "model_00001.weights.h5"))
    assert summary_fails(keras_sharded) == f"{index}: names shard 'model_00001.weights.h5', which does not exist"


def test_hf_index_without_weight_map(hf_sharded):
    index = os.path.join(hf_sharded, "model.safetensors.index.json")
    edit_json(index, lambda c: c.update(weight_map=["model-00001-of-00006.safetensors"]))
    assert summary_fails(hf_sharded) == f"{index}: has no weight_map (a name -> shard file object)"


def test_hf_index_with_a_non_string_file_name(hf_sharded):
    index = os.path.join(hf_sharded, "model.safetensors.index.json")
    edit_json(index, lambda c: c["weight_map"].update({"model.norm.weight": 3}))
    assert summary_fails(hf_sharded) == f"{index}: invalid file name 3"


def test_hf_index_that_maps_a_tensor_to_the_wrong_shard(hf_sharded):
    index = os.path.join(hf_sharded, "model.safetensors.index.json")
    with open(index) as f:
        really = json.load(f)["weight_map"]["model.norm.weight"]
    assert really != "model-00001-of-00006.safetensors"
    edit_json(index, lambda c: c["weight_map"].update({"model.norm.weight": "model-00001-of-00006.safetensors"}))
    assert summary_fails(hf_sharded) == (f"{index}: maps 'model.norm.weight' to model-00001-of-00006.safetensors but "
                                         f"it is in {os.path.join(hf_sharded, really)}")


def _point_index_at(index: str, fmt: str, target: str) -> None:
    first = "model.embed_tokens.weight" if fmt == "hf" else "/layers/reversible_embedding/vars"
    edit_json(index, lambda c: c["weight_map"].update({first: target}))


@pytest.mark.parametrize("fmt", ["hf", "keras"])
def test_index_with_an_absolute_path(hf_sharded, keras_sharded, fmt):
    d = hf_sharded if fmt == "hf" else keras_sharded
    index = os.path.join(d, "model.safetensors.index.json" if fmt == "hf" else "model.weights.json")
    _point_index_at(index, fmt, "/etc/passwd")
    assert summary_fails(d) == (f"{index}: refers to '/etc/passwd', an absolute path outside the checkpoint "
                                f"directory")


@pytest.mark.parametrize("fmt", ["hf", "keras"])
def test_index_climbing_out_with_dotdot(hf_sharded, keras_sharded, fmt):
    d = hf_sharded if fmt == "hf" else keras_sharded
    index = os.path.join(d, "model.safetensors.index.json" if fmt == "hf" else "model.weights.json")
    shard = "model-00001-of-00006.safetensors" if fmt == "hf" else "model_00000.weights.h5"
    # The target exists, one level up: only the name is wrong.
    shutil.copyfile(os.path.join(d, shard), os.path.join(os.path.dirname(d), shard))
    _point_index_at(index, fmt, f"../{shard}")
    assert summary_fails(d) == f"{index}: refers to '../{shard}', which leaves the checkpoint directory"
    _point_index_at(index, fmt, f"sub/../../{shard}")
    assert summary_fails(d) == f"{index}: refers to 'sub/../../{shard}', which leaves the checkpoint directory"


@pytest.mark.parametrize("fmt", ["hf", "keras"])
def test_index_naming_a_symlink_that_leaves_the_directory(hf_sharded, keras_sharded, tmp_path, fmt):
    d = hf_sharded if fmt == "hf" else keras_sharded
    index = os.path.join(d, "model.safetensors.index.json" if fmt == "hf" else "model.weights.json")
    shard = "model-00001-of-00006.safetensors" if fmt == "hf" else "model_00000.weights.h5"
    outside = tmp_path / "elsewhere" / shard
    outside.parent.mkdir()
    shutil.move(os.path.join(d, shard), outside)
    os.symlink(outside, os.path.join(d, shard))
    assert summary_fails(d) == (f"{index}: refers to '{shard}', which resolves outside the checkpoint "
                                f"directory (symlink to {outside})")


def test_symlink_inside_the_directory_is_fine(hf_sharded, tiny_models):
    """A shard that is a symlink to a file inside the directory is read as if it were there: the same summary,
    and the same tensor bytes as the untouched checkpoint."""
    before = CliRunner().invoke(main, ["summary", hf_sharded, "--json"])
    assert before.exit_code == 0, before.stderr
    shard = "model-00001-of-00006.safetensors"
    os.mkdir(os.path.join(hf_sharded, "blobs"))
    shutil.move(os.path.join(hf_sharded, shard), os.path.join(hf_sharded, "blobs", "abc"))
    os.symlink(os.path.join("blobs", "abc"), os.path.join(hf_sharded, shard))
    result = CliRunner().invoke(main, ["summary", hf_sharded, "--json"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == before.stdout
    s = json.loads(result.stdout)
    assert (s["format"], s["family"], s["num_tensors"], s["parameters"]["total"], s["size_bytes"]) == (
        "hf", "gemma2", 46, 148_544, 594_176)
    original = tiny_models.get("gemma2", "hf", tokenizer=False, shard=True)
    result = CliRunner().invoke(main, ["diff", hf_sharded, original, "--json"])  # the linked shard's bytes
    assert result.exit_code == 0, result.stderr
    d = json.loads(result.stdout)
    assert d["identical"] is True
    assert d["counts"] == {"equal": 46, "close": 0, "different": 0, "missing_a": 0, "missing_b": 0,
                           "shape_mismatch": 0}


def test_hugging_face_hub_cache_layout_is_read(tiny_models, tmp_path):
    """`huggingface_hub.snapshot_download` returns models--org--name/snapshots/<rev>, whose files are
    symlinks to ../../blobs/<hash>: those links stay inside the cached repository and must be followed."""
    src = tiny_models.get("gemma2", "hf", tokenizer=False, shard=True)
    repo = tmp_path / "hub" / "models--google--gemma-tiny"
    snap = repo / "snapshots" / "0123abcd"
    blobs = repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for i, name in enumerate(sorted(os.listdir(src))):
        shutil.copyfile(os.path.join(src, name), blobs / f"blob{i}")
        os.symlink(f"../../blobs/blob{i}", snap / name)
    result = CliRunner().invoke(main, ["summary", str(snap), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["parameters"]["total"] == 148_544
    # ... but a link from a snapshot to anywhere else in the cache is still refused.
    other = tmp_path / "hub" / "models--evil--repo" / "blobs"
    other.mkdir(parents=True)
    link = snap / "model-00001-of-00006.safetensors"
    shutil.copyfile(link, other / "x")
    os.remove(link)
    os.symlink(other / "x", link)
    index = snap / "model.safetensors.index.json"
    assert summary_fails(str(snap)) == (f"{index}: refers to 'model-00001-of-00006.safetensors', which resolves "
                                        f"outside the checkpoint directory (symlink to {other / 'x'})")


# --------------------------------------------------------------------------- H5 files
def test_corrupt_h5(keras_dir):
    h5 = os.path.join(keras_dir, "model.weights.h5")
    with open(h5, "wb") as f:
        f.write(os.urandom(4096))
    assert summary_fails(keras_dir) == (f"{h5}: not a readable HDF5 weights file (Unable to synchronously open "
                                        f"file (file signature not found))")


def test_truncated_h5(keras_dir):
    h5 = os.path.join(keras_dir, "model.weights.h5")
    size = os.path.getsize(h5)
    with open(h5, "r+b") as f:
        f.truncate(size // 2)
    msg = summary_fails(keras_dir)
    assert msg.startswith(f"{h5}: not a readable HDF5 weights file (Unable to synchronously open file "
                          f"(truncated file: eof = {size // 2}, ")
    assert msg.endswith(f", stored_eof = {size}))")


def test_h5_with_only_its_data_cut_off(keras_dir):
    """Cutting 4 bytes out of the final norm's data is caught too."""
    import h5py

    h5 = os.path.join(keras_dir, "model.weights.h5")
    with h5py.File(h5, "r") as f:
        ds = f["layers/rms_normalization/vars/0"]
        end = ds.id.get_offset() + ds.id.get_storage_size()
    size = os.path.getsize(h5)
    with open(h5, "r+b") as f:
        f.truncate(end - 4)
    assert summary_fails(keras_dir) == (f"{h5}: not a readable HDF5 weights file (Unable to synchronously open "
                                        f"file (truncated file: eof = {end - 4}, sblock->base_addr = 0, "
                                        f"stored_eof = {size}))")


def test_h5_without_layers(keras_dir):
    import h5py

    h5 = os.path.join(keras_dir, "model.weights.h5")
    with h5py.File(h5, "w") as f:
        f.create_dataset("weights/0", data=[1.0, 2.0])
    assert summary_fails(keras_dir) == f"{h5}: no 'layers' group: not a Keras weights file"


def test_h5_with_a_foreign_dataset(keras_dir):
    import h5py

    h5 = os.path.join(keras_dir, "model.weights.h5")
    with h5py.File(h5, "a") as f:
        f.create_dataset("layers/lm_head_extra/vars/0", data=[1.0, 2.0])
    assert summary_fails(keras_dir) == (f"{h5}: datasets that are no Gemma backbone weight: "
                                        f"layers/lm_head_extra/vars/0")


def test_h5_opaque_dataset_without_bfloat16_tag(tiny_models, copy_dir):
    import h5py

    d = copy_dir(tiny_models.get("gemma2", "keras", "bfloat16", tokenizer=False))
    h5 = os.path.join(d, "model.weights.h5")
    with h5py.File(h5, "a") as f:
        del f["layers/rms_normalization/vars/0"].attrs["dtype"]
    assert summary_fails(d) == (f"{h5}: dataset /layers/rms_normalization/vars/0 is opaque 2-byte data without "
                                f"attrs['dtype']='bfloat16'")


# --------------------------------------------------------------------------- Keras config
def test_unknown_keras_class(keras_dir):
    cfg = os.path.join(keras_dir, "config.json")
    edit_json(cfg, lambda c: c.update(class_name="LlamaBackbone", registered_name="keras_hub>LlamaBackbone",
                                      module="keras_hub.src.models.llama.llama_backbone"))
    assert summary_fails(keras_dir) == (f"{cfg}: unsupported Keras class 'LlamaBackbone'; supported: "
                                        f"keras_hub>GemmaBackbone, keras_hub>Gemma3Backbone, "
                                        f"keras_hub>Gemma4Backbone, keras_hub>Gemma3nBackbone, "
                                        f"keras_nlp>GemmaBackbone, keras_nlp>Gemma3Backbone, "
                                        f"keras_nlp>Gemma4Backbone, keras_nlp>Gemma3nBackbone")


def test_keras_class_from_another_registry(keras_dir):
    cfg = os.path.join(keras_dir, "config.json")
    edit_json(cfg, lambda c: c.update(registered_name="my_package>GemmaBackbone"))
    assert summary_fails(keras_dir) == (f"{cfg}: registered_name 'my_package>GemmaBackbone' is not a keras_hub "
                                        f"or keras_nlp class")


def test_keras_config_missing_a_size(keras_dir):
    cfg = os.path.join(keras_dir, "config.json")
    edit_json(cfg, lambda c: c["config"].pop("num_layers"))
    assert summary_fails(keras_dir) == f"{cfg}: config has no 'num_layers'"


def test_keras_config_with_a_bad_dtype_policy(keras_dir):
    cfg = os.path.join(keras_dir, "config.json")
    edit_json(cfg, lambda c: c["config"].update(dtype="int8"))
    assert summary_fails(keras_dir) == f"{cfg}: config dtype 'int8' is not float32, bfloat16 or float16"


def test_keras_config_with_a_bad_epsilon(keras_dir):
    cfg = os.path.join(keras_dir, "config.json")
    edit_json(cfg, lambda c: c["config"].update(layer_norm_epsilon="tiny"))
    assert summary_fails(keras_dir) == f"{cfg}: config 'layer_norm_epsilon' must be a number, got 'tiny'"


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "summary", str(tmp_path / "missing")])
    assert result.exit_code != 0
    assert result.exception is not None
    assert type(result.exception).__name__ == "InputError"


# --------------------------------------------------------------------------- configs found by fuzzing
@pytest.mark.parametrize("which,key", [("hf", "num_hidden_layers"), ("keras", "num_layers")])
def test_absurd_layer_count_is_refused_before_building_per_layer_tables(hf_dir, keras_dir, which, key):
    d = hf_dir if which == "hf" else keras_dir
    cfg = os.path.join(d, "config.json")
    edit_json(cfg, lambda c: (c if which == "hf" else c["config"]).update({key: 10**9}))
    assert summary_fails(d) == f"{cfg}: config '{key}' is 1000000000, more than the 1000 this tool accepts"


def test_integral_float_sizes_are_still_checked_for_sign(hf_dir):
    cfg = os.path.join(hf_dir, "config.json")
    edit_json(cfg, lambda c: c.update(num_key_value_heads=-2.0))
    assert summary_fails(hf_dir) == f"{cfg}: config 'num_key_value_heads' must be positive, got -2"


def test_activation_that_is_not_a_string(hf_dir):
    cfg = os.path.join(hf_dir, "config.json")
    edit_json(cfg, lambda c: c.update(hidden_activation=[]))
    assert summary_fails(hf_dir) == (f"{cfg}: activation hidden_activation=[] is not supported "
                                     f"(expected gelu_pytorch_tanh)")


@pytest.mark.parametrize("key", ["attention_logit_soft_cap", "final_logit_soft_cap"])
def test_keras_soft_cap_that_is_not_a_number(keras_dir, key):
    cfg = os.path.join(keras_dir, "config.json")
    edit_json(cfg, lambda c: c["config"].update({key: "x"}))
    assert summary_fails(keras_dir) == f"{cfg}: config '{key}' must be a number, got 'x'"


def test_keras_rope_scaling_that_is_not_a_number(tiny_models, copy_dir):
    d = copy_dir(tiny_models.get("gemma3", "keras", tokenizer=False))
    cfg = os.path.join(d, "config.json")
    edit_json(cfg, lambda c: c["config"].update(global_rope_scaling_factor=[8]))
    assert summary_fails(d) == f"{cfg}: config 'global_rope_scaling_factor' must be a number, got [8]"


def test_null_epsilon_is_named(hf_dir):
    cfg = os.path.join(hf_dir, "config.json")
    edit_json(cfg, lambda c: c.update(rms_norm_eps=None))
    assert summary_fails(hf_dir) == f"{cfg}: inconsistent config: rms_norm_eps must be positive, got None"


@pytest.mark.parametrize("kind", ["virtual", "external"])
def test_h5_dataset_whose_data_lives_in_another_file(keras_dir, tmp_path, kind):
    """A virtual dataset or external storage would read bytes from anywhere on disk."""
    import h5py
    import numpy as np

    h5 = os.path.join(keras_dir, "model.weights.h5")
    name = "layers/rms_normalization/vars/0"
    with h5py.File(h5, "a") as f:
        del f[name]
        if kind == "virtual":
            with h5py.File(tmp_path / "elsewhere.h5", "w") as other:
                other["data"] = np.full(64, 7.0, "f4")
            layout = h5py.VirtualLayout(shape=(64,), dtype="f4")
            layout[:] = h5py.VirtualSource(str(tmp_path / "elsewhere.h5"), "data", shape=(64,))
            f.create_virtual_dataset(name, layout)
        else:
            np.arange(64, dtype="f4").tofile(tmp_path / "elsewhere.raw")
            f.create_dataset(name, shape=(64,), dtype="f4", external=[(str(tmp_path / "elsewhere.raw"), 0, 256)])
    what = "a virtual dataset" if kind == "virtual" else "external storage"
    assert summary_fails(keras_dir) == (f"{h5}: dataset {name} keeps its data in another file ({what}); "
                                        f"a checkpoint must hold its own weights")
