"""Second round of hostile tokenizers (issue 17): SentencePiece models whose field tags are written in more
bytes than they need (protobuf reads `8a 00` as field 1, so a count of `0a` bytes missed such pieces), and
tokenizer.json files whose regexes make the Rust tokenizers library panic (pyo3's PanicException, a
BaseException, with a Rust backtrace). Each class is swept through the library over its forms and places;
the issue's cases run as commands in their own process."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from gemma_inspect.cli import main

from files import read_bytes

from .conftest import sweep
from .round2 import MB, refused, run
from .test_tokenizer_and_config import scratch_env, use_tokenizer  # noqa: F401 - a fixture, used by name
from .variants import Variant

CATASTROPHIC = r"(\D*\D*\D*)*\d{99}"  # exceeds oniguruma's backtracking limit on any text of a few words


# ----------------------------------------------------------------------------- SentencePiece wire format (item 9)
def top_fields(data: bytes) -> list[tuple[int, int, bytes]]:
    """(tag, wire type, the field's bytes after its tag) of every top-level field of a serialized message."""

    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            b = data[pos]
            value |= (b & 0x7F) << shift
            pos += 1
            if b < 0x80:
                return value, pos
            shift += 7

    out, pos = [], 0
    while pos < len(data):
        tag, after_tag = varint(pos)
        wire = tag & 7
        if wire == 0:
            end = varint(after_tag)[1]
        elif wire == 2:
            n, p = varint(after_tag)
            end = p + n
        else:
            end = after_tag + (8 if wire == 1 else 4)
        out.append((tag, wire, data[after_tag:end]))
        pos = end
    return out


def overlong(value: int, width: int) -> bytes:
    """`value` (< 128) as a varint of `width` bytes: protobuf reads it as `value`."""
    if width == 1:
        return bytes([value])
    return bytes([value | 0x80]) + b"\x80" * (width - 2) + b"\x00"


def spm_wire_variants(file: str, data: bytes) -> list[Variant]:
    fields = top_fields(data)

    def rebuilt(label: str, width_of, must_fail: bool = True, extra: bytes = b"") -> Variant:
        body = b"".join(overlong(tag, width_of(i, tag)) + rest for i, (tag, _w, rest) in enumerate(fields))
        return Variant(f"{file}: {label}", file, body + extra, must_fail=must_fail)

    first_piece = next(i for i, f in enumerate(fields) if f[0] >> 3 == 1)
    trainer = next(i for i, f in enumerate(fields) if f[0] >> 3 == 2)
    out = [rebuilt(f"every field tag written in {w} bytes", lambda i, t, w=w: w) for w in (2, 3, 5, 10, 11)]
    out += [
        rebuilt("the first piece's tag in 2 bytes", lambda i, t: 2 if i == first_piece else 1),
        rebuilt("the trainer spec's tag in 2 bytes", lambda i, t: 2 if i == trainer else 1),
        rebuilt("every piece's tag in 2 bytes, the specs' as usual", lambda i, t: 2 if t >> 3 == 1 else 1),
        rebuilt("2,000,001 empty pieces with 2-byte tags appended", lambda i, t: 1,
                extra=b"\x8a\x00\x00" * 2_000_001),
        rebuilt("1,001 unknown varint fields appended", lambda i, t: 1, extra=b"\x78\x00" * 1001),
    ]
    # A length (not a tag) written long is how protobuf's own writers never write either, but it hides nothing.
    i, (tag, _w, rest) = first_piece, fields[first_piece]
    n = rest[0]
    body = b"".join(overlong(t, 1) + r for t, _, r in fields[:i]) + overlong(tag, 1) + overlong(n, 2) + rest[1:] \
        + b"".join(overlong(t, 1) + r for t, _, r in fields[i + 1:])
    out.append(Variant(f"{file}: the first piece's length in 2 bytes", file, body, must_fail=False))
    return out


@pytest.mark.parametrize("where", ["hf", "keras"])
def test_spm_field_tags_of_every_width(tiny_models, copy_dir, scratch_env, where):  # noqa: F811
    if where == "hf":
        root, name = copy_dir(tiny_models.get("gemma2", "hf"), "hf"), "tokenizer.model"
    else:
        root = copy_dir(tiny_models.get("gemma3", "keras"), "keras")
        name = os.path.join("assets", "tokenizer", "vocabulary.spm")
    data = read_bytes(os.path.join(root, name))
    assert b"".join(bytes([t]) + r for t, _, r in top_fields(data)) == data  # the walk above reads it whole
    results = sweep(f"SentencePiece wire format (round 2, {where})", root, spm_wire_variants(name, data),
                    scratch_env, use=use_tokenizer)
    assert [v.label for v, _ in results["ok"]] == [f"{name}: the first piece's length in 2 bytes"]
    for v, msg in results["error"]:
        assert ("written in more bytes than it needs" in msg or "this tool accepts" in msg
                or "fields besides its pieces" in msg or "varint runs past" in msg), (v.label, msg)


def test_spm_of_overlong_empty_pieces_is_refused_fast_and_small(tiny_models, tmp_path):
    """The issue's 75 MB model: 25 million empty pieces behind `8a 00` tags (3.1 GB and 60 s before)."""
    src = tiny_models.get("gemma2", "hf")
    base = run(["convert", src, str(tmp_path / "ok.gguf"), "--to", "gguf"], str(tmp_path))
    assert base.code == 0, base.err
    d = str(tmp_path / "hf")
    shutil.copytree(src, d)
    with open(os.path.join(d, "tokenizer.model"), "ab") as f:
        f.write(b"\x8a\x00\x00" * (25 * MB))
    refused(["convert", d, str(tmp_path / "out.gguf"), "--to", "gguf"], str(tmp_path),
            "is written in more bytes than it needs", base, slack=75 * MB + 100 * MB)
    assert not os.path.exists(tmp_path / "out.gguf")


# ----------------------------------------------------------------------------- Rust panics (item 10)
def panic_variants(file: str, data: bytes) -> list[Variant]:
    base = json.loads(data)
    replace = {"type": "Replace", "pattern": {"Regex": CATASTROPHIC}, "content": "x"}
    split = {"type": "Split", "pattern": {"Regex": CATASTROPHIC}, "behavior": "Isolated", "invert": False}
    cases = {
        "a normalizer with a catastrophic regex": {"normalizer": replace},
        "a catastrophic regex after the normalizer": {"normalizer": {"type": "Sequence", "normalizers": [
            n for n in (base.get("normalizer"), replace) if n]}},
        "a pre-tokenizer with a catastrophic regex": {"pre_tokenizer": split},
        "a catastrophic regex in a pre-tokenizer sequence": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            p for p in (base.get("pre_tokenizer"), split) if p]}},
    }
    return [Variant(f"{file}: {label}", file, json.dumps({**base, **change}).encode())
            for label, change in cases.items()]


def test_tokenizer_panics_are_one_error(tiny_models, copy_dir, scratch_env):  # noqa: F811
    root = copy_dir(tiny_models.get("gemma2", "hf"), "hf")
    os.remove(os.path.join(root, "tokenizer.model"))
    name = "tokenizer.json"
    results = sweep("tokenizer.json panics (round 2)", root, panic_variants(name, read_bytes(os.path.join(root, name))),
                    scratch_env, use=use_tokenizer)
    assert not results["ok"]
    for v, msg in results["error"]:
        assert msg.startswith(os.path.join(root, name) + ": the tokenizers library failed") and \
            "PanicException" in msg, (v.label, msg)


def _panicking(tiny_models, tmp_path, variant: int = 0) -> tuple[str, str]:
    d = str(tmp_path / "hf")
    shutil.copytree(tiny_models.get("gemma2", "hf"), d)
    os.remove(os.path.join(d, "tokenizer.model"))
    path = os.path.join(d, "tokenizer.json")
    v = panic_variants("tokenizer.json", read_bytes(path))[variant]
    with open(path, "wb") as f:
        f.write(v.data)  # type: ignore[arg-type]
    return d, path


@pytest.mark.parametrize("command", ["convert gguf", "convert keras", "parity"])
def test_tokenizer_panic_commands(tiny_models, tmp_path, command):
    """The issue's file through `convert` and `parity` (a 152-line Rust backtrace and a Python traceback, exit 1,
    before): one Error line naming tokenizer.json, nothing of the backtrace, nothing written."""
    # convert runs the tokenizers library when it rebuilds a SentencePiece model from tokenizer.json and checks
    # it: the catastrophic regex sits in a pre-tokenizer Split, which a SentencePiece model can hold (user-defined
    # pieces), so the rebuild gets as far as encoding. parity runs each side's own tokenizer, normalizer and all.
    d, path = _panicking(tiny_models, tmp_path, variant=0 if command == "parity" else 2)
    if command == "parity":
        args = ["parity", d, d, "--runtime-a", "reference", "--runtime-b", "reference"]
    else:
        args = ["convert", d, str(tmp_path / "out"), "--to", command.split()[1]]
    r = run(args, str(tmp_path))
    assert r.code == 2, (r.code, r.err[-3000:])
    assert r.err.count("\n") == 1 and r.err.startswith(f"Error: {path}: the tokenizers library failed"), r.err[-3000:]
    assert "PanicException" in r.err and "panicked" not in r.err
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("to", ["gguf", "keras"])
def test_an_unconvertible_normalizer_is_left_out_with_a_note(tiny_models, tmp_path, to):
    """A normalizer no SentencePiece model can express (here the catastrophic regex) is never run by convert: the
    weights convert, no tokenizer is written, and the report says why."""
    d, _ = _panicking(tiny_models, tmp_path, variant=0)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["convert", d, str(out), "--to", to, "--json"])
    assert r.exit_code == 0, r.output[-3000:]
    notes = json.loads(r.stdout)["notes"]
    assert any("could not be rebuilt from tokenizer.json" in n or "none could be rebuilt from tokenizer.json" in n
               for n in notes), notes
    written = [str(out)] if to == "gguf" else [os.path.join(dp, f) for dp, _, fs in os.walk(out) for f in fs]
    assert not any(f.endswith((".model", "tokenizer.json")) for f in written)
    if to == "gguf":
        from gguf import GGUFReader

        assert "tokenizer.ggml.tokens" not in GGUFReader(str(out)).fields
