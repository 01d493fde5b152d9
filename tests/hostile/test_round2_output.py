"""Round two, what reaches the terminal.

- Names from the input - a checkpoint's directory name, a tensor name, a shard name, a manifest entry - holding a
  newline, a carriage return, terminal escape sequences (clear screen, window title, a fake `PASS:` line), a C1
  control or an invisible bidirectional override: every command's output holds none of them raw (errors stay one
  line; tables and notes show them escaped); JSON carries them as JSON does.
- A signalling NaN in the weights: diff, summary --scan and convert say what they find without a RuntimeWarning.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import unicodedata
import warnings

import pytest
from click.testing import CliRunner

from gemma_inspect.cli import main
from gemma_inspect.terminal import printable

from .conftest import TALLY
from .variants import join_safetensors, split_safetensors

INJECTIONS = {
    "newline": "\nError: fake second line",
    "carriage return": "\rPASS: A and B compute the same thing",
    "clear screen": "\x1b[2J\x1b[H",
    "window title": "\x1b]0;owned\x07",
    "colour": "\x1b[32mPASS\x1b[0m",
    "C1 CSI": "\x9b2J",
    "bidi override": "\u202etxt.exe",
    "line separator": "\u2028next",
    "tab and DEL": "\t\x7f",
}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def raw_controls(text: str) -> list[str]:
    """Characters that must not reach a terminal raw (a newline that ends a line is fine)."""
    return [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]


def clean_output(r, label: str) -> None:
    assert not raw_controls(r.stdout) and not raw_controls(r.stderr), (label, r.stdout[-500:], r.stderr[-500:])
    if r.exit_code == 2:
        assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, (label, r.stderr)
    assert "Traceback" not in r.output, (label, r.output[-2000:])


def test_printable_escapes_exactly_the_unprintable():
    assert printable("a\nb\r\tc") == "a\\nb\\r\\tc"
    assert printable("\x1b[2J\x9b\x7f\x00") == "\\x1b[2J\\x9b\\x7f\\x00"
    assert printable("\u202eabc\u2028\ufeff") == "\\u202eabc\\u2028\\ufeff"
    assert printable("x\udcff") == "x\\udcff"  # an undecodable byte of a file name
    keep = "caf\u00e9 \u65e5\u672c\u8a9e \U0001f642 C:\\dir [bold]x[/bold] \u00a0"
    assert printable(keep) == keep.replace("\u00a0", "\u00a0")
    for s in list(INJECTIONS.values()) + [keep]:
        once = printable(s)
        assert printable(once) == once and not raw_controls(once)


@pytest.mark.parametrize("what", sorted(INJECTIONS))
def test_directory_name_with_controls(tiny_models, tmp_path, what):
    """The checkpoint's own path, printed by every command: titles, A:/B: lines, notes, errors, warnings."""
    inj = INJECTIONS[what]
    root = str(tmp_path / f"ckpt{inj}end")
    shutil.copytree(tiny_models.get("gemma2", "hf"), root)
    other = tiny_models.get("gemma2", "keras")
    dest = str(tmp_path / f"out{inj}.gguf")
    runs = [("summary", root), ("summary", root, "--scan"), ("compare", root, other), ("diff", root, other),
            ("diff", other, root), ("convert", root, dest, "--to", "gguf"), ("diff", dest, "--manifest"),
            ("convert", root, dest, "--to", "gguf"),  # exists: an error naming it
            ("parity", root, other, "--runtime-a", "reference", "--runtime-b", "reference"),
            ("verify", root, "--runtime", "reference"), ("summary", os.path.join(root, "missing"))]
    for args in runs:
        r = invoke(*args)
        assert r.exit_code in (0, 1, 2), (args, r.output)
        clean_output(r, f"{what}: {args[0]}")
    r = invoke("summary", root, "--json")
    assert json.loads(r.stdout)["source"] == root  # JSON keeps the name as it is
    TALLY["round 2: control characters in names (CLI)"][0] += len(runs)
    TALLY["round 2: control characters in names (CLI)"][2] += len(runs)


def _renamed_tensor(src: str, dest: str, old: str, new: str) -> None:
    shutil.copytree(src, dest)
    path = os.path.join(dest, "model.safetensors")
    with open(path, "rb") as f:
        header, body = split_safetensors(f.read())
    header = {(new if k == old else k): v for k, v in header.items()}
    with open(path, "wb") as f:
        f.write(join_safetensors(header, body))


@pytest.mark.parametrize("what", sorted(INJECTIONS))
def test_tensor_and_shard_names_with_controls(tiny_models, tmp_path, what):
    """A tensor name and a shard file name with control characters: the refusals are one escaped line."""
    inj = INJECTIONS[what]
    good = tiny_models.get("gemma2", "hf")
    bad = str(tmp_path / "bad-tensor")
    _renamed_tensor(good, bad, "model.norm.weight", f"model.norm{inj}.weight")
    sharded = str(tmp_path / "bad-shard")
    shutil.copytree(tiny_models.get("gemma2", "hf", shard=True), sharded)
    index_path = os.path.join(sharded, "model.safetensors.index.json")
    with open(index_path) as f:
        index = json.load(f)
    first = sorted(set(index["weight_map"].values()))[0]
    os.rename(os.path.join(sharded, first), os.path.join(sharded, f"x{inj}.safetensors"))
    index["weight_map"] = {k: (f"x{inj}.safetensors" if v == first else v) for k, v in index["weight_map"].items()}
    with open(index_path, "w") as f:
        json.dump(index, f)
    n = 0
    for root in (bad, sharded):
        for args in (("summary", root), ("diff", good, root), ("convert", root, tmp_path / "o", "--to", "hf")):
            r = invoke(*args)
            clean_output(r, f"{what}: {args[0]} {os.path.basename(root)}")
            n += 1
    # The shard with the odd name is a legal checkpoint: it reads, and reads the same weights.
    assert invoke("diff", good, sharded).exit_code == 0
    TALLY["round 2: control characters in names (CLI)"][0] += n
    TALLY["round 2: control characters in names (CLI)"][1] += n // 2
    TALLY["round 2: control characters in names (CLI)"][2] += n - n // 2


def test_manifest_entries_with_controls(tiny_models, tmp_path):
    """A manifest listing files with control characters in their names: the table shows them escaped, JSON as
    they are."""
    from gemma_inspect.convert import convert

    out = convert(tiny_models.get("gemma2"), str(tmp_path / "out"), "hf")["dest"]
    mpath = os.path.join(out, "gemma-inspect-manifest.json")
    with open(mpath) as f:
        m = json.load(f)
    extra = [dict(m["files"][0], name=f"gone{inj}.safetensors") for inj in INJECTIONS.values()]
    with open(mpath, "w") as f:
        json.dump(dict(m, files=m["files"] + extra), f)
    r = invoke("diff", out, "--manifest")
    assert r.exit_code == 1
    clean_output(r, "manifest table")
    assert "gone\\x1b[2J\\x1b[H.safetensors" in r.stdout
    r = invoke("diff", out, "--manifest", "--json")
    assert {e["name"] for e in extra} <= {f["name"] for f in json.loads(r.stdout)["files"]}
    TALLY["round 2: control characters in names (CLI)"][0] += len(extra)
    TALLY["round 2: control characters in names (CLI)"][2] += len(extra)


# ============================================================================= signalling NaNs
SNAN = {"float32": [0x7F800001, 0xFF800001, 0x7FA00000], "float16": [0x7C01, 0xFC01], "bfloat16": [0x7F81, 0xFF81]}


def _with_snan(src: str, dest: str, bits: int, width: int, tensor_index: int) -> str:
    shutil.copytree(src, dest)
    path = os.path.join(dest, "model.safetensors")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    (hlen,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + hlen])
    name = sorted(k for k in header if k != "__metadata__")[tensor_index]
    start = 8 + hlen + header[name]["data_offsets"][0]
    data[start:start + width] = bits.to_bytes(width, "little")
    with open(path, "wb") as f:
        f.write(data)
    return name


@pytest.mark.parametrize("dtype", sorted(SNAN))
def test_signalling_nan_prints_no_runtime_warning(tiny_models, tmp_path, dtype):
    clean = tiny_models.get("gemma2", "hf", dtype=dtype)
    width = 4 if dtype == "float32" else 2
    n = 0
    for i, bits in enumerate(SNAN[dtype]):
        bad = str(tmp_path / f"snan{i}")
        _with_snan(clean, bad, bits, width, i)
        runs = [(("diff", clean, bad), 1), (("diff", bad, clean), 1), (("diff", bad, clean, "--atol", "1"), 1),
                (("diff", bad, bad), 0), (("summary", bad, "--scan"), 0),
                (("convert", bad, tmp_path / f"o{i}.gguf", "--to", "gguf", "--dtype", "float32"), 0),
                (("convert", bad, tmp_path / f"o{i}", "--to", "hf", "--dtype", "float32"), 0)]
        for args, code in runs:
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)  # a RuntimeWarning would fail the command
                r = invoke(*args)
            assert r.exit_code == code, (dtype, hex(bits), args, r.output)
            assert "RuntimeWarning" not in r.output and "invalid value" not in r.output, r.output
            clean_output(r, f"{dtype} {bits:#x} {args[0]}")
            if args[0] in ("diff", "summary") and args[1] != args[2 % len(args)]:
                assert "Warning: " in r.stderr and "1 NaN" in r.stderr, r.stderr
            n += 1
    TALLY["round 2: signalling NaN (CLI)"][0] += n
    TALLY["round 2: signalling NaN (CLI)"][2] += n
