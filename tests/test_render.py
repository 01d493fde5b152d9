"""Output read at 80 columns (a pipe, a CI log, `demo`'s transcript): `verify`, `compare` and `summary` never
split a word or a number across lines, no line ends in spaces, and the units read one way."""

from __future__ import annotations

import io
import json
import re

import pytest
from click.testing import CliRunner
from rich.console import Console

from gemma_inspect import load
from gemma_inspect.cli import main
from gemma_inspect.render import _pct, dtype_name, render_compare, render_summary, render_verify
from gemma_inspect.spec import format_bytes, suggest_card
from gemma_inspect.summary import compare, summarize

WIDTH = 80


def _render(fn, obj, width: int = WIDTH) -> str:
    buf = io.StringIO()
    # as the CLI's console (cli._console): rich wraps tables and grids to the width, plain lines are left whole
    fn(Console(file=buf, width=width, force_terminal=False, color_system=None, highlight=False, soft_wrap=True), obj)
    return buf.getvalue()


def _words(text: str) -> set[str]:
    return {w for w in re.split(r"\s+", text) if w}


def assert_no_split(out: str, texts: list[str], width: int = WIDTH) -> None:
    """Every word of `texts` (the values that were rendered) appears whole on one line of `out`, every line
    that rich lays out (tables, per-check blocks) fits in `width` (a plain sentence is one line, left for the
    terminal to wrap), and no line ends in a space."""
    lines = out.splitlines()
    assert lines, "nothing rendered"
    for line in lines:
        if any(ch in line for ch in "│┃┏┗┡└┌") or line.startswith(" "):
            assert len(line) <= width, line
        assert line == line.rstrip(), f"trailing spaces: {line!r}"
    body = "\n".join(lines)
    for word in sorted(_words(" ".join(texts))):
        if len(word) <= width - 12:  # a word wider than any column could be may fold; none here is
            assert word in body, f"{word!r} is split (or missing) in:\n{out}"


# ----------------------------------------------------------------------------- verify
def _verify_result() -> dict:
    """A verify result with the long evidence strings real checkpoints produce."""
    checks = [
        {"name": "norm_offset", "status": "pass", "expected": 1, "observed": 1,
         "evidence": "145 norms called on x = +-1 (unit RMS) apply (1 + w): y/x = 1.0000 + 1.0000 w at worst "
                     "(model.layers.17.post_feedforward_layernorm), fit residual 3.2e-07; the stored weights do "
                     "not hold the +1 themselves (11 of 145 means near 1, means -0.42..306.66)"},
        {"name": "lint:rope_scaling", "status": "pass", "expected": "none (the card's rope scaling)",
         "observed": "none", "evidence": "config rope_scaling is null, as Gemma 3 270M's card says"},
        {"name": "sliding_window", "status": "pass",
         "expected": {"window": 512, "sliding_layers": [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 12],
                      "global_layers": [5, 11, 17]},
         "observed": {"window": 512, "sliding_layers": [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 12],
                      "global_layers": [5, 11, 17]},
         "evidence": "decoder_block_0 query 519 sees keys 8..519 (512 keys); decoder_block_5 query 519 sees keys "
                     "0..519 (520 keys): a global layer"},
        {"name": "lint:norm_weights", "status": "warn", "expected": "stored without the +1 (the layer adds 1)",
         "observed": "means 0.912..1.204 over 145 norm weights",
         "evidence": "80 of 145 norm weights have a mean near 1: possibly (1 + w) stored"},
        {"name": "embedding_scale", "status": "fail", "expected": 25.25, "observed": 25.298221281347036,
         "evidence": "x = E[tok] * 25.2982 observed at model.embed_tokens: sqrt(640) unrounded"},
    ]
    return {"source": "/very/long/path/to/a/checkpoint/directory/gemma-3-270m-it-finetuned-hf",
            "runtime": "transformers", "checks": checks, "passed": False}


def test_verify_at_80_columns_prints_one_block_per_check_and_splits_no_word():
    r = _verify_result()
    out = _render(render_verify, r)
    from gemma_inspect.render import _value

    texts = [c["evidence"] for c in r["checks"]] + [c["name"] for c in r["checks"]]
    texts += [_value(c["expected"]) for c in r["checks"]] + [_value(c["observed"]) for c in r["checks"]]
    assert_no_split(out, texts)
    lines = out.splitlines()
    # each check starts with its status and its name on one line
    for c in r["checks"]:
        assert any(line.startswith(f"{c['status']:<4} {c['name']}") for line in lines), c["name"]
    assert "expected 1; observed 1" in out
    assert lines[-1] == "FAIL: embedding_scale (3 pass, 1 fail, 1 warn)"
    assert all(len(line) <= WIDTH for line in lines[2:-1])  # the per-check blocks are laid out to the width
    # a wide terminal keeps the table
    wide = _render(render_verify, r, width=200)
    assert "┃ check" in wide and all(line == line.rstrip() for line in wide.splitlines())


# ----------------------------------------------------------------------------- compare
def test_compare_at_80_columns_splits_no_name_or_number():
    from gemma_inspect.render import describe

    models = [load(n) for n in ("gemma-7b", "llama2-7b", "olmo-7b", "gemma3-270m")]
    result = compare(models)
    out = _render(render_compare, result)
    texts = [m["card"] for m in result["models"]]
    texts += [v for m in result["models"] for _, v in describe(m, compact=True)]
    assert_no_split(out, texts)
    assert "1/sqrt(256)" in out and "llama2-7b" in out
    # parameter counts: M below a billion, B above; sizes in kB as the progress bars spell them
    params = next(line for line in out.splitlines() if "Parameters" in line)
    assert "8.5B" in params and "268.1M" in params and "0.3B" not in params
    assert " kB" in out and " KB" not in out


def test_compare_shortens_paths_to_their_last_component(tiny_models):
    hf = tiny_models.get("gemma", "hf")
    res = CliRunner().invoke(main, ["compare", hf, "gemma-2b"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    header = next(line for line in res.stdout.splitlines() if "gemma-2b" in line and "┃" in line)
    assert [c.strip() for c in header.split("┃")[2:4]] == [hf.rstrip("/").rsplit("/", 1)[-1], "gemma-2b"]
    assert f"{hf.rstrip('/').rsplit('/', 1)[-1]}: {hf}" in res.stdout  # the full path, once, under the table


# ----------------------------------------------------------------------------- summary
@pytest.mark.parametrize("source", ["gemma3-270m", "gemma2-27b", "embeddinggemma-300m"])
def test_summary_of_a_card_at_80_columns(source):
    from gemma_inspect.render import describe

    m = summarize(load(source))
    out = _render(render_summary, m)
    assert_no_split(out, [v for _, v in describe(m)])
    assert out.splitlines()[0] == f"{source}  (built-in card)"


def test_summary_of_a_gguf_uses_one_dtype_spelling(tiny_models, tmp_path):
    from gemma_inspect.convert import WriteOptions, convert

    dest = str(tmp_path / "q8.gguf")
    convert(tiny_models.get("gemma3", "hf"), dest, "gguf", WriteOptions(dtype="q8_0"))
    m = summarize(load(dest))
    out = _render(render_summary, m)
    from gemma_inspect.render import describe

    assert_no_split(out, [v for _, v in describe(m)])
    assert "F32" not in out and "float32 x" in out and "Q8_0 x" in out
    assert re.search(r"\d kB", out) and " KB" not in out


# ----------------------------------------------------------------------------- units and names
def test_units_read_one_way():
    assert format_bytes(594_180) == "594.18 kB" and format_bytes(1_200_000_000) == "1.20 GB"
    assert (_pct(0.0004), _pct(0.0), _pct(0.5), _pct(1.0), _pct(0.99999)) == ("<0.1%", "0.0%", "50.0%",
                                                                           "100.0%", ">99.9%")
    assert (dtype_name("F32"), dtype_name("BF16"), dtype_name("Q8_0"), dtype_name("float32")) == (
        "float32", "bfloat16", "Q8_0", "float32")


@pytest.mark.parametrize("typed,meant", [("gema-7b", "gemma-7b"), ("gemma3-27", "gemma3-27b"),
                                         ("gemma3_27b", "gemma3-27b"), ("Gemma2-9B", "gemma2-9b"),
                                         ("lama2-7b", "llama2-7b"), ("resnet50", None)])
def test_mistyped_card_names_get_a_suggestion(typed, meant):
    assert suggest_card(typed) == meant


def test_mistyped_card_on_the_command_line():
    res = CliRunner().invoke(main, ["summary", "gema-7b"])
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert line.startswith("Error: gema-7b: no such file or directory, and not a built-in card; "
                           "did you mean 'gemma-7b'? cards: gemma-2b, gemma-7b,")
    from gemma_inspect.spec import CARD_NAMES

    # one line: the suggestion and the card list, nothing more (the list grows with the cards: 14 since EmbeddingGemma)
    assert line == ("Error: gema-7b: no such file or directory, and not a built-in card; did you mean 'gemma-7b'? "
                    f"cards: {', '.join(CARD_NAMES)}")
    ok = CliRunner().invoke(main, ["summary", "Gemma-7B"])
    assert ok.exit_code == 0 and ok.stdout.startswith("Gemma-7B  (built-in card)")


def test_to_values_take_any_case_as_card_names_do(tiny_models, tmp_path):
    res = CliRunner().invoke(main, ["convert", tiny_models.get("gemma", "hf"), str(tmp_path / "k"), "--to", "KERAS",
                                    "--no-manifest", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert (report["source_format"], report["format"], report["dest"], report["tensors"]) == (
        "hf", "keras", str(tmp_path / "k"), 20)


# ----------------------------------------------------------------------------- progress
@pytest.mark.parametrize("dtype", ["q8_0", "keep"])
def test_gguf_progress_counts_what_it_planned_and_ends_at_100_percent(tiny_models, tmp_path, dtype):
    """The bar's total and its advances are the same unit - bytes of tensors as written - so a Q8_0 conversion
    (about a quarter of its float32 source) ends at 100%, not at 25%."""
    from gemma_inspect.cli import _planned_bytes
    from gemma_inspect.convert import WriteOptions, convert

    ckpt = load(tiny_models.get("gemma3", "hf"))
    planned = _planned_bytes(ckpt, WriteOptions(dtype=dtype, manifest=False), "gguf")
    seen: list[int] = []
    convert(ckpt, str(tmp_path / "out.gguf"), "gguf", WriteOptions(dtype=dtype, manifest=False), seen.append)
    assert sum(seen) == planned
    source = sum(ref.numel * 4 for ref in ckpt.tensors.values())
    if dtype == "q8_0":
        assert planned < 0.3 * source


def test_q8_0_progress_moves_while_a_tensor_is_quantized(tiny_models, tmp_path, monkeypatch):
    """Quantizing a large embedding takes seconds: the bar advances a block of rows at a time while it is made,
    not once after it is written, and still adds up to exactly what was planned."""
    from gemma_inspect.cli import _planned_bytes
    from gemma_inspect.convert import WriteOptions, convert
    from gemma_inspect.formats import gguf as gguf_format

    monkeypatch.setattr(gguf_format, "DEQUANT_CHUNK_ELEMENTS", 256)  # blocks of a few rows in a tiny model
    ckpt = load(tiny_models.get("gemma3", "hf"))
    options = WriteOptions(dtype="q8_0", manifest=False)
    planned = _planned_bytes(ckpt, options, "gguf")
    seen: list[int] = []
    convert(ckpt, str(tmp_path / "out.gguf"), "gguf", options, seen.append)
    assert sum(seen) == planned
    embed = ckpt.tensors["model.embed_tokens.weight"]
    rows, width = embed.shape
    row_bytes = width // 32 * 34  # Q8_0: 32 values in 34 bytes
    step = max(1, 256 // width)
    assert seen.count(step * row_bytes) >= rows // step  # the embedding's blocks, each as it was quantized
    assert len(seen) > len(ckpt.tensors) + rows // step - 1


def test_convert_report_says_what_its_time_measures(tiny_models, tmp_path):
    res = CliRunner().invoke(main, ["convert", tiny_models.get("gemma", "hf"), str(tmp_path / "k"), "--to", "keras",
                                    "--no-manifest"])
    assert res.exit_code == 0, res.output
    assert re.search(r"\d+ tensors, [\d.]+ kB, in [\d.]+ s of conversion \(reading the source's headers, "
                     r"start-up and imports not counted\)", res.stdout), res.stdout


def test_parity_report_at_80_columns_has_no_trailing_spaces_and_whole_numbers(tiny_models):
    from gemma_inspect.parity import parity
    from gemma_inspect.render import fmt_float, render_parity

    r = parity(load(tiny_models.get("gemma2", "hf")), load(tiny_models.get("gemma2", "keras")), device="cpu")
    out = _render(render_parity, r)
    texts = [row["name"] for row in r["layers"]] + [fmt_float(row["max_abs_diff"]) for row in r["layers"]]
    texts += [fmt_float(row["noise_floor"]) for row in r["layers"]]
    assert_no_split(out, texts)
    assert "Hidden states (max|A-B| against the measured float32 noise floor)" in out.splitlines()


def test_verify_shows_its_steps_and_elapsed_time_on_stderr_in_a_pipe(tiny_models):
    res = CliRunner().invoke(main, ["verify", tiny_models.get("gemma", "hf"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("verify ")]
    steps = [re.match(r"verify +\d+\.\d s  (\S+)", line).group(1) for line in lines]
    assert steps == ["[1/3]", "[2/3]", "[3/3]", "done"]
    assert "[2/3] loading with transformers on cpu (float32)" in lines[1]
    out = res.stdout.splitlines()
    assert out[2] == "pass norm_placement" and out[3].startswith("     expected pre; observed pre")
