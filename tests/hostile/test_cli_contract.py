"""The command-line contract on a representative subset of the hostile variants of every format: each command that
reads a refused variant (summary, compare, diff in both positions, parity, convert) exits 2 with exactly one
`Error: <path>: <problem>` line on stderr - the library's own message - nothing on stdout, no traceback, and
convert leaves neither DEST nor a temporary sibling."""

from __future__ import annotations

import glob
import os
import random

import pytest
from click.testing import CliRunner

from gemma_inspect.cli import main

from .conftest import TALLY, applied, outcome, problem_with, use_checkpoint
from .test_gemma_pytorch import single_variants as ckpt_variants
from .test_gguf import gguf_variants
from .test_keras_h5 import sharded_variants as keras_sharded_variants
from .test_keras_h5 import single_variants as keras_variants
from .test_safetensors import sharded_variants as hf_sharded_variants
from .test_safetensors import single_variants as hf_variants
from .test_tokenizer_and_config import spm_variants
from .variants import Variant, json_variants

PER_FORMAT = 10  # variants per format through every command (all of them go through the library)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def spread(variants: list[Variant], k: int) -> list[Variant]:
    """k variants spread over the list (the generators group them by kind)."""
    step = max(1, len(variants) // k)
    return variants[::step][:k]


def load_error(where: str) -> str | None:
    from gemma_inspect.errors import GemmaInspectError
    from gemma_inspect.formats import load

    try:
        load(where)
    except GemmaInspectError as e:
        return str(e)
    return None


def check_cli(fmt: str, root: str, good: str, variants: list[Variant], scratch: str) -> int:
    """Run the chosen variants through the commands; returns how many were refused (and checked)."""
    checked = 0
    originals: dict[str, bytes] = {}
    for v in variants:
        with applied(root, v, scratch, originals) as where:
            kind, msg = outcome(where, use=use_checkpoint)
            if kind == "ok":
                continue
            checked += 1
            at_load = load_error(where)
            if at_load is not None:  # every command that opens it says the same line
                for args in (("summary", where), ("summary", where, "--json"), ("compare", "gemma-2b", where),
                             ("diff", good, where), ("diff", where, good, "--json"),
                             ("parity", where, good, "--runtime-a", "reference", "--runtime-b", "reference")):
                    r = invoke(*args)
                    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"Error: {at_load}\n"), (v.label, args,
                                                                                              r.output)
            dest = os.path.join(scratch, "converted.gguf")
            # Opened fine, failing when values or the tokenizer are used: a command that uses what is broken
            # fails cleanly; one that does not (diff never reads the tokenizer) succeeds.
            for args in ((("diff", good, where),) if at_load is None else ()) + (("convert", where, dest, "--to",
                                                                                   "gguf"),):
                r = invoke(*args)
                if at_load is not None:
                    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"Error: {at_load}\n"), (v.label, r.output)
                elif r.exit_code != 0:
                    assert r.exit_code == 2 and r.stderr.count("\n") == 1, (v.label, args, r.output)
                    assert problem_with_line(r.stderr, where) is None, (v.label, r.stderr)
                if args[0] == "convert" and r.exit_code != 0:
                    assert not os.path.lexists(dest) and not os.path.lexists(dest + ".manifest.json")
                    assert not glob.glob(os.path.join(scratch, ".converted.gguf.partial-*"))
                for leftover in (dest, dest + ".manifest.json"):
                    if os.path.lexists(leftover):
                        os.remove(leftover)
    TALLY[f"{fmt} (CLI)"][0] += len(variants)
    TALLY[f"{fmt} (CLI)"][1] += checked
    TALLY[f"{fmt} (CLI)"][2] += len(variants) - checked
    return checked


def problem_with_line(stderr: str, root: str) -> str | None:
    """None when `Error: <path inside root>: <problem>` is the whole of stderr."""
    from gemma_inspect.errors import InputError

    line = stderr[len("Error: "):-1]
    return problem_with(InputError(None, line), root) if "Traceback" not in stderr else "a traceback"


@pytest.fixture
def scratch(tmp_path):
    return str(tmp_path)


def test_safetensors_and_hf_index(tiny_models, copy_dir, scratch):
    root = copy_dir(tiny_models.get("gemma2", "hf", tokenizer=False), "hf")
    good = tiny_models.get("gemma2", "hf", tokenizer=False)
    assert check_cli("safetensors (single)", root, good, spread(hf_variants(root, 8, 101), PER_FORMAT), scratch) > 6
    root = copy_dir(tiny_models.get("gemma3", "hf", tokenizer=False, shard=True), "hf-sharded")
    good = tiny_models.get("gemma3", "hf", tokenizer=False, shard=True)
    assert check_cli("safetensors (sharded) + index", root, good,
                     spread(hf_sharded_variants(root, 8, 102), PER_FORMAT), scratch) > 6


def test_keras_h5(tiny_models, copy_dir, scratch):
    root = copy_dir(tiny_models.get("gemma2", "keras"), "keras")
    good = tiny_models.get("gemma2", "keras")
    assert check_cli("keras h5 (single)", root, good, spread(keras_variants(root, scratch, 8, 103), PER_FORMAT),
                     scratch) > 4
    root = copy_dir(tiny_models.get("gemma2", "keras", tokenizer=False, shard=True), "keras-sharded")
    good = tiny_models.get("gemma2", "keras", tokenizer=False, shard=True)
    assert check_cli("keras h5 (sharded) + index", root, good,
                     spread(keras_sharded_variants(root, scratch, 8, 104), PER_FORMAT), scratch) > 4


def test_gguf_and_ckpt(tiny_models, copy_dir, scratch):
    from gemma_inspect.convert import convert

    good = convert(tiny_models.get("gemma2"), os.path.join(scratch, "good.gguf"), "gguf")["dest"]
    root = copy_dir(good, "model.gguf")
    with open(root, "rb") as f:
        data = f.read()
    assert check_cli("gguf", root, good, spread(gguf_variants("", data, random.Random(105), 8, 30), PER_FORMAT),
                     scratch) > 6
    good = convert(tiny_models.get("gemma2"), os.path.join(scratch, "good.ckpt"), "gemma-pytorch")["dest"]
    root = copy_dir(good, "model.ckpt")
    assert check_cli("gemma_pytorch .ckpt", root, good, spread(ckpt_variants(root, scratch, 8, 106), PER_FORMAT),
                     scratch) > 6


def test_tokenizer_and_config(tiny_models, copy_dir, scratch):
    good = tiny_models.get("gemma2", "hf")
    root = copy_dir(good, "hf")
    with open(os.path.join(root, "tokenizer.model"), "rb") as f:
        spm = f.read()
    assert check_cli("tokenizer.model", root, good,
                     spread(spm_variants("tokenizer.model", spm, random.Random(107), 8), PER_FORMAT), scratch) > 4
    with open(os.path.join(root, "config.json"), "rb") as f:
        cfg = f.read()
    assert check_cli("config.json (hf)", root, good, spread(json_variants("config.json", cfg, random.Random(108), 8,
                                                                          values_per_key=2), 2 * PER_FORMAT),
                     scratch) > 6
