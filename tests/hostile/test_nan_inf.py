"""NaN and infinity in tensors are not a corrupt file: summary reads headers and says nothing, convert copies them
bit for bit, and diff - which reads every value - names the tensors that hold them in a warning."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner

from gemma_inspect import scan
from gemma_inspect.cli import main
from gemma_inspect.convert import WriteOptions, convert
from gemma_inspect.formats import load
from gemma_inspect.formats.safetensors_io import read_header

POISONED = {"model.layers.1.mlp.up_proj.weight": (3, 2), "model.norm.weight": (0, 1)}  # (NaNs, infinities)


def poison(src: str, dest: str) -> str:
    """A copy of an HF checkpoint with NaNs and infinities written into two tensors, in their stored dtype."""
    import shutil

    shutil.copytree(src, dest)
    path = os.path.join(dest, "model.safetensors")
    entries, _ = read_header(path)
    with open(path, "r+b") as f:
        for name, (nan, inf) in POISONED.items():
            e = entries[name]
            dt = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[e.dtype]
            values = np.array([np.nan] * nan + [np.inf, -np.inf][:inf] + [np.inf] * max(0, inf - 2), dtype=dt)
            f.seek(e.start + 8 * values.itemsize)  # a few values in, not at the start
            f.write(values.tobytes())
    return dest


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_scan_counts_nan_and_inf_exactly(tiny_models, tmp_path, dtype):
    d = poison(tiny_models.get("gemma2", dtype=dtype, tokenizer=False), str(tmp_path / "p"))
    found = scan.nonfinite(load(d))
    assert [(f["name"], f["nan"], f["inf"]) for f in found] == [
        ("model.layers.1.mlp.up_proj.weight", 3, 2), ("model.norm.weight", 0, 1)]
    assert scan.count_array(np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float16)) == (1, 2)
    assert scan.count_bits(np.array([np.nan, 0, -np.inf], dtype=ml_dtypes.bfloat16).tobytes(), "bfloat16") == (1, 1)


def test_summary_is_silent_diff_warns_convert_copies(tiny_models, tmp_path):
    src = tiny_models.get("gemma2", tokenizer=False)
    d = poison(src, str(tmp_path / "p"))
    r = CliRunner().invoke(main, ["summary", d, "--json"])
    assert r.exit_code == 0 and r.stderr == ""  # headers only: values are not read
    r = CliRunner().invoke(main, ["diff", d, d, "--json"])
    assert r.exit_code == 0  # NaN where the other side has NaN is equal
    warning = (f"Warning: A ({d}): 2 tensors hold NaN or infinite values: model.layers.1.mlp.up_proj.weight "
               f"(3 NaN, 2 inf), model.norm.weight (0 NaN, 1 inf)\n")
    assert r.stderr == warning + warning.replace("Warning: A", "Warning: B")
    result = json.loads(r.stdout)
    row = next(t for t in result["tensors"] if t["name"] == "model.layers.1.mlp.up_proj.weight")
    assert row["nonfinite_a"] == row["nonfinite_b"] == {"nan": 3, "inf": 2}
    r = CliRunner().invoke(main, ["diff", src, d])
    assert r.exit_code == 1 and r.stderr.startswith(f"Warning: B ({d}): 2 tensors hold NaN or infinite values")
    # convert copies them as they are (bit for bit), in every format; only dequantizing tells them apart.
    for to, ext in (("keras", ""), ("gguf", ".gguf"), ("gemma-pytorch", ".ckpt")):
        out = convert(d, str(tmp_path / f"out-{to}{ext}"), to)["dest"]
        got, want = load(out), load(d)
        for name in POISONED:
            a, b = got.tensors[name].load(), want.tensors[name].load()
            assert np.array_equal(a, b, equal_nan=True) or (name == "model.norm.weight" and to == "gguf")
        assert [f["name"] for f in scan.nonfinite(got)] == list(POISONED)


def test_quantized_nan_scale_is_counted_after_dequantizing(tiny_models, tmp_path):
    d = poison(tiny_models.get("gemma2", tokenizer=False), str(tmp_path / "p"))
    out = convert(d, str(tmp_path / "q.gguf"), "gguf", WriteOptions(dtype="q8_0"))["dest"]
    found = {f["name"]: f for f in scan.nonfinite(load(out))}
    assert "model.layers.1.mlp.up_proj.weight" in found  # a NaN in a block makes its scale NaN: the whole block
    assert found["model.layers.1.mlp.up_proj.weight"]["nan"] >= 3


def test_summary_scan_warns_and_verify_fails_on_nonfinite_weights(tiny_models, tmp_path):
    """summary stays header-only unless asked (--scan); verify, which runs the model, always looks."""
    d = poison(tiny_models.get("gemma2", tokenizer=False), str(tmp_path / "p"))
    r = CliRunner().invoke(main, ["summary", d, "--scan", "--json"])
    assert r.exit_code == 0
    assert r.stderr == (f"Warning: {d}: 2 tensors hold NaN or infinite values: model.layers.1.mlp.up_proj.weight "
                        f"(3 NaN, 2 inf), model.norm.weight (0 NaN, 1 inf)\n")
    assert [(f["name"], f["nan"], f["inf"]) for f in json.loads(r.stdout)["nonfinite"]] == [
        ("model.layers.1.mlp.up_proj.weight", 3, 2), ("model.norm.weight", 0, 1)]
    text = CliRunner().invoke(main, ["summary", d, "--scan"]).stdout
    assert ("Values: 2 tensors hold NaN or infinite values: model.layers.1.mlp.up_proj.weight (3 NaN, 2 inf), "
            "model.norm.weight (0 NaN, 1 inf)") in text
    clean = CliRunner().invoke(main, ["summary", tiny_models.get("gemma2", tokenizer=False), "--scan"])
    assert clean.stderr == "" and "Values: all 46 tensors read, no NaN or infinite values" in clean.stdout
    r = CliRunner().invoke(main, ["verify", d, "--runtime", "reference", "--json"])
    assert r.exit_code == 1
    lint = next(c for c in json.loads(r.stdout)["checks"] if c["name"] == "lint:nonfinite")
    assert lint["status"] == "fail"
    assert lint["observed"] == {"model.layers.1.mlp.up_proj.weight": {"nan": 3, "inf": 2},
                                "model.norm.weight": {"nan": 0, "inf": 1}}


def _strict(text: str):
    """Parse as strict JSON (RFC 8259): NaN, Infinity and -Infinity are not JSON and must not appear."""

    def refuse(token: str):
        raise AssertionError(f"{token} in --json output")

    return json.loads(text, parse_constant=refuse)


def test_json_output_stays_strict_json_when_values_are_not_finite(tiny_models, tmp_path):
    """diff, parity and verify on a checkpoint with NaN/inf weights: `--json` is still strict JSON that jq and
    JavaScript parse; the non-finite figures are null and the statuses say what happened."""
    src = tiny_models.get("gemma2", tokenizer=False)
    d = poison(src, str(tmp_path / "p"))
    r = CliRunner().invoke(main, ["diff", src, d, "--json"])
    assert r.exit_code == 1
    row = next(t for t in _strict(r.stdout)["tensors"] if t["name"] == "model.norm.weight")
    assert row["status"] == "different" and row["max_abs_diff"] is None  # |w - inf| is inf
    r = CliRunner().invoke(main, ["parity", src, d, "--runtime-a", "reference", "--runtime-b", "reference", "--json"])
    assert r.exit_code == 1
    result = _strict(r.stdout)
    assert result["passed"] is False and result["first_divergent_layer"] == 1  # the poisoned FFN's block
    assert result["layers"][2]["status"] == "mismatch" and result["layers"][2]["max_abs_diff"] is None
    assert result["logits"]["max_abs_diff"] is None and result["logits"]["kl_divergence"] is None
    r = CliRunner().invoke(main, ["verify", d, "--runtime", "reference", "--json"])
    assert r.exit_code == 1
    _strict(r.stdout)
