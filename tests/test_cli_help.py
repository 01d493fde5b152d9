"""Every command's `--help`: an Example section whose command lines parse into that command (as sqlite-utils' docs
test checks its documented commands); choice lists, defaults and name lists read from the library, never restated
in cli.py; and the README's CLI section listing the same choices."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gemma_inspect.cli import main

COMMANDS = ("summary", "compare", "convert", "verify", "parity", "diff", "demo")
README = Path(__file__).resolve().parents[1] / "README.md"


def examples(help_text: str) -> list[str]:
    """The command lines of the `Example:` section of a help text (its indented lines up to the next blank one)."""
    lines = help_text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "Example:"]
    assert len(starts) == 1, f"one Example: section expected, found {len(starts)}"
    indent = len(lines[starts[0]]) - len(lines[starts[0]].lstrip())
    found = []
    for line in lines[starts[0] + 1:]:
        if not line.strip():
            break
        assert len(line) - len(line.lstrip()) > indent, f"not indented under Example: {line!r}"
        found.append(line.strip())
    return found


def parse_example(line: str) -> tuple[str, dict]:
    """Parse one example command line with the CLI's own parser: (the subcommand it runs, its parsed parameters).
    A bad option, a bad choice or a missing argument raises click's UsageError/BadParameter."""
    argv = shlex.split(line, comments=True)
    assert argv[0] == "gemma-inspect", line
    with main.make_context("gemma-inspect", argv[1:], resilient_parsing=False) as ctx:
        name, command, rest = main.resolve_command(ctx, argv[1:])
        with command.make_context(name, rest, parent=ctx) as sub:
            return name, dict(sub.params)


def test_every_command_is_covered():
    assert set(main.commands) == set(COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_examples_parse_into_their_command(cmd):
    result = CliRunner().invoke(main, [cmd, "--help"])
    assert result.exit_code == 0, result.output
    lines = examples(result.stdout)
    assert lines, f"{cmd} --help has an empty Example: section"
    for line in lines:
        assert line.startswith(f"gemma-inspect {cmd}"), line
        name, params = parse_example(line)
        assert name == cmd, line
        if cmd == "compare":  # compare's own rule, checked in its body: at least two sources
            assert len(params["sources"]) >= 2, line


def test_the_example_check_can_fail():
    """The parser really judges the example lines: a bad choice, an unknown option or a missing argument fail."""
    for bad in ("gemma-inspect convert a b --to pdf", "gemma-inspect summary x --colour",
                "gemma-inspect parity a", "gemma-inspect verify x --runtime jax"):
        with pytest.raises(click.UsageError):
            parse_example(bad)
    assert parse_example("gemma-inspect convert a b --to GGUF --dtype Q8_0") == (
        "convert", {"source": "a", "dest": "b", "to": "gguf", "dtype": "q8_0", "max_shard_size": None,
                    "force": False, "verify_after": False, "no_manifest": False, "hash_name": "blake3",
                    "io_mode": "auto", "as_json": False})
    with pytest.raises(AssertionError, match="one Example: section expected, found 0"):
        examples("Usage: gemma-inspect x\n\n  Does x.\n")


def info(cmd: str) -> dict:
    """The command's parameters as click describes them (choices, defaults and help settled)."""
    command = main.commands[cmd]
    ctx = click.Context(command, info_name=cmd, parent=click.Context(main, info_name="gemma-inspect"))
    return {p["name"]: p for p in command.to_info_dict(ctx)["params"]}


def choices(cmd: str, param: str) -> tuple[str, ...]:
    return tuple(info(cmd)[param]["type"]["choices"])


def test_choices_and_defaults_are_the_librarys():
    from gemma_inspect.convert import DTYPES, WriteOptions
    from gemma_inspect.formats import FORMATS
    from gemma_inspect.manifest import DEFAULT_HASH, HASHES
    from gemma_inspect.runtimes import DEVICES, DTYPES as RUN_DTYPES, RUNTIMES

    assert choices("convert", "to") == FORMATS == ("hf", "keras", "gguf", "gemma-pytorch")
    assert choices("convert", "dtype") == DTYPES == ("keep", "float32", "bfloat16", "float16", "q8_0")
    assert info("convert")["dtype"]["default"] == WriteOptions().dtype == "keep"
    assert choices("convert", "hash_name") == HASHES == ("blake3", "sha256")
    assert info("convert")["hash_name"]["default"] == DEFAULT_HASH == "blake3"
    for param in ("runtime_a", "runtime_b"):
        assert choices("parity", param) == RUNTIMES == ("auto", "reference", "transformers", "keras")
        assert info("parity")[param]["default"] == "auto"
    assert choices("verify", "runtime") == RUNTIMES
    assert choices("parity", "device") == choices("verify", "device") == DEVICES == ("auto", "cpu", "cuda")
    assert info("verify")["device"]["default"] == info("verify")["runtime"]["default"] == "auto"
    assert choices("parity", "dtype") == RUN_DTYPES == ("float32", "bfloat16")
    assert info("parity")["dtype"]["default"] == "float32"
    assert info("convert")["dtype"]["help"] == ("keep = bit-exact; anything else casts every tensor explicitly "
                                                "(q8_0: gguf only).")
    assert info("convert")["max_shard_size"]["help"] == ("Split weights into shards of at most SIZE (e.g. 5GB, "
                                                         "500MB). Default: 5GB (hf), 10GB (keras).")
    assert info("parity")["runtime_a"]["help"] == ("Runtime for A (auto picks transformers for hf, keras for "
                                                   "keras, reference for every other format).")


# Each library constant the CLI shows, changed before cli.py is imported (convert's and the writers' after, as
# the CLI reads them when a command is used): the help and the choices follow.
FOLLOW = r"""
import json
import click
import gemma_inspect.formats as F, gemma_inspect.manifest as M, gemma_inspect.parity as P
import gemma_inspect.runtimes as R, gemma_inspect.spec as S
import dataclasses, types
F.FORMATS += ("toyfmt",)
_registry = F._modules
def _modules():
    mods = _registry()
    toy = types.SimpleNamespace(**vars(mods["gguf"]))
    toy.FORMAT = dataclasses.replace(mods["gguf"].FORMAT, name="toyfmt", native_runtime="toyrt")
    return {**mods, "toyfmt": toy}
F._modules = _modules
R.RUNTIMES += ("toyrt",)
R.DEVICES += ("toydev",)
R.DTYPES += ("toydt",)
M.HASHES += ("toyhash",)
M.DEFAULT_HASH = "toyhash"
M.MANIFEST_NAME, M.SIBLING_SUFFIX = "toy-manifest.json", ".toy.json"
S.CARD_NAMES += ("toy-card",)
P.TOLERANCES = {**P.TOLERANCES, "bfloat16": {**P.TOLERANCES["bfloat16"], "atol": 0.125}}
P.QUANTIZED = {**P.QUANTIZED, "atol": 0.375}
from gemma_inspect.cli import main
import gemma_inspect.convert as C, gemma_inspect.formats.hf as H
C.DTYPES += ("toyq",)
H.DEFAULT_MAX_SHARD = 2 * 10**9
out = {"main": main.help}
for cmd in ("convert", "parity", "verify", "diff"):
    command = main.commands[cmd]
    ctx = click.Context(command, info_name=cmd, parent=click.Context(main, info_name="gemma-inspect"))
    out[cmd] = {p["name"]: {"choices": p["type"].get("choices"), "default": p["default"], "help": p["help"]}
                for p in command.to_info_dict(ctx)["params"]}
print(json.dumps(out))
"""


def test_the_cli_follows_the_library_constants():
    proc = subprocess.run([sys.executable, "-c", FOLLOW], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "(hf, keras, gguf, gemma-pytorch, toyfmt)" in out["main"]
    assert "llama2-7b, olmo-7b, mistral-7b, toy-card)" in out["main"]
    convert, parity, verify, diff = out["convert"], out["parity"], out["verify"], out["diff"]
    assert convert["to"]["choices"][-1] == "toyfmt"
    assert convert["dtype"]["choices"] == ["keep", "float32", "bfloat16", "float16", "q8_0", "toyq"]
    assert convert["dtype"]["help"].endswith("(q8_0, toyq: gguf, toyfmt only).")
    assert convert["max_shard_size"]["help"].endswith("Default: 2GB (hf), 10GB (keras).")
    assert convert["hash_name"]["choices"] == ["blake3", "sha256", "toyhash"]
    assert convert["hash_name"]["default"] == "toyhash"
    for runtime in (parity["runtime_a"], parity["runtime_b"], verify["runtime"]):
        assert runtime["choices"][-1] == "toyrt"
    assert "toyrt for toyfmt" in parity["runtime_a"]["help"] and "toyrt for toyfmt" in verify["runtime"]["help"]
    assert parity["device"]["choices"][-1] == verify["device"]["choices"][-1] == "toydev"
    assert parity["dtype"]["choices"] == ["float32", "bfloat16", "toydt"]
    assert parity["atol"]["help"].endswith("(default 0.125, 0.375 quantized).")
    assert "(A/toy-manifest.json, or A.toy.json beside a single file)" in diff["manifest"]["help"]


def test_help_stays_light():
    """cli.py reads convert's constants only when convert is used: `--help` imports neither numpy nor convert.py
    (numpy alone is ~0.2 s of start-up); `convert --help` does."""
    probe = ("import sys, runpy; sys.argv = ['gemma-inspect'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('gemma_inspect', run_name='__main__')\nexcept SystemExit: pass\n"
             "print(sorted(m for m in ('numpy', 'gemma_inspect.convert') if m in sys.modules))")
    for args, loaded in ((["--help"], "[]"), (["summary", "--help"], "[]"),
                         (["convert", "--help"], "['gemma_inspect.convert', 'numpy']")):
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == loaded, args


# --------------------------------------------------------------------------- the README's CLI section
# `--opt a|b|c`, `--opt {a,b,c}`, `--opt-a`/`--opt-b a|b`: a choice list written in the README.
LISTING = re.compile(r"(--[a-z][a-z0-9-]*(?:`?/`?--[a-z][a-z0-9-]*)*)[ =]"
                     r"(?:\{([\w.-]+(?:,[\w.-]+)+)\}|([\w.-]+(?:\|[\w.-]+)+))")
SECTION = re.compile(r"^(#{2,4}) (.*)$", re.M)


def readme_listings() -> list[tuple[str, str, tuple[str, ...]]]:
    """(the README section's command or title, option, choices) for every choice list in README.md."""
    text = README.read_text()
    heads = [(m.start(), m.group(2)) for m in SECTION.finditer(text)]
    found = []
    for m in LISTING.finditer(text):
        title = next((t for start, t in reversed(heads) if start < m.start()), "")
        section = re.match(r"`(\w+)`", title)
        values = tuple(m.group(2).split(",")) if m.group(2) else tuple(m.group(3).split("|"))
        for option in re.split(r"`?/`?", m.group(1)):
            found.append((section.group(1) if section else title, option, values))
    return found


def cli_choices() -> dict[tuple[str, str], tuple[str, ...]]:
    """(command, --option) -> its choices, for every choice option of every command."""
    out = {}
    for cmd in COMMANDS:
        for p in info(cmd).values():
            if p["param_type_name"] == "option" and p["type"].get("choices"):
                out[(cmd, p["opts"][0])] = tuple(p["type"]["choices"])
    return out


def test_readme_lists_every_choice_option_of_every_command():
    listed = {(where, option): values for where, option, values in readme_listings()}
    missing = [key for key in cli_choices() if key not in listed]
    assert missing == [], f"the README's section of each command lists these options' choices: {missing}"
    assert {key: listed[key] for key in cli_choices()} == cli_choices()


def test_readme_choice_lists_match_the_cli():
    """In a command's own section a list is that option's choices exactly; elsewhere (e.g. what GGUF can store)
    it is a part of them."""
    cli = cli_choices()
    for where, option, values in readme_listings():
        if (where, option) in cli:
            assert values == cli[(where, option)], (where, option)
        else:
            known = {v for (_, o), vs in cli.items() if o == option for v in vs}
            assert known and set(values) <= known, (where, option, values)


def test_readme_names_every_option_and_every_card():
    from gemma_inspect.spec import CARD_NAMES

    text = README.read_text()
    for cmd in COMMANDS:
        for p in info(cmd).values():
            if p["param_type_name"] == "option" and "--help" not in p["opts"]:
                assert re.search(re.escape(p["opts"][0]) + r"\b", text), f"{cmd} {p['opts'][0]}"
    cards = re.search(r"or a built-in card:\n`([^`]+)`", text)
    assert cards is not None
    assert tuple(cards.group(1).split()) == CARD_NAMES


def test_the_readme_check_reads_listings():
    """Guard: the pattern reads the forms the README uses (and a stale value would differ)."""
    m = LISTING.search("Options: `--to {hf,keras}`, `--dtype {keep,q8_0}`")
    assert (m.group(1), m.group(2)) == ("--to", "hf,keras")
    m = LISTING.search("- `--device auto|cpu|cuda` (the same code")
    assert (m.group(1), m.group(3)) == ("--device", "auto|cpu|cuda")
    m = LISTING.search("Runtimes (`--runtime-a`/`--runtime-b auto|reference`):")
    assert (m.group(1), m.group(3)) == ("--runtime-a`/`--runtime-b", "auto|reference")
