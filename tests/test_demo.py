"""`gemma-inspect demo`, the README's first command, end to end in a fresh interpreter."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from click.testing import CliRunner

from gemma_inspect.cli import main
from gemma_inspect.demo import _steps

CHECKPOINTS = ("gemma3-keras", "gemma2-keras", "gemma2-hf", "gemma-hf", "gemma-keras", "gemma4-hf", "gemma4-keras")


def demo_paths(out) -> dict[str, str]:
    """What demo.build names each output in DIR."""
    return {**{k: str(out / k) for k in CHECKPOINTS}, "plot": str(out / "parity-gemma2.png"),
            "gemma3-gguf": str(out / "gemma3-q8_0.gguf")}
def step_outputs(stdout: str) -> list[tuple[list[str], str]]:
    """(arguments, printed output) of each step the demo ran, read from its `$ gemma-inspect ...` lines."""
    parts = re.split(r"^\$ gemma-inspect (.*)\n", stdout, flags=re.M)
    return [(shlex.split(parts[i]), parts[i + 1]) for i in range(1, len(parts), 2)]


def verify_table(text: str) -> dict[str, tuple[str, str, str]]:
    """check -> (status, expected, observed) from verify's wide table, wrapped cells joined."""
    rows: list[list[str]] = []
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┃ check "))
    for line in lines[start + 1:]:
        if line.startswith("└"):  # the table's end
            break
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if cells[0]:
            rows.append(cells)
        else:
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_demo_runs_every_step_and_passes(tmp_path):
    """The demo, run once (about 100 s): every step ran and passed; what its verify steps observed is checked
    by check_verify_steps (one run for both: pytest-xdist's loadgroup does not group tests under pytest 9)."""
    out = tmp_path / "demo"
    env = dict(os.environ, KERAS_BACKEND="torch", COLUMNS="120")
    proc = subprocess.run([sys.executable, "-m", "gemma_inspect", "demo", str(out)], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = _steps(demo_paths(out))
    for title, args in steps:
        assert title[:60] in proc.stdout, title
        assert f"$ gemma-inspect {args[0]} " in proc.stdout
    assert [args for args, _ in step_outputs(proc.stdout)] == [args for _, args in steps]
    # four parity runs (keras vs HF, two convert --verify, Q8_0 GGUF) and three verify runs, all passing
    assert proc.stdout.count("PASS: A and B compute the same thing within tolerance") == 4
    assert proc.stdout.count("46 equal: identical") == 1
    assert "FAIL" not in proc.stdout
    for name in ("gemma3-keras", "gemma2-keras", "gemma2-hf", "gemma-hf", "gemma-keras", "gemma4-hf", "gemma4-keras",
                 "tokenizer.model", "parity-gemma2.png", "gemma3-q8_0.gguf"):
        assert (out / name).exists(), name
    with open(out / "parity-gemma2.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # no tracebacks and no tensorflow start-up noise on stderr
    assert "Traceback" not in proc.stderr and "oneDNN" not in proc.stderr
    check_verify_steps(out, proc.stdout)


def check_verify_steps(out, stdout: str) -> None:
    """The demo's three verify steps ran, on the native runtime of each checkpoint, and what each observed
    (formerly test_verify.py's test_demo_runs_verify_steps, which only read the planned steps)."""
    d = demo_paths(out)
    ran = [(args, text) for args, text in step_outputs(stdout) if args[0] == "verify"]
    assert [args for args, _ in ran] == [args for _, args in _steps(d) if args[0] == "verify"] == [
        ["verify", d["gemma3-keras"]], ["verify", d["gemma-hf"], "--graph"], ["verify", d["gemma4-hf"]]]
    (_, gemma3), (_, gemma1), (_, gemma4) = ran
    assert gemma3.splitlines()[0] == f"{d['gemma3-keras']}  (keras)"
    assert gemma1.splitlines()[0] == f"{d['gemma-hf']}  (transformers)"
    # the architecture as observed (status, observed), then the config lint's statuses
    g3, g1 = verify_table(gemma3), verify_table(gemma1)
    assert {k: (v[0], v[2]) for k, v in g3.items() if not k.startswith("lint:")} == {
        "norm_placement": ("pass", "pre+post"), "norm_offset": ("pass", "1"), "embedding_scale": ("pass", "8"),
        "tied_embeddings": ("pass", "yes"), "activation": ("pass", "gelu_tanh"), "attention_kind": ("pass", "GQA"),
        "logit_softcap": ("pass", "none"), "attention_softcap": ("pass", "none"), "qk_norm": ("pass", "yes"),
        "sliding_window": ("pass", "6 on layers 0, 1, 2, 3, 4, 6; global: 5"), "query_scale": ("pass", "0.25"),
        "attention_mask": ("pass", "causal"), "embedding_head": ("skip", "none")}
    assert {k: v[0] for k, v in g3.items() if k.startswith("lint:")} == {
        "lint:tied_lm_head": "pass", "lint:norm_weights": "pass", "lint:query_pre_attn_scalar": "pass",
        "lint:rope_scaling": "pass", "lint:vocab_size": "pass", "lint:special_ids": "skip", "lint:float16": "pass",
        "lint:nonfinite": "pass"}
    assert {k: (v[0], v[2]) for k, v in g1.items() if not k.startswith("lint:")} == {
        "norm_placement": ("pass", "pre"), "norm_offset": ("pass", "1"), "embedding_scale": ("pass", "8"),
        "tied_embeddings": ("pass", "yes"), "activation": ("pass", "gelu_tanh"), "attention_kind": ("pass", "MQA"),
        "logit_softcap": ("pass", "none"), "attention_softcap": ("pass", "none"), "qk_norm": ("pass", "no"),
        "sliding_window": ("pass", "none (every layer global)"), "query_scale": ("pass", "0.176777"),
        "attention_mask": ("pass", "causal"), "embedding_head": ("skip", "none")}
    assert {k: v[0] for k, v in g1.items() if k.startswith("lint:")} == {
        "lint:exact_gelu": "pass", "lint:activation_key": "pass", "lint:tied_lm_head": "pass",
        "lint:norm_weights": "pass", "lint:vocab_size": "pass", "lint:special_ids": "pass",
        "lint:end_of_turn": "warn", "lint:nonfinite": "pass"}
    assert [line for line in gemma3.splitlines() if line.startswith(("PASS", "FAIL"))] == ["PASS: 19 pass, 2 skip"]
    assert [line for line in gemma1.splitlines() if line.startswith(("PASS", "FAIL"))] == ["PASS: 19 pass, 1 warn, 1 skip"]
    # Gemma 4 on transformers: what only Gemma 4 has, observed (values from the tiny row: tiny.TINY_SPECS["gemma4"])
    g4 = verify_table(gemma4)
    assert gemma4.splitlines()[0] == f"{d['gemma4-hf']}  (transformers)"
    assert {k: (v[0], v[2]) for k, v in g4.items() if k in (
        "norm_offset", "logit_softcap", "query_scale", "per_layer_inputs", "kv_sharing", "k_eq_v", "rope_fraction",
        "moe_routing", "sliding_window")} == {
        "norm_offset": ("pass", "0"), "logit_softcap": ("pass", "30"), "query_scale": ("pass", "1"),
        "per_layer_inputs": ("pass", "8"), "kv_sharing": ("pass", "4 2, 5 3"), "k_eq_v": ("skip", "none"),
        "rope_fraction": ("pass", "full 0.25, sliding 1"), "moe_routing": ("skip", "none"),
        "sliding_window": ("pass", "6 on layers 0, 1, 2, 4; global: 3, 5")}
    assert g4["layer_scalar"][0] == "pass" and g4["lint:layer_scalar"][0] == "pass"
    assert g4["lint:global_geometry"][0] == "warn"  # transformers' save_pretrained writes per_layer_config only
    assert [line for line in gemma4.splitlines() if line.startswith(("PASS", "FAIL"))] == ["PASS: 26 pass, 2 warn, 3 skip"]
    # --graph: Gemma 1's block 0 as transformers runs it, pre-norm only
    graph = gemma1[gemma1.index("model.layers.0 (GemmaDecoderLayer)"):].splitlines()
    assert graph[0] == "model.layers.0 (GemmaDecoderLayer)  input x [1, 32, 64]"
    assert [line for line in graph if line.startswith(("├── ", "└── "))] == [
        "├── input_layernorm  GemmaRMSNorm  <- x [1, 32, 64]",
        "├── self_attn  GemmaAttention  <- input_layernorm [1, 32, 64]",
        "├── + residual  x + self_attn  -> residual 1 [1, 32, 64]",
        "├── post_attention_layernorm  GemmaRMSNorm  <- residual 1 [1, 32, 64]",
        "├── mlp  GemmaMLP  <- post_attention_layernorm [1, 32, 64]",
        "├── + residual  residual 1 + mlp  -> residual 2 [1, 32, 64]",
        "└── output: residual 2"]


def test_demo_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    r = CliRunner().invoke(main, ["demo", str(tmp_path)])
    assert r.exit_code == 2
    assert r.output.strip() == f"Error: {tmp_path}: exists and is not empty; give the demo an empty or new directory"
    assert os.listdir(tmp_path) == ["mine.txt"]
