"""Startup and `summary`/`compare` never import the heavy libraries (torch, keras, tensorflow, transformers, ml_dtypes):
each command runs in a fresh interpreter that then reports which of them it loaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# ml_dtypes: 1.2 s of CPU to import in its 0.7.0 release
HEAVY = ("torch", "keras", "tensorflow", "transformers", "keras_hub", "keras_nlp", "jax", "ml_dtypes")

PROBE = r"""
import contextlib, io, json, runpy, sys
args, heavy_names = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
sys.argv = ["gemma-inspect"] + args
out = io.StringIO()
code = 0
try:
    with contextlib.redirect_stdout(out):
        runpy.run_module("gemma_inspect", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code or 0
heavy = sorted({m.split(".")[0] for m in sys.modules} & heavy_names)
print(json.dumps({"code": code, "heavy": heavy, "stdout": out.getvalue()}))
"""


def imported(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(args)), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["code"] == 0, (result, proc.stderr)
    return result


def test_help_is_light():
    r = imported("--help")
    assert r["heavy"] == []
    assert "Usage: gemma-inspect" in r["stdout"]


@pytest.mark.parametrize("family,fmt", [("gemma", "hf"), ("gemma3", "hf"), ("gemma2", "keras"),
                                        ("gemma3", "keras")])
def test_summary_of_a_checkpoint_is_light(tiny_models, family, fmt):
    path = tiny_models.get(family, fmt, "bfloat16")
    r = imported("summary", path)
    assert r["heavy"] == []
    assert "Parameters" in r["stdout"]
    r = imported("summary", path, "--json")
    assert r["heavy"] == []
    assert json.loads(r["stdout"])["format"] == fmt


def test_sharded_summaries_and_compare_are_light(tiny_models):
    hf = tiny_models.get("gemma2", "hf", shard=True)
    keras = tiny_models.get("gemma3", "keras", shard=True)
    r = imported("compare", "gemma-7b", hf, keras, "--json")
    assert r["heavy"] == []
    assert [m["format"] for m in json.loads(r["stdout"])["models"]] == ["card", "hf", "keras"]


def test_library_import_is_light():
    proc = subprocess.run([sys.executable, "-c", "import sys, gemma_inspect; "
                           "print(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1].split(','))))",
                           ",".join(HEAVY)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_probe_does_see_heavy_imports():
    """Guard against a probe that can never fail: a module registered as torch before the command runs
    is reported."""
    proc = subprocess.run([sys.executable, "-c", "import sys, types; sys.modules['torch.fake'] = "
                           "types.ModuleType('torch.fake')\n" + PROBE, json.dumps(["--help"]), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stdout.splitlines()[-1])["heavy"] == ["torch"]
