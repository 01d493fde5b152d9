"""`summary` and `compare` through Click's CliRunner against cards and tiny real checkpoints."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from gemma_inspect.cli import main
from gemma_inspect.formats import EXPECTED

# The summary JSON contract of DESIGN.md ...
DESIGN_TOP = {"source", "format", "family", "architecture", "parameters", "dtypes", "size_bytes"}
DESIGN_ARCH = {"num_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
               "intermediate_size", "vocab_size", "attention", "activation", "norm_placement", "norm_offset",
               "embedding_scale", "tied_embeddings", "qk_norm", "final_logit_softcap", "attention_logit_softcap",
               "sliding_window", "layer_types"}
DESIGN_PARAMS = {"total", "total_if_untied", "embedding", "attention", "feedforward", "norms"}
# ... and the keys summary adds to it (additions only; pinned so that a change to the contract is deliberate).
EXTRA_TOP = {"family_title", "card", "kv_cache_bytes_per_token", "tensors_read", "num_tensors", "tokenizer",
             "ignored_tensors", "notes", "lm_head", "lint"}
EXTRA_ARCH = {"ffn", "norm_kind", "embedding_scale_exact", "query_pre_attn_scalar", "query_scale", "rope_theta",
              "rope_local_theta", "rope_scaling_factor", "rope_local_scaling_factor", "rms_norm_eps",
              "max_position_embeddings", "dtype", "attention_mask"}
EXTRA_PARAMS = {"output", "per_layer"}


def run(*args: str):
    result = CliRunner().invoke(main, list(args))
    return result


def run_json(*args: str):
    result = run(*args, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)  # one JSON object and nothing else on stdout


def tiny_params(v, d, layers, h, k, hd, f, post_norms=False, qk_norm=False):
    """Hand count of a tied Gemma decoder, for the tiny checkpoints."""
    attention = layers * (2 * h * hd * d + 2 * k * hd * d)
    ffn = layers * 3 * f * d
    norms = layers * ((4 if post_norms else 2) * d + (2 * hd if qk_norm else 0)) + d
    return v * d, attention, ffn, norms


def assert_contract(obj):
    assert set(obj) == DESIGN_TOP | EXTRA_TOP
    assert set(obj["architecture"]) == DESIGN_ARCH | EXTRA_ARCH
    assert set(obj["parameters"]) == DESIGN_PARAMS | EXTRA_PARAMS


# --------------------------------------------------------------------------- summary --json
def test_summary_json_of_tiny_gemma_hf(tiny_models):
    path = tiny_models.get("gemma", "hf", "bfloat16")
    s = run_json("summary", path)
    assert_contract(s)
    assert (s["source"], s["format"], s["family"]) == (path, "hf", "gemma")
    a = s["architecture"]
    assert a["attention"] == "MQA"
    assert (a["num_attention_heads"], a["num_key_value_heads"], a["head_dim"]) == (4, 1, 32)
    assert (a["num_layers"], a["hidden_size"], a["intermediate_size"], a["vocab_size"]) == (2, 64, 96, 384)
    assert a["activation"] == "gelu_tanh"
    assert a["norm_placement"] == "pre" and a["norm_offset"] == 1
    assert a["embedding_scale"] == 8.0
    assert a["tied_embeddings"] is True and a["qk_norm"] is False
    assert a["final_logit_softcap"] is None and a["attention_logit_softcap"] is None
    assert a["sliding_window"] is None and a["layer_types"] == ["full_attention"] * 2
    emb, att, ffn, norms = tiny_params(384, 64, 2, 4, 1, 32, 96)
    p = s["parameters"]
    assert (p["embedding"], p["attention"], p["feedforward"], p["norms"]) == (emb, att, ffn, norms)
    assert p["total"] == emb + att + ffn + norms == 102_720
    assert p["total_if_untied"] == 102_720 + 384 * 64
    assert s["dtypes"] == {"bfloat16": 20}
    assert s["size_bytes"] == 2 * 102_720


def test_summary_json_of_tiny_gemma2_keras(tiny_models):
    path = tiny_models.get("gemma2", "keras", "float32")
    s = run_json("summary", path)
    assert_contract(s)
    assert (s["format"], s["family"]) == ("keras", "gemma2")
    a = s["architecture"]
    assert a["attention"] == "GQA" and a["num_key_value_heads"] == 2
    assert a["norm_placement"] == "pre+post" and a["norm_offset"] == 1
    assert (a["attention_logit_softcap"], a["final_logit_softcap"]) == (50.0, 30.0)
    assert a["sliding_window"] == 6
    assert a["layer_types"] == ["sliding_attention", "full_attention"] * 2
    emb, att, ffn, norms = tiny_params(384, 64, 4, 4, 2, 16, 96, post_norms=True)
    assert s["parameters"]["total"] == emb + att + ffn + norms == 148_544
    assert s["dtypes"] == {"float32": 46}
    assert s["size_bytes"] == 4 * 148_544
    assert s["notes"] == ["max_position_embeddings is not stored in a Keras config; assuming 8192"]


def test_summary_json_of_tiny_gemma3_sharded_hf(tiny_models):
    s = run_json("summary", tiny_models.get("gemma3", "hf", shard=True))
    a = s["architecture"]
    assert a["qk_norm"] is True and a["attention"] == "GQA"
    assert a["layer_types"].count("full_attention") == 1 and a["layer_types"][5] == "full_attention"
    assert (a["rope_local_theta"], a["rope_theta"], a["rope_scaling_factor"]) == (10_000.0, 1_000_000.0, 8.0)
    emb, att, ffn, norms = tiny_params(384, 64, 7, 4, 2, 16, 96, post_norms=True, qk_norm=True)
    assert s["parameters"]["total"] == emb + att + ffn + norms


def test_summary_json_of_cards():
    s = run_json("summary", "gemma-7b")
    assert_contract(s)
    assert (s["format"], s["card"]) == ("card", "gemma-7b")
    assert s["parameters"]["total"] == 8_537_680_896
    assert s["parameters"]["total_if_untied"] == 9_324_112_896
    assert s["architecture"]["attention"] == "MHA"
    assert s["architecture"]["embedding_scale"] == 55.5
    assert s["size_bytes"] == 2 * 8_537_680_896
    s = run_json("summary", "olmo-7b")
    assert s["architecture"]["norm_offset"] == 0 and s["architecture"]["embedding_scale"] == 1.0
    assert s["architecture"]["tied_embeddings"] is False


# --------------------------------------------------------------------------- summary, rich
def test_summary_rich_output_of_tiny_gemma(tiny_models):
    result = run("summary", tiny_models.get("gemma", "hf", "bfloat16"))
    assert result.exit_code == 0 and result.stderr == ""
    out = result.stdout
    assert "MQA: 4 query heads, 1 K/V head" in out
    assert "102.7K (102,720) tied" in out
    assert "127.3K (127,296)" in out
    assert "x sqrt(64) = 8.0000" in out
    assert "pre-norm only" in out and "RMSNorm, applies (1 + w)" in out
    assert "GeGLU, width 96 per branch" in out
    assert "GELU, tanh approximation" in out
    assert "256 B (bfloat16)" in out  # KV cache: 2 x 2 layers x 1 head x 32 x 2 bytes
    assert "bfloat16 x20" in out
    for row in ("│ embedding                       │  24,576 │  23.9% │",
                "│ attention                       │  40,960 │  39.9% │",
                "│ feedforward                     │  36,864 │  35.9% │",
                "│ norms                           │     320 │   0.3% │",
                "│ total (tied counted once)       │ 102,720 │   100% │",
                "│ total if the output were untied │ 127,296 │ +23.9% │"):
        assert row in out


def test_summary_rich_output_of_tiny_gemma2_and_gemma3(tiny_models):
    out = run("summary", tiny_models.get("gemma2", "keras")).stdout
    assert "GQA: 4 query heads, 2 K/V heads" in out
    assert "pre + post (sandwich)" in out
    assert "attention 50, final 30" in out
    assert "6 tokens on 2/4 layers; global: 1, 3" in out
    assert "note: max_position_embeddings is not stored in a Keras config; assuming 8192" in out
    out = run("summary", tiny_models.get("gemma3", "hf")).stdout
    assert "QK-norm             yes" in out
    assert "6 tokens on 6/7 layers; global: 5" in out
    assert "base 10000 local, 1e+06 global, linear x8 on global layers" in out


def test_summary_rich_output_of_a_card_shows_bf16_rounding():
    out = run("summary", "gemma-7b").stdout
    assert "x sqrt(3072) = 55.4256 -> 55.5 in bfloat16" in out
    assert "8.54B (8,537,680,896) tied" in out
    assert "9.32B (9,324,112,896)" in out
    assert "MHA: 16 query heads, 16 K/V heads" in out
    out = run("summary", "gemma-2b").stdout
    assert "x sqrt(2048) = 45.2548 -> 45.25 in bfloat16" in out
    assert "MQA: 8 query heads, 1 K/V head" in out
    out = run("summary", "gemma2-27b").stdout
    assert "1/sqrt(144) (not head_dim 128; d/H = 144)" in out


# --------------------------------------------------------------------------- compare
def test_compare_gemma_llama_olmo():
    result = run("compare", "gemma-7b", "llama2-7b", "olmo-7b")
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    row = next(line for line in lines if line.startswith("│ Parameters "))
    assert [c.strip() for c in row.split("│")[2:5]] == ["8.5B", "6.7B", "6.9B"]
    row = next(line for line in lines if line.startswith("│   if output untied"))
    assert [c.strip() for c in row.split("│")[2:5]] == ["9.3B", "6.7B", "6.9B"]
    header = next(line for line in lines if "gemma-7b" in line)
    assert "llama2-7b" in header and "olmo-7b" in header


def test_compare_highlights_rows_that_differ():
    from rich.console import Console

    from gemma_inspect.formats import load
    from gemma_inspect.render import render_compare
    from gemma_inspect.summary import compare

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system="standard", width=300, highlight=False)
    render_compare(console, compare([load(n) for n in ("gemma-7b", "llama2-7b", "olmo-7b")]))
    plain = re.compile(r"\x1b\[[0-9;]*m")
    rows = {plain.sub("", line.split("│")[1]).strip(): line
            for line in buf.getvalue().splitlines() if line.count("│") == 5}
    assert len(rows) == 25
    highlight = "\x1b[1;33m"
    for label in ("Parameters", "Layers", "Activation", "Norm", "Tied embeddings", "Embedding scale",
                  "Context length"):
        assert highlight in rows[label], label
    for label in ("QK-norm", "Soft caps", "Norm placement", "RoPE", "Sliding window", "Attention mask"):
        assert highlight not in rows[label], label


def test_compare_json():
    result = run_json("compare", "gemma-7b", "llama2-7b", "olmo-7b")
    assert list(result) == ["models"]
    assert [m["card"] for m in result["models"]] == ["gemma-7b", "llama2-7b", "olmo-7b"]
    for m in result["models"]:
        assert_contract(m)
    assert [m["parameters"]["total"] for m in result["models"]] == [8_537_680_896, 6_738_415_616, 6_888_095_744]
    assert [m["architecture"]["norm_offset"] for m in result["models"]] == [1, 0, 0]


def test_compare_card_with_a_checkpoint(tiny_models):
    path = tiny_models.get("gemma", "keras", "bfloat16")
    result = run_json("compare", "gemma-2b", path)
    a, b = result["models"]
    assert (a["format"], a["card"]) == ("card", "gemma-2b")
    assert (b["format"], b["source"], b["card"]) == ("keras", path, None)
    assert a["architecture"]["attention"] == b["architecture"]["attention"] == "MQA"
    assert b["parameters"]["total"] == 102_720
    out = run("compare", "gemma-2b", tiny_models.get("gemma", "hf")).stdout
    assert "gemma-2b" in out and "2.5B" in out and "102.7K" in out  # small models are not rounded to 0.0B


def test_compare_needs_two_sources():
    result = run("compare", "gemma-7b")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == "Error: compare needs at least two sources"


def test_compare_with_a_bad_source_fails_with_one_line(tmp_path):
    result = run("compare", "gemma-7b", str(tmp_path / "nope"))
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"Error: {tmp_path / 'nope'}: no such file or directory; expected {EXPECTED}\n"


# --------------------------------------------------------------------------- entry points
def test_python_dash_m_help():
    proc = subprocess.run([sys.executable, "-m", "gemma_inspect", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: gemma-inspect [OPTIONS] COMMAND [ARGS]...")
    assert "summary" in proc.stdout and "compare" in proc.stdout
    assert proc.stderr == ""


def test_version():
    from gemma_inspect import __version__

    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout == f"gemma-inspect, version {__version__}\n"


def test_paths_that_look_like_markup_are_printed_as_they_are(tiny_models, tmp_path):
    """Rich markup in a path (or a note quoting one) is text: `[red]` is kept, `[/b]` does not crash."""
    import shutil

    src = tiny_models.get("gemma", "hf")
    (tmp_path / "run[").mkdir()
    odd = tmp_path / "run[" / "b]"
    red = tmp_path / "ckpt[red]"
    shutil.copytree(src, odd)
    shutil.copytree(src, red)
    wide = {"COLUMNS": "400"}  # long temporary paths must not wrap
    result = CliRunner().invoke(main, ["summary", str(odd)], env=wide)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{odd}  (hf)"
    out = CliRunner().invoke(main, ["summary", str(red)], env=wide).stdout
    assert out.splitlines()[0] == f"{red}  (hf)"
    assert f"{red}/tokenizer.model" in out
    result = CliRunner().invoke(main, ["compare", str(red), str(odd)], env=wide)
    assert result.exit_code == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "ckpt[red]" in line)
    # columns are headed by the last path component, printed as it is; the full paths follow the table
    assert [c.strip() for c in header.split("┃")[2:4]] == ["ckpt[red]", "b]"]
    assert f"ckpt[red]: {red}" in result.stdout and f"b]: {odd}" in result.stdout
