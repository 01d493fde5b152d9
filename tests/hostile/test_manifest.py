"""Verifiable outputs: `convert` writes a manifest (every file's size and BLAKE3 - or SHA-256 on request -, every
tensor's canonical name, shape and dtype as the output reads back) and `diff DEST --manifest` checks an output against
it, whichever algorithm the manifest records (version 1 manifests, SHA-256 only, included)."""

from __future__ import annotations

import hashlib
import json
import os

import blake3
import pytest
from click.testing import CliRunner

from gemma_inspect.cli import main
from gemma_inspect.convert import WriteOptions, convert
from gemma_inspect.formats import load
from gemma_inspect.manifest import MANIFEST_NAME, check

TARGETS = {"hf": "", "keras": "", "gguf": ".gguf", "gemma-pytorch": ".ckpt"}


def run(*args: str) -> object:
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def outputs(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    return {to: convert(tiny_models.get("gemma2"), str(root / f"out-{to}{ext}"), to)["dest"]
            for to, ext in TARGETS.items()}


def _manifest_of(dest: str) -> str:
    return os.path.join(dest, MANIFEST_NAME) if os.path.isdir(dest) else dest + ".manifest.json"


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _blake3(path: str) -> str:
    with open(path, "rb") as f:
        return blake3.blake3(f.read()).hexdigest()


@pytest.mark.parametrize("to", TARGETS)
def test_convert_writes_a_manifest_of_every_file_and_tensor(outputs, to):
    dest = outputs[to]
    path = _manifest_of(dest)
    with open(path) as f:
        m = json.load(f)
    assert set(m) == {"kind", "version", "created_by", "format", "source", "hash", "files", "tensors"}
    assert (m["kind"], m["version"], m["format"], m["hash"]) == ("gemma-inspect manifest", 2, to, "blake3")
    if os.path.isdir(dest):
        on_disk = sorted(os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs)
        assert [f["name"] for f in m["files"]] == [n for n in on_disk if n != MANIFEST_NAME]
        root = dest
    else:
        assert [f["name"] for f in m["files"]] == [os.path.basename(dest)]
        root = os.path.dirname(dest)
    for f in m["files"]:
        full = os.path.join(root, f["name"])
        assert set(f) == {"name", "size", "blake3"}
        assert (f["size"], f["blake3"]) == (os.path.getsize(full), _blake3(full))
    read = load(dest)  # the manifest does not confuse format detection
    assert m["tensors"] == [{"name": r.name, "shape": list(r.shape), "dtype": r.dtype} for r in read.tensors.values()]
    assert len(m["tensors"]) == 46


@pytest.mark.parametrize("to", TARGETS)
def test_diff_manifest_passes_on_the_output(outputs, to):
    dest = outputs[to]
    r = run("diff", dest, "--manifest")
    assert r.exit_code == 0, r.output
    n = 1 if not os.path.isdir(dest) else len(json.load(open(_manifest_of(dest)))["files"])
    assert r.stdout.splitlines()[-1] == f"files: {n} equal; tensors: 46: matches its manifest"
    r2 = run("diff", dest, _manifest_of(dest), "--json")  # the manifest as B, detected by its content
    assert r2.exit_code == 0
    result = json.loads(r2.stdout)
    assert set(result) == {"identical", "a", "manifest", "hash", "counts", "files", "tensors", "error"}
    assert result["hash"] == "blake3"
    assert [(f["digest"], f["expected_digest"]) for f in result["files"]] == [
        (f["blake3"], f["blake3"]) for f in json.load(open(_manifest_of(dest)))["files"]]
    assert result["identical"] and result["counts"] == {"equal": n, "different": 0, "missing_a": 0, "missing_b": 0}
    assert {t["status"] for t in result["tensors"]} == {"equal"}


def test_tampered_outputs_fail_and_name_the_files(tiny_models, tmp_path):
    dest = str(tmp_path / "hf")
    convert(tiny_models.get("gemma2", "keras"), dest, "hf")
    weights = os.path.join(dest, "model.safetensors")
    with open(weights, "r+b") as f:  # one bit of one weight, same size
        f.seek(os.path.getsize(weights) - 3)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    os.remove(os.path.join(dest, "generation_config.json"))
    with open(os.path.join(dest, "notes.txt"), "w") as f:
        f.write("added later")
    r = run("diff", dest, "--manifest", "--json")
    assert r.exit_code == 1
    result = json.loads(r.stdout)
    status = {f["name"]: f["status"] for f in result["files"]}
    assert status["model.safetensors"] == "different"
    assert status["generation_config.json"] == "missing_a"
    assert status["notes.txt"] == "missing_b"
    assert status["config.json"] == "equal"
    assert result["identical"] is False and result["error"] is None  # it still reads: the tensors match
    r = run("diff", dest, "--manifest")
    assert r.exit_code == 1 and r.stdout.splitlines()[-1] == (
        "files: 4 equal, 1 different, 1 missing_a, 1 missing_b; tensors: 46: does not match")
    # A truncated weights file: the tensors cannot be read, and the check says why.
    with open(weights, "r+b") as f:
        f.truncate(1000)
    result = json.loads(run("diff", dest, "--manifest", "--json").stdout)
    assert result["tensors"] == [] and result["error"].startswith(f"{weights}: ")


def test_bad_manifests_are_input_errors(outputs, tmp_path):
    dest = outputs["gguf"]
    missing = str(tmp_path / "none.gguf")
    os.symlink(dest, missing)
    r = run("diff", missing, "--manifest")
    assert (r.exit_code, r.stderr) == (2, f"Error: {missing}.manifest.json: missing: no manifest here (convert "
                                          f"writes one; or pass --manifest FILE)\n")
    with open(_manifest_of(dest)) as f:
        m = json.load(f)
    cases = {
        "truncated": json.dumps(m)[:50],
        "not ours": json.dumps({**m, "kind": "something else"}),
        "outside": json.dumps({**m, "files": [{"name": "../../etc/passwd", "size": 1, "sha256": "0" * 64}]}),
        "absolute": json.dumps({**m, "files": [{"name": "/etc/passwd", "size": 1, "sha256": "0" * 64}]}),
        "bad files": json.dumps({**m, "files": [{"name": 3}]}),
    }
    for name, text in cases.items():
        p = tmp_path / f"{name}.manifest.json"
        p.write_text(text)
        r = run("diff", dest, "--manifest", str(p))
        assert r.exit_code == 2 and r.stderr.startswith(f"Error: {p}: ") and r.stderr.count("\n") == 1, (name, r.stderr)
        assert r.stdout == ""


def test_force_replaces_the_output_and_its_manifest(tiny_models, tmp_path):
    dest = str(tmp_path / "m.gguf")
    convert(tiny_models.get("gemma2"), dest, "gguf")
    first = _sha256(dest + ".manifest.json")
    convert(tiny_models.get("gemma3"), dest, "gguf", WriteOptions(force=True))
    assert _sha256(dest + ".manifest.json") != first
    assert check(dest)["identical"]
    assert sorted(os.listdir(tmp_path)) == ["m.gguf", "m.gguf.manifest.json"]


def test_library_can_skip_the_manifest_and_the_cli_needs_b_or_manifest(tiny_models, tmp_path):
    report = convert(tiny_models.get("gemma2"), str(tmp_path / "x.gguf"), "gguf", WriteOptions(manifest=False))
    assert report["manifest"] is None and os.listdir(tmp_path) == ["x.gguf"]
    r = run("diff", str(tmp_path / "x.gguf"))
    assert r.exit_code == 2 and "diff needs A and B, or A and --manifest" in r.output
    r = run("diff", str(tmp_path / "x.gguf"), str(tmp_path / "x.gguf"), "--manifest")
    assert r.exit_code == 2 and "give B or --manifest, not both" in r.output


def _flip_last_weight_bit(path: str) -> None:
    with open(path, "r+b") as f:  # one bit of one weight, same size
        f.seek(os.path.getsize(path) - 3)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))


@pytest.mark.parametrize("to", ["hf", "gguf"])
def test_sha256_on_request_is_what_sha256sum_says_and_is_checked(tiny_models, tmp_path, to):
    dest = str(tmp_path / ("out" + TARGETS[to]))
    report = convert(tiny_models.get("gemma2", "keras"), dest, to, WriteOptions(hash="sha256"))
    assert any("every file's size and SHA-256" in n for n in report["notes"])
    with open(_manifest_of(dest)) as f:
        m = json.load(f)
    assert (m["version"], m["hash"]) == (2, "sha256")
    root = dest if os.path.isdir(dest) else os.path.dirname(dest)
    for f in m["files"]:
        assert set(f) == {"name", "size", "sha256"}
        assert f["sha256"] == _sha256(os.path.join(root, f["name"]))
    result = check(dest)
    assert result["identical"] and result["hash"] == "sha256"
    weights = os.path.join(dest, "model.safetensors") if os.path.isdir(dest) else dest
    _flip_last_weight_bit(weights)
    result = check(dest)
    row = next(r for r in result["files"] if r["name"] == os.path.basename(weights))
    assert (result["identical"], row["status"]) == (False, "different")
    assert (row["digest"], row["expected_digest"]) == (_sha256(weights), next(
        f["sha256"] for f in m["files"] if f["name"] == row["name"]))


def test_cli_hash_option(tiny_models, tmp_path):
    dest = str(tmp_path / "cli-hf")
    r = run("convert", tiny_models.get("gemma2", "keras"), dest, "--to", "hf", "--hash", "sha256", "--json")
    assert r.exit_code == 0, r.output
    assert json.load(open(_manifest_of(dest)))["hash"] == "sha256"
    r = run("convert", tiny_models.get("gemma2", "keras"), str(tmp_path / "x"), "--to", "hf", "--hash", "md5")
    assert r.exit_code == 2 and "'md5' is not one of 'blake3', 'sha256'" in r.output
    with pytest.raises(Exception, match="unknown hash 'md5'; choose from blake3, sha256"):
        convert(tiny_models.get("gemma2", "keras"), str(tmp_path / "y"), "hf", WriteOptions(hash="md5"))
    assert not os.path.exists(tmp_path / "y")


def test_version_1_manifests_are_still_checked(tiny_models, tmp_path):
    """A manifest written before BLAKE3 became the default (version 1: a "sha256" per file, no "hash")."""
    dest = str(tmp_path / "old-hf")
    convert(tiny_models.get("gemma2", "keras"), dest, "hf", WriteOptions(manifest=False))
    names = sorted(os.listdir(dest))
    old = {"kind": "gemma-inspect manifest", "version": 1, "created_by": "gemma-inspect 0.1.0", "format": "hf",
           "source": "somewhere",
           "files": [{"name": n, "size": os.path.getsize(os.path.join(dest, n)), "sha256": _sha256(os.path.join(dest, n))}
                     for n in names],
           "tensors": [{"name": r.name, "shape": list(r.shape), "dtype": r.dtype}
                       for r in load(dest).tensors.values()]}
    with open(os.path.join(dest, MANIFEST_NAME), "w") as f:
        json.dump(old, f)
    result = check(dest)
    assert result["identical"] and result["hash"] == "sha256"
    assert result["counts"] == {"equal": len(names), "different": 0, "missing_a": 0, "missing_b": 0}
    r = run("diff", dest, "--manifest")
    assert r.exit_code == 0 and r.stdout.splitlines()[-1] == f"files: {len(names)} equal; tensors: 46: matches its manifest"
    _flip_last_weight_bit(os.path.join(dest, "model.safetensors"))
    r = run("diff", dest, "--manifest")
    assert r.exit_code == 1 and r.stdout.splitlines()[-1] == (
        f"files: {len(names) - 1} equal, 1 different; tensors: 46: does not match")


def test_manifests_that_lie_about_their_hash_are_input_errors(outputs, tmp_path):
    dest = outputs["hf"]
    with open(_manifest_of(dest)) as f:
        m = json.load(f)
    cases = {
        "unknown hash": ({**m, "hash": "md5"}, "manifest hash 'md5' is not one of blake3, sha256"),
        "digest of another algorithm": ({**m, "hash": "sha256"}, "manifest 'files' must list objects with a name, "
                                                                 "a size and a sha256"),
        "version 3": ({**m, "version": 3}, "manifest version 3 is not one of 1, 2"),
        "version 1 with blake3": ({**m, "version": 1}, "manifest 'files' must list objects with a name, a size and a "
                                                       "sha256"),
    }
    for name, (obj, message) in cases.items():
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(obj))
        r = run("diff", dest, "--manifest", str(p))
        assert (r.exit_code, r.stderr) == (2, f"Error: {p}: {message}\n"), name
