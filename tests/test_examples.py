"""The examples run as users run them, and say what they should."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_runs_end_to_end(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "quickstart.py"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == ("Gemma 2: 4 layers, GQA (4 query / 2 K/V heads), norm placement pre+post, soft caps "
                        "50.0/30.0, sliding layers [0, 2]")
    assert lines[1] == "parameters: 148,544 (embedding 24,576, if untied 173,120)"
    assert lines[2] == f"converted 46 tensors, 594,176 bytes -> {tmp_path / 'gemma2-hf'}"
    assert lines[3].startswith("diff: identical=True {'equal': 46, 'close': 0, 'different': 0")
    assert lines[4].startswith("parity (keras vs transformers): passed=True, logits max |A-B| ")
    assert lines[4].endswith("top-1 agreement 100%, first divergent layer None")
