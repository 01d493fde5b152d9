"""Round two, paths: which files a command reads and which it writes.

- A single weights file beside a shard index (HF model.safetensors + model.safetensors.index.json, Keras
  model.weights.h5 + model.weights.json): the native loaders read the single file, an index-first reader the
  shards. Every command must refuse such a directory with the same line, so no two commands see different
  weights (parity on the transformers runtime cannot pass while diff and convert read a poisoned shard).
- A DEST that is, holds, or lies inside the source, spelled directly or through symlinks, with and without
  --force: refused before anything is removed; the source tree is left byte for byte as it was. parity's --plot
  is never written over an input. DEST names too long for the file system are refused, never an internal error.
- `diff X --manifest`: a manifest may list only the output's own files, each once, by a plain name.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time

import pytest
from click.testing import CliRunner

from gemma_inspect.cli import main

from files import tree_digest

from .conftest import TALLY


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(r, *fragments: str) -> str:
    """The result is exit 2 with nothing on stdout and exactly one `Error:` line (holding `fragments`) on stderr."""
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stdout == "", r.stdout
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    for f in fragments:
        assert f in r.stderr, (f, r.stderr)
    return r.stderr


def tally(cls: str, refused: int, accepted: int = 0) -> None:
    TALLY[cls][0] += refused + accepted
    TALLY[cls][1] += refused
    TALLY[cls][2] += accepted


# ============================================================================= 2. ambiguous weights
# (single weights file, the first shard's name) of each format whose shards sit beside an index
SINGLE_AND_FIRST_SHARD = {"hf": ("model.safetensors", None), "keras": ("model.weights.h5", "model_00000.weights.h5")}


def _ambiguous(tiny_models, tmp_path, fmt: str, single_from: str) -> str:
    """A sharded directory (seed 0) of `fmt` with a single weights file beside its index."""
    root = str(tmp_path / f"{fmt}-ambiguous-{single_from}")
    shutil.copytree(tiny_models.get("gemma2", fmt, shard=True), root)
    name, first_shard = SINGLE_AND_FIRST_SHARD[fmt]
    single = os.path.join(root, name)
    if single_from == "same":
        shutil.copyfile(os.path.join(tiny_models.get("gemma2", fmt), name), single)
    elif single_from == "poisoned":  # other weights: what transformers / keras-hub would run
        shutil.copyfile(os.path.join(tiny_models.get("gemma2", fmt, seed=1), name), single)
    elif single_from == "empty":
        open(single, "wb").close()
    elif single_from == "symlink":
        os.symlink(first_shard or os.path.basename(sorted(glob.glob(os.path.join(root, "model-0*.safetensors")))[0]),
                   single)
    return root


AMBIGUOUS = [(fmt, kind) for fmt in ("hf", "keras") for kind in ("same", "poisoned", "empty", "symlink")]


@pytest.mark.parametrize("fmt,kind", AMBIGUOUS)
def test_single_file_beside_an_index_is_refused_by_every_command(tiny_models, tmp_path, fmt, kind):
    root = _ambiguous(tiny_models, tmp_path, fmt, kind)
    clean = tiny_models.get("gemma2", fmt)
    single, index = (("model.safetensors", "model.safetensors.index.json") if fmt == "hf"
                     else ("model.weights.h5", "model.weights.json"))
    line = f"Error: {os.path.join(root, single)}: is beside the shard index {index}: which of the two holds the " \
           f"weights is ambiguous; remove one of them\n"
    before = tree_digest(root)
    dest = tmp_path / "out"
    # parity and verify on the native runtime (transformers / keras-hub, which would read the single file) too.
    commands = [("summary", root), ("summary", root, "--scan", "--json"), ("compare", root, clean),
                ("diff", root, clean), ("diff", clean, root, "--json"), ("convert", root, dest, "--to", "gguf"),
                ("convert", root, dest, "--to", "hf", "--verify"), ("parity", root, clean),
                ("parity", clean, root, "--runtime-b", "reference"), ("verify", root)]
    for args in commands:
        r = invoke(*args)
        one_error_line(r)
        assert r.stderr == line, (args, r.stderr)
    assert not os.path.lexists(dest) and tree_digest(root) == before
    tally("round 2: single file beside an index (CLI)", len(commands))


def test_peft_adapter_directory_is_refused(tiny_models, tmp_path):
    """With peft installed, transformers loads the base model an adapter_config.json names (from the hub) and
    applies the adapter: the runtimes would run other weights than the files here."""
    root = str(tmp_path / "adapter")
    shutil.copytree(tiny_models.get("gemma2", "hf"), root)
    with open(os.path.join(root, "adapter_config.json"), "w") as f:
        json.dump({"base_model_name_or_path": "google/gemma-2-2b", "peft_type": "LORA"}, f)
    clean = tiny_models.get("gemma2", "hf")
    commands = [("summary", root), ("diff", clean, root), ("parity", root, clean), ("verify", root),
                ("convert", root, tmp_path / "out", "--to", "keras")]
    for args in commands:
        one_error_line(invoke(*args), os.path.join(root, "adapter_config.json") + ": a PEFT adapter")
    tally("round 2: single file beside an index (CLI)", len(commands))


@pytest.mark.parametrize("fmt", ["hf", "keras"])
def test_index_alone_and_single_alone_still_read_the_same_weights(tiny_models, fmt):
    """The refusal is for the pair only: the sharded and the single-file checkpoint of the same weights read,
    and diff finds them identical."""
    r = invoke("diff", tiny_models.get("gemma2", fmt), tiny_models.get("gemma2", fmt, shard=True), "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert (d["identical"], d["counts"]["equal"], len(d["tensors"])) == (True, 46, 46)


# ============================================================================= 3. DEST and the source
def _layout(tmp_path, fmt_source: str, tiny_models) -> dict[str, str]:
    """models/src (a checkpoint) beside an unrelated file, a symlink to the source and one to models/."""
    base = tmp_path / "work"
    models = base / "models"
    models.mkdir(parents=True)
    src = models / "src"
    if fmt_source == "gguf":
        from gemma_inspect.convert import convert

        src.mkdir()
        convert(tiny_models.get("gemma2"), str(src / "m.gguf"), "gguf")
        source = str(src / "m.gguf")
    else:
        shutil.copytree(tiny_models.get("gemma2", fmt_source), src)
        source = str(src)
    (models / "unrelated.txt").write_text("keep me\n")
    os.symlink(source, base / "srclink")
    os.symlink(models, base / "modelslink")
    return {"base": str(base), "models": str(models), "src": str(src), "source": source,
            "srclink": str(base / "srclink"), "modelslink": str(base / "modelslink")}


def _dest_cases(p: dict[str, str], single_file: bool) -> list[tuple[str, str, str]]:
    """(label, source spelling, DEST spelling) for every relation that must be refused."""
    source, src, models = p["source"], p["src"], p["models"]
    rel = os.path.relpath(source, p["base"])
    cases = [
        ("DEST is the source", source, source),
        ("DEST is the source, trailing slash", source, source + os.sep if not single_file else source),
        ("DEST is the source through ../", source, os.path.join(src, "..", os.path.basename(src),
                                                                 *([os.path.basename(source)] if single_file else []))),
        ("source through a symlink, DEST the real path", p["srclink"], source),
        ("DEST a symlink to the source", source, p["srclink"]),
        ("DEST the source through a symlinked parent", source, os.path.join(p["modelslink"], rel.split(os.sep, 1)[1])),
        ("DEST holds the source", source, models),
        ("DEST holds the source (grandparent)", source, p["base"]),
        ("DEST holds the source through a symlink", p["srclink"], p["modelslink"]),
        ("DEST is the source's directory", source, src),
    ]
    if not single_file:
        cases += [
            ("DEST inside the source", source, os.path.join(src, "sub")),
            ("DEST inside the source through a symlink", source, os.path.join(p["srclink"], "sub")),
            ("DEST a file of the source", source, os.path.join(src, "config.json")),
            ("DEST a file of the source, source through a symlink", p["srclink"], os.path.join(src, "config.json")),
        ]
    else:
        cases += [("DEST is the source through a symlinked parent, same name", source,
                   os.path.join(p["modelslink"], "src", os.path.basename(source)))]
    return cases


@pytest.mark.parametrize("fmt_source", ["hf", "keras", "gguf"])
def test_dest_never_destroys_the_source(tiny_models, tmp_path, fmt_source):
    p = _layout(tmp_path, fmt_source, tiny_models)
    single = fmt_source == "gguf"
    before = tree_digest(p["base"])
    n = 0
    for label, source, dest in _dest_cases(p, single):
        for to in ("keras", "hf", "gguf"):
            for force in ((), ("--force",)):
                r = invoke("convert", source, dest, "--to", to, *force)
                one_error_line(r, "DEST", "source")  # said first: --force would not help
                assert tree_digest(p["base"]) == before, (label, to, force)  # nothing removed, nothing added
                n += 1
    tally("round 2: DEST and the source (CLI)", n)


def test_dest_beside_the_source_is_fine(tiny_models, tmp_path):
    """The rules refuse the relations, not the neighbourhood: a sibling DEST converts."""
    p = _layout(tmp_path, "hf", tiny_models)
    for dest in (os.path.join(p["models"], "out"), os.path.join(p["modelslink"], "out2")):
        r = invoke("convert", p["srclink"], dest, "--to", "keras")
        assert r.exit_code == 0, r.output
    assert open(os.path.join(p["models"], "unrelated.txt")).read() == "keep me\n"


def test_dest_manifest_sibling_would_be_the_source(tiny_models, tmp_path):
    """A single-file DEST gets `DEST.manifest.json` beside it: when that is the source (a GGUF file is detected by
    its magic, whatever its name), the conversion is refused, with --force or without."""
    from gemma_inspect.convert import convert

    src = convert(tiny_models.get("gemma2"), str(tmp_path / "m.gguf"), "gguf", )["dest"]
    os.rename(src, tmp_path / "out.gguf.manifest.json")
    os.remove(src + ".manifest.json")
    before = tree_digest(str(tmp_path))
    for force in ((), ("--force",)):
        for to in ("gguf", "gemma-pytorch"):
            r = invoke("convert", tmp_path / "out.gguf.manifest.json", tmp_path / "out.gguf", "--to", to, *force)
            one_error_line(r, "out.gguf.manifest.json")
            assert tree_digest(str(tmp_path)) == before
    tally("round 2: DEST and the source (CLI)", 4)


def test_source_inside_a_stale_partial_of_dest_is_refused(tiny_models, tmp_path):
    """convert removes the `.DEST.partial-*` leftovers of killed runs: a source inside one is refused first."""
    from gemma_inspect.convert import host_tag

    stale = tmp_path / f".out.partial-{host_tag()}-999999999-abcdefgh"
    stale.mkdir()
    src = stale / "src"
    shutil.copytree(tiny_models.get("gemma2", "hf"), src)
    before = tree_digest(str(stale))
    r = invoke("convert", src, tmp_path / "out", "--to", "gguf")
    one_error_line(r, "temporary sibling")
    assert tree_digest(str(stale)) == before
    tally("round 2: DEST and the source (CLI)", 1)


def test_parity_plot_is_never_written_over_an_input(tiny_models, tmp_path):
    a = str(tmp_path / "a")
    shutil.copytree(tiny_models.get("gemma2", "hf"), a)
    b = tiny_models.get("gemma2", "keras")
    os.symlink(a, tmp_path / "alink")
    before = tree_digest(a)
    plots = [os.path.join(a, "config.json"), os.path.join(a, "model.safetensors"), a,
             str(tmp_path / "alink" / "tokenizer.model"), os.path.join(b, "config.json"), str(tmp_path),
             os.path.join(a, "new.png")]
    for plot in plots:
        r = invoke("parity", a, b, "--runtime-a", "reference", "--runtime-b", "reference", "--plot", plot)
        one_error_line(r, "--plot")
        assert tree_digest(a) == before
    ok = tmp_path / "layers.png"
    r = invoke("parity", a, b, "--runtime-a", "reference", "--runtime-b", "reference", "--plot", ok)
    assert r.exit_code == 0 and ok.stat().st_size > 1000, r.output
    tally("round 2: parity --plot over an input (CLI)", len(plots), 1)


# ============================================================================= 13. long DEST names
@pytest.mark.parametrize("to,ext", [("gguf", ".gguf"), ("hf", "")])
def test_long_dest_names(tiny_models, tmp_path, to, ext):
    """Names up to the limit convert (the temporary sibling's name is shortened); longer ones - or ones whose
    `.manifest.json` would be - are refused before writing, with one line, and leave nothing behind."""
    src = tiny_models.get("gemma2", "hf")
    out = tmp_path / "out"
    out.mkdir()
    n = refused = 0
    for size, char in ((100, "a"), (200, "b"), (230, "c"), (241, "d"), (250, "e"), (255, "f"), (256, "g"),
                       (400, "h"), (84, "\u00e9")):  # 84 two-byte characters: 168 bytes
        name = char * (size - len(ext)) + ext
        for extra in ((), ("--no-manifest",)):
            dest = out / name
            r = invoke("convert", src, dest, "--to", to, *extra)
            nbytes = len(name.encode())
            fits = nbytes <= 255 and (extra or nbytes + len(".manifest.json") <= 255)
            if fits:
                assert r.exit_code == 0, (size, extra, r.output)
                assert os.path.lexists(dest)
                shutil.rmtree(dest) if os.path.isdir(dest) else os.remove(dest)
                if os.path.lexists(str(dest) + ".manifest.json"):
                    os.remove(str(dest) + ".manifest.json")
            else:
                one_error_line(r, "bytes", "limit")
                refused += 1
            assert os.listdir(out) == [], os.listdir(out)
            n += 1
    assert refused >= 6
    tally("round 2: long DEST names (CLI)", refused, n - refused)


# ============================================================================= 12. manifests
@pytest.fixture(scope="module")
def gguf_output(tiny_models, tmp_path_factory):
    from gemma_inspect.convert import convert

    root = tmp_path_factory.mktemp("round2-manifest")
    dest = convert(tiny_models.get("gemma2"), str(root / "x.gguf"), "gguf")["dest"]
    (root / "secret.txt").write_text("the secret\n")
    (root / "sub").mkdir()
    (root / "sub" / "x.gguf").write_text("another\n")
    hf = convert(tiny_models.get("gemma2"), str(root / "hfout"), "hf")["dest"]
    return dest, hf


def _entry(m: dict, name: str) -> dict:
    return dict(m["files"][0], name=name)


def manifest_file_lists(single: str, m: dict, secret: str) -> list[tuple[str, list[dict]]]:
    own = m["files"][0]
    return [
        ("a sibling secret", [own, _entry(m, secret)]),
        ("only the sibling secret", [_entry(m, secret)]),
        ("./ alias", [_entry(m, "./" + single)]),
        ("5000 aliases", [_entry(m, "./" * i + single) for i in range(5000)]),
        ("duplicate", [own, own]),
        ("absolute path", [_entry(m, os.path.abspath(single))]),
        ("../ path", [_entry(m, "../" + single)]),
        ("a file in a subdirectory", [_entry(m, "sub/" + single)]),
        ("backslash", [_entry(m, ".\\" + single)]),
        ("empty name", [_entry(m, "")]),
        ("trailing slash", [_entry(m, single + "/")]),
        ("NUL in the name", [_entry(m, single + "\x00")]),
        ("the manifest itself", [own, _entry(m, single + ".manifest.json")]),
    ]


def test_single_file_manifest_lists_only_the_output(gguf_output, tmp_path):
    dest, _ = gguf_output
    root = os.path.dirname(dest)
    with open(dest + ".manifest.json") as f:
        m = json.load(f)
    n = 0
    for label, files in manifest_file_lists(os.path.basename(dest), m, "secret.txt"):
        mpath = tmp_path / "bad.manifest.json"
        mpath.write_text(json.dumps(dict(m, files=files)))
        for args in (("diff", dest, "--manifest", mpath), ("diff", dest, mpath), ("diff", dest, mpath, "--json")):
            start = time.perf_counter()
            r = invoke(*args)
            one_error_line(r, str(mpath))
            assert time.perf_counter() - start < 5, label
            assert "the secret" not in r.output
            n += 1
    r = invoke("diff", dest, "--manifest")  # the real manifest still matches
    assert r.exit_code == 0, r.output
    assert os.path.exists(os.path.join(root, "secret.txt"))
    tally("round 2: manifest file lists (CLI)", n)


def test_directory_manifest_names_are_plain_and_unique(gguf_output, tmp_path):
    _, hf = gguf_output
    with open(os.path.join(hf, "gemma-inspect-manifest.json")) as f:
        m = json.load(f)
    first = m["files"][0]["name"]
    bad = [("./" + first), ("a//" + first), (first + "/"), ("/" + first), ("../secret.txt"), ("sub/../" + first),
           ("." ), (""), ("..\\secret.txt")]
    n = 0
    for name in bad:
        mpath = tmp_path / "m.manifest.json"
        mpath.write_text(json.dumps(dict(m, files=m["files"] + [dict(m["files"][0], name=name)])))
        one_error_line(invoke("diff", hf, "--manifest", mpath), str(mpath))
        n += 1
    mpath.write_text(json.dumps(dict(m, files=m["files"] + [m["files"][0]])))
    one_error_line(invoke("diff", hf, "--manifest", mpath), "twice")
    # A listed file that is simply missing from the output is a finding (exit 1), not a refusal.
    mpath.write_text(json.dumps(dict(m, files=m["files"] + [dict(m["files"][0], name="gone.safetensors")])))
    r = invoke("diff", hf, "--manifest", mpath, "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["counts"]["missing_a"] == 1, r.output
    tally("round 2: manifest file lists (CLI)", n + 1, 1)
