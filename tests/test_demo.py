"""`gemma-inspect demo`, the README's first command, end to end in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner

from gemma_inspect.cli import main
from gemma_inspect.demo import _steps


def test_demo_runs_every_step_and_passes(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, KERAS_BACKEND="torch", COLUMNS="120")
    proc = subprocess.run([sys.executable, "-m", "gemma_inspect", "demo", str(out)], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = _steps({k: str(out / k) for k in ("gemma3-keras", "gemma2-keras", "gemma2-hf", "gemma-hf",
                                              "gemma-keras", "plot", "gemma3-gguf")})
    for title, args in steps:
        assert title[:60] in proc.stdout, title
        assert f"$ gemma-inspect {args[0]} " in proc.stdout
    # three parity runs (keras vs HF, convert --verify, Q8_0 GGUF) and two verify runs, all passing
    assert proc.stdout.count("PASS: A and B compute the same thing within tolerance") == 3
    assert proc.stdout.count("46 equal: identical") == 1
    assert "FAIL" not in proc.stdout
    for name in ("gemma3-keras", "gemma2-keras", "gemma2-hf", "gemma-hf", "gemma-keras", "tokenizer.model",
                 "parity-gemma2.png", "gemma3-q8_0.gguf"):
        assert (out / name).exists(), name
    with open(out / "parity-gemma2.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # no tracebacks and no tensorflow start-up noise on stderr
    assert "Traceback" not in proc.stderr and "oneDNN" not in proc.stderr


def test_demo_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    r = CliRunner().invoke(main, ["demo", str(tmp_path)])
    assert r.exit_code == 2
    assert r.output.strip() == f"Error: {tmp_path}: exists and is not empty; give the demo an empty or new directory"
    assert os.listdir(tmp_path) == ["mine.txt"]
