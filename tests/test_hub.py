"""SOURCE as a hub id, hf:// or kaggle:// handle or KerasHub preset name (gemma_inspect/hub.py).

Offline: caches laid out exactly as huggingface_hub and kagglehub lay them out (tests/hubfake.py) and every
command gives, from the id or handle, what it gives from the path. Online: a local server on 127.0.0.1 that
speaks the hub API (HF_ENDPOINT), never the internet; `summary` fetches safetensors headers only (ranges),
`convert` downloads the snapshot through huggingface_hub.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import hubfake
from files import tree_digest
from gemma_inspect.cli import main

REPO = "google/tiny-gemma3"
KAGGLE = "kaggle://keras/tiny-gemma3/keras/tiny_gemma3/2"
PRESET = "gemma3_instruct_1b"  # keras-hub's registry: kaggle://keras/gemma3/keras/gemma3_instruct_1b/3
PRESET_HANDLE = "kaggle://keras/gemma3/keras/gemma3_instruct_1b/3"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def caches(tiny_models, tmp_path_factory):
    """An HF cache holding REPO (main and the tag v1) and a kagglehub cache holding KAGGLE and the
    preset's handle, all with the tiny Gemma 3 weights (HF and Keras checkpoints of the same weights)."""
    root = tmp_path_factory.mktemp("hubcaches")
    hf_dir, keras_dir = tiny_models.get("gemma3", "hf"), tiny_models.get("gemma3", "keras")
    hf_cache, kaggle_cache = str(root / "hf"), str(root / "kaggle")
    snap = hubfake.populate_hf_cache(hf_cache, REPO, hf_dir)
    hubfake.populate_hf_cache(hf_cache, REPO, hf_dir, revision="v1")
    # a second repository of which only config.json is cached, as a headers-only summary leaves it
    hubfake.populate_hf_cache(hf_cache, "google/partial", hf_dir, only=("config.json",))
    kaggle_dir = hubfake.populate_kaggle_cache(kaggle_cache, KAGGLE, keras_dir)
    hubfake.populate_kaggle_cache(kaggle_cache, PRESET_HANDLE, keras_dir)
    return {"hf": hf_cache, "kaggle": kaggle_cache, "snap": snap, "hf_dir": hf_dir, "keras_dir": keras_dir,
            "kaggle_dir": kaggle_dir}


@pytest.fixture
def offline(caches, monkeypatch):
    """huggingface_hub and kagglehub pointed at the caches, offline; kaggle.com replaced by a closed port."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", caches["hf"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("KAGGLEHUB_CACHE", caches["kaggle"])
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")  # http://localhost:80: refused at once
    before = {k: tree_digest(caches[k]) for k in ("hf", "kaggle")}
    yield caches
    # nothing here downloads, so the caches must be exactly as they were
    assert {k: tree_digest(caches[k]) for k in ("hf", "kaggle")} == before


def run(*args: str, code: int = 0):
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == code, (r.output, r.stderr, r.exception)
    return r


def run_json(*args: str, code: int = 0):
    r = run(*args, "--json", code=code)
    return json.loads(r.stdout), r.stderr


def without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def report(r: dict, src: str, dest: str) -> dict:
    """A convert report with its timings left out and the paths it names replaced by SRC and DEST."""
    return json.loads(json.dumps(without(r, "seconds", "stages")).replace(dest, "DEST").replace(src, "SRC"))


def written(dest: str) -> dict:
    """The files convert wrote, less what differs between two runs on the same input: the manifest's "source"
    (the path read) and a Keras metadata.json's "date_saved" (and so that file's hash in the manifest)."""
    files = hubfake.repo_files(dest)
    manifest = without(json.loads(files.pop("gemma-inspect-manifest.json")), "source")
    if "metadata.json" in files:
        files["metadata.json"] = without(json.loads(files["metadata.json"]), "date_saved")
        manifest["files"] = [without(f, manifest["hash"]) if f["name"] == "metadata.json" else f for f in manifest["files"]]
    return {**files, "manifest": manifest}


# ----------------------------------------------------------------------------- offline, from the caches
@pytest.mark.parametrize("source", [REPO, f"hf://{REPO}", f"{REPO}@v1", f"hf://{REPO}@main"])
def test_summary_of_hf_id_is_summary_of_snapshot(offline, source):
    by_path, err = run_json("summary", offline["hf_dir"])
    assert err == ""
    by_id, err = run_json("summary", source)
    rev = "v1" if source.endswith("v1") else "main"
    commit = os.path.basename(offline["snap"])
    assert by_id["hub"] == {"kind": "huggingface", "id": source, "repo_id": REPO, "revision": rev,
                            "path": offline["snap"], "commit": commit, "downloaded": "snapshot"}
    assert by_id["source"] == offline["snap"]
    assert without(by_id, "source", "hub", "tokenizer") == without(by_path, "source", "tokenizer")
    assert by_id["tokenizer"]["backend"] == by_path["tokenizer"]["backend"]
    assert err == (f"source: {source} is the Hugging Face model {REPO} (revision {rev}, commit {commit}), "
                   f"snapshot {offline['snap']}\n")


def test_revision_option(offline):
    by_tag, _ = run_json("summary", REPO, "--revision", "v1")
    assert by_tag["hub"]["revision"] == "v1"
    r = run("summary", f"{REPO}@v1", "--revision", "main", code=2)
    assert r.stderr == f"Error: {REPO}@v1: names revision 'v1' but --revision is 'main'\n"
    r = run("summary", REPO, "--revision", "v2", code=2)
    assert r.stderr == (f"Error: {REPO}: not cached (a snapshot of revision v2 in the Hugging Face cache "
                        f"{offline['hf']}/models--google--tiny-gemma3) and the machine is offline "
                        f"(HF_HUB_OFFLINE=1)\n")


def test_revision_of_a_source_it_cannot_apply_to_is_said(offline):
    """--revision pins Hugging Face ids only: a local path, a card or a Kaggle handle is read as it is, and the
    one stderr line says the option did not apply (never silently ignored)."""
    _, err = run_json("summary", offline["hf_dir"], "--revision", "v1")
    assert err == f"source: --revision v1 applies to Hugging Face hub ids only; {offline['hf_dir']} is a local path\n"
    _, err = run_json("summary", "gemma-2b", "--revision", "v1")
    assert err == "source: --revision v1 applies to Hugging Face hub ids only; gemma-2b is a built-in card\n"
    _, err = run_json("summary", KAGGLE, "--revision", "v1")
    assert err.startswith("source: --revision v1 applies to Hugging Face hub ids only; a Kaggle handle names its "
                          "version in the handle\n")


@pytest.mark.parametrize("source,handle", [(KAGGLE, KAGGLE), (PRESET, PRESET_HANDLE)])
def test_summary_of_kaggle_handle_and_preset(offline, source, handle):
    by_path, _ = run_json("summary", offline["keras_dir"])
    by_handle, err = run_json("summary", source)
    path = os.path.join(offline["kaggle"], "models", *handle.removeprefix("kaggle://").split("/"))
    expected_hub = {"kind": "kaggle", "id": source, "handle": handle, "path": path}
    if source == PRESET:
        expected_hub["preset"] = PRESET
        assert err == f"source: the KerasHub preset {PRESET} = {handle}, from {path}\n"
    else:
        assert err == f"source: the Kaggle model {handle}, from {path}\n"
    assert by_handle["hub"] == expected_hub
    assert without(by_handle, "source", "hub", "tokenizer") == without(by_path, "source", "tokenizer")


def test_every_command_from_ids_equals_from_paths(offline, tmp_path):
    hf_dir, keras_dir = offline["hf_dir"], offline["keras_dir"]
    # compare
    by_paths, _ = run_json("compare", hf_dir, keras_dir)
    by_ids, err = run_json("compare", REPO, KAGGLE)
    assert [without(m, "source", "hub", "tokenizer") for m in by_ids["models"]] == \
        [without(m, "source", "tokenizer") for m in by_paths["models"]]
    assert [m["tokenizer"]["backend"] for m in by_ids["models"]] == [m["tokenizer"]["backend"]
                                                                     for m in by_paths["models"]]
    assert err.count("source: ") == 2
    # diff: the id against its own path is identical; the handle against the id as the paths are
    d, _ = run_json("diff", REPO, hf_dir)
    assert d["identical"] is True and d["tensors"] and all(t["status"] == "equal" for t in d["tensors"])
    d_ids, _ = run_json("diff", REPO, KAGGLE)
    d_paths, _ = run_json("diff", hf_dir, keras_dir)
    assert without(d_ids, "a", "b") == without(d_paths, "a", "b")
    assert (d_ids["a"]["source"], d_ids["b"]["source"]) == (offline["snap"], offline["kaggle_dir"])
    # convert: the same bytes from the id as from the path (DEST stays a local path)
    r_id, _ = run_json("convert", REPO, str(tmp_path / "from-id"), "--to", "keras")
    r_path, _ = run_json("convert", hf_dir, str(tmp_path / "from-path"), "--to", "keras")
    assert written(str(tmp_path / "from-id")) == written(str(tmp_path / "from-path"))
    assert report(r_id, offline["snap"], str(tmp_path / "from-id")) == \
        report(r_path, hf_dir, str(tmp_path / "from-path"))
    r_k, _ = run_json("convert", KAGGLE, str(tmp_path / "from-handle"), "--to", "hf")
    r_kp, _ = run_json("convert", keras_dir, str(tmp_path / "from-kpath"), "--to", "hf")
    assert written(str(tmp_path / "from-handle")) == written(str(tmp_path / "from-kpath"))
    assert report(r_k, offline["kaggle_dir"], str(tmp_path / "from-handle")) == \
        report(r_kp, keras_dir, str(tmp_path / "from-kpath"))
    # parity: the id against the handle, as the paths
    p_ids, _ = run_json("parity", REPO, KAGGLE, "--runtime-a", "reference", "--runtime-b", "reference",
                        "--device", "cpu")
    p_paths, _ = run_json("parity", hf_dir, keras_dir, "--runtime-a", "reference", "--runtime-b", "reference",
                          "--device", "cpu")
    assert p_ids["passed"] is True
    for p in (p_ids, p_paths):  # the float64 oracle's run time is the one figure that differs run to run
        p["tolerance"]["oracle"].pop("seconds")
    assert without(p_ids, "a", "b") == without(p_paths, "a", "b")
    assert p_ids["a"] == {"source": offline["snap"], "runtime": "reference"}
    assert p_ids["b"] == {"source": offline["kaggle_dir"], "runtime": "reference"}
    # verify: transformers loads the snapshot (symlinks into blobs) as it loads the directory
    v_id, _ = run_json("verify", REPO, "--runtime", "transformers", "--device", "cpu")
    v_path, _ = run_json("verify", hf_dir, "--runtime", "transformers", "--device", "cpu")
    assert v_id["passed"] is True
    assert without(v_id, "source") == without(v_path, "source")


def test_uncached_fails_cleanly(offline):
    r = run("summary", "google/gemma-3-270m", code=2)
    assert r.stderr == (f"Error: google/gemma-3-270m: not cached (a snapshot of revision main in the Hugging Face "
                        f"cache {offline['hf']}/models--google--gemma-3-270m) and the machine is offline "
                        f"(HF_HUB_OFFLINE=1)\n")
    r = run("diff", "google/gemma-3-270m", REPO, code=2)
    assert r.stderr.startswith("Error: google/gemma-3-270m: not cached (a snapshot of revision main")
    r = run("convert", "google/partial", "unused-dest", "--to", "keras", code=2)
    snap = os.path.join(offline["hf"], "models--google--partial", "snapshots")
    (commit,) = os.listdir(snap)
    assert r.stderr == (f"Error: google/partial: the Hugging Face cache holds only config.json of revision main "
                        f"({snap}/{commit}), not the weights, and the machine is offline (HF_HUB_OFFLINE=1)\n")
    assert not os.path.exists("unused-dest")
    handle = "kaggle://keras/tiny-gemma3/keras/tiny_gemma3/3"
    r = run("summary", handle, code=2)
    where = os.path.join(offline["kaggle"], "models", "keras", "tiny-gemma3", "keras", "tiny_gemma3", "3")
    assert r.stderr == (f"Error: {handle}: not cached (kagglehub cache {where}) and kaggle.com could not be "
                        f"reached: the machine is offline\n")
    r = run("summary", "kaggle://keras/gemma3", code=2)
    assert r.stderr == ("Error: kaggle://keras/gemma3: not a Kaggle model handle; expected "
                        "kaggle://owner/model/framework/variation[/version]\n")
    r = run("summary", "gemma3_instruct_1bb", code=2)
    assert r.stderr == ("Error: gemma3_instruct_1bb: no such file or directory, card or KerasHub preset; did you "
                        "mean gemma3_instruct_1b or gemma3_instruct_12b or gemma3_instruct_4b?\n")


def test_gguf_file_in_a_hub_repository(offline, tmp_path, monkeypatch):
    """hf://org/name/FILE.gguf downloads (here: finds in the cache) that one file; the bare id says which."""
    gguf_dir = tmp_path / "repo"
    gguf_dir.mkdir()
    run("convert", offline["hf_dir"], str(gguf_dir / "tiny.gguf"), "--to", "gguf", "--no-manifest")
    snap = hubfake.populate_hf_cache(str(tmp_path / "cache"), "ggml-org/tiny-gguf", str(gguf_dir))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    by_path, _ = run_json("summary", str(gguf_dir / "tiny.gguf"))
    by_id, err = run_json("summary", "hf://ggml-org/tiny-gguf/tiny.gguf")
    assert without(by_id, "source", "hub") == without(by_path, "source")
    assert by_id["hub"]["downloaded"] == "file" and by_id["source"] == os.path.join(snap, "tiny.gguf")
    assert err.startswith("source: hf://ggml-org/tiny-gguf/tiny.gguf is the file tiny.gguf of the Hugging Face "
                          "model ggml-org/tiny-gguf (revision main, commit ")
    r = run("convert", "ggml-org/tiny-gguf", str(tmp_path / "out"), "--to", "hf", code=2)
    assert r.stderr == ("Error: ggml-org/tiny-gguf: the hub model holds no safetensors, Keras or .ckpt weights; name "
                        "one of its .gguf files: hf://ggml-org/tiny-gguf/tiny.gguf\n")


def test_local_path_wins_over_hub_id(offline, tiny_models, tmp_path, monkeypatch):
    """A directory ./google/tiny-gemma3 holding a Gemma 2 model is read, not the cached Gemma 3 of that id."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_models.get("gemma2", "hf"), tmp_path / "google" / "tiny-gemma3")
    out, err = run_json("summary", REPO)
    assert out["family"] == "gemma2" and "hub" not in out
    assert err == (f"source: {REPO} is the local path {tmp_path / 'google' / 'tiny-gemma3'} (a local path wins "
                   f"over the hub model of the same name)\n")
    shutil.copytree(offline["keras_dir"], tmp_path / PRESET)
    out, err = run_json("summary", PRESET)
    assert out["source"] == PRESET and "hub" not in out
    assert err.startswith(f"source: {PRESET} is the local path ")


def test_environment_variables_in_a_fresh_process(caches):
    """HF_HUB_CACHE, HF_HUB_OFFLINE and KAGGLEHUB_CACHE as a user sets them (read by the libraries at import)."""
    env = dict(os.environ, HF_HUB_CACHE=caches["hf"], HF_HUB_OFFLINE="1", KAGGLEHUB_CACHE=caches["kaggle"],
               PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "gemma_inspect", "compare", REPO, KAGGLE, "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    models = json.loads(p.stdout)["models"]
    assert [m["hub"]["path"] for m in models] == [caches["snap"], caches["kaggle_dir"]]


# ----------------------------------------------------------------------------- online, against a local hub
def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gemma_inspect", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_summary_reads_headers_only_then_convert_downloads(tiny_models, tmp_path):
    hf_dir = tiny_models.get("gemma3", "hf")
    weights = os.path.getsize(os.path.join(hf_dir, "model.safetensors"))
    cache = str(tmp_path / "hf-cache")
    with hubfake.FakeHub() as hub:
        commit = hub.add(REPO, hf_dir)
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_CACHE=cache, PYTHONPATH=ROOT,
                   HF_HUB_DISABLE_PROGRESS_BARS="1", HF_TOKEN="", HF_HUB_DISABLE_XET="1")
        p = _cli(env, "summary", REPO, "--json")
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        st = [e for e in hub.log if e[1].split("?")[0].endswith("model.safetensors") and e[0] == "GET"]
        # every read of the weights file was a range request, and together they are a fraction of it
        assert st and all(rng and rng.startswith("bytes=") for _m, _p, rng, _n in st)
        assert hub.bytes_sent("model.safetensors") <= 100_001 < weights / 5
        assert not any(e[1].endswith(("tokenizer.model", "tokenizer.json")) for e in hub.log)
        assert out["hub"] == {"kind": "huggingface", "id": REPO, "repo_id": REPO, "revision": "main", "path": None,
                              "commit": commit, "downloaded": "headers"}
        assert p.stderr.endswith(f"source: {REPO} is the Hugging Face model {REPO} (revision main, commit {commit}): "
                                 f"read config.json and 1 safetensors header, not the weights\n")
        by_path = run_json("summary", hf_dir)[0]
        same = ("family", "architecture", "parameters", "dtypes", "size_bytes", "num_tensors", "ignored_tensors")
        assert {k: out[k] for k in same} == {k: by_path[k] for k in same}
        assert out["tokenizer"] is None and out["tensors_read"] is True
        blobs = os.listdir(os.path.join(cache, "models--google--tiny-gemma3", "blobs"))
        assert blobs == [hubfake.etag("config.json", open(os.path.join(hf_dir, "config.json"), "rb").read())]

        # convert downloads the snapshot through huggingface_hub (blobs, symlinks, refs/main) ...
        hub.log.clear()
        dest = str(tmp_path / "keras")
        p = _cli(env, "convert", REPO, dest, "--to", "keras", "--json")
        assert p.returncode == 0, p.stderr
        assert hub.bytes_sent("model.safetensors") == weights
        snap = os.path.join(cache, "models--google--tiny-gemma3", "snapshots", commit)
        assert hubfake.repo_files(snap) == hubfake.repo_files(hf_dir)
        assert os.path.islink(os.path.join(snap, "model.safetensors"))
        ref = open(os.path.join(cache, "models--google--tiny-gemma3", "refs", "main")).read()
        assert ref == commit
        # the layout the offline tests build by hand is the one huggingface_hub itself writes
        hubfake.populate_hf_cache(str(tmp_path / "by-hand"), REPO, hf_dir)
        for part in ("blobs", "snapshots", "refs"):
            assert tree_digest(os.path.join(cache, "models--google--tiny-gemma3", part)) == \
                tree_digest(os.path.join(tmp_path, "by-hand", "models--google--tiny-gemma3", part))
        # ... and writes what converting the directory writes
        assert _cli(env, "convert", hf_dir, str(tmp_path / "keras-path"), "--to", "keras").returncode == 0
        assert written(dest) == written(str(tmp_path / "keras-path"))

        # now cached: summary online reads the snapshot, without touching the weights on the server
        hub.log.clear()
        p = _cli(env, "summary", REPO, "--json")
        assert json.loads(p.stdout)["hub"]["downloaded"] == "snapshot"
        assert hub.bytes_sent("model.safetensors") == 0
    # and offline from the cache it filled
    p = _cli(dict(env, HF_HUB_OFFLINE="1"), "summary", REPO, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["hub"]["path"] == snap


def test_sharded_headers_keras_repo_and_missing_repo(tiny_models, tmp_path):
    sharded = tiny_models.get("gemma3", "hf", shard=True)
    keras_dir = tiny_models.get("gemma3", "keras")
    with hubfake.FakeHub() as hub:
        hub.add("google/tiny-sharded", sharded)
        hub.add("keras/tiny-gemma3", keras_dir)
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(tmp_path / "c"),
                   PYTHONPATH=ROOT, HF_HUB_DISABLE_PROGRESS_BARS="1", HF_TOKEN="", HF_HUB_DISABLE_XET="1")
        p = _cli(env, "summary", "google/tiny-sharded", "--json")
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        by_path = run_json("summary", sharded)[0]
        assert (out["parameters"], out["size_bytes"]) == (by_path["parameters"], by_path["size_bytes"])
        shards = [f for f in os.listdir(sharded) if f.endswith(".safetensors")]
        assert len(shards) > 1 and f"read config.json and {len(shards)} safetensors headers" in p.stderr
        # a KerasHub preset on the hub has no safetensors headers to read: summary downloads its files
        p = _cli(env, "summary", "keras/tiny-gemma3", "--json")
        assert p.returncode == 0, p.stderr
        out, by_path = json.loads(p.stdout), run_json("summary", keras_dir)[0]
        assert out["hub"]["downloaded"] == "snapshot"
        assert without(out, "source", "hub", "tokenizer") == without(by_path, "source", "tokenizer")
        # Gemma's repositories are gated: without an accepted license and a token, the files answer 403
        hub.add("google/gated", sharded)
        hub.gated.add("google/gated")
        p = _cli(env, "summary", "google/gated")
        assert p.returncode == 2
        assert p.stderr.startswith("Error: google/gated: gated on the hub: accept its license on the model page and "
                                   "log in (`hf auth login` or HF_TOKEN) (GatedRepoError: ")
        assert len(p.stderr.splitlines()) == 1
        p = _cli(env, "summary", "google/no-such-model")
        assert p.returncode == 2
        assert p.stderr == (f"Error: google/no-such-model: no such file or directory, nor a model on the hub "
                            f"{hub.url} (or it is private: log in with `hf auth login` or HF_TOKEN)\n")
        p = _cli(env, "summary", "hf://google/no-such-model")
        assert p.stderr == (f"Error: hf://google/no-such-model: no such model on the hub {hub.url} (or it is private: "
                            f"log in with `hf auth login` or HF_TOKEN)\n")


def test_kaggle_handle_and_preset_download_through_kagglehub(tiny_models, tmp_path):
    """kagglehub downloads into its cache (files and completion marker); its log lines stay off stdout."""
    keras_dir = tiny_models.get("gemma3", "keras")
    cache = str(tmp_path / "kagglehub")
    with hubfake.FakeKaggle() as kaggle:
        kaggle.add(KAGGLE, keras_dir)
        kaggle.add(PRESET_HANDLE, keras_dir)
        env = dict(os.environ, KAGGLEHUB_CACHE=cache, KAGGLE_API_ENVIRONMENT="LOCALHOST", FAKE_KAGGLE_URL=kaggle.url,
                   PYTHONPATH=ROOT)
        by_path = run_json("summary", keras_dir)[0]
        for source, handle in ((KAGGLE, KAGGLE), (PRESET, PRESET_HANDLE)):
            p = subprocess.run([sys.executable, "-c", hubfake.KAGGLE_CLI, "summary", source, "--json"],
                               capture_output=True, text=True, env=env, timeout=120)
            assert p.returncode == 0, p.stderr
            out = json.loads(p.stdout)  # nothing but the JSON object on stdout
            path = os.path.join(cache, "models", *handle.removeprefix("kaggle://").split("/"))
            assert out["hub"]["path"] == path and out["source"] == path
            assert without(out, "source", "hub", "tokenizer") == without(by_path, "source", "tokenizer")
            assert hubfake.repo_files(path) == hubfake.repo_files(keras_dir)
            assert os.path.isfile(path + ".complete")
            assert "Downloading" in p.stderr
        methods = [m for m, _ in kaggle.log]
        n = len(hubfake.repo_files(keras_dir))
        assert methods.count("ListModelInstanceVersionFiles") == 2
        assert methods.count("DownloadModelInstanceVersion") == 2 * n
        # cached now: a second run makes no request at all
        kaggle.log.clear()
        p = subprocess.run([sys.executable, "-c", hubfake.KAGGLE_CLI, "summary", PRESET, "--json"],
                           capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 0 and kaggle.log == []


@pytest.mark.slow
def test_preset_registry_is_keras_hubs():
    """The preset names read from keras-hub's files are exactly those keras_hub registers, same handles."""
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    import keras_hub  # noqa: F401  (registers every preset)
    from gemma_inspect.hub import keras_hub_presets

    assert keras_hub_presets() == {k: v["kaggle_handle"] for k, v in BUILTIN_PRESETS.items()}


def test_headers_only_summary_of_a_base_model_reads_as_the_directory_does(tiny_models, tmp_path):
    """A base model (AutoModel.save_pretrained: no `model.` prefix, no LM head) summarised from the hub's headers
    goes through formats/hf.py's own mapping: the same tensors, parameters and `lm_head: none` as its directory."""
    from transformers import AutoModel

    base = str(tmp_path / "base")
    AutoModel.from_pretrained(tiny_models.get("gemma3", tokenizer=False)).save_pretrained(base)
    with hubfake.FakeHub() as hub:
        hub.add(REPO, base)
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(tmp_path / "hf-cache"),
                   PYTHONPATH=ROOT, HF_HUB_DISABLE_PROGRESS_BARS="1", HF_TOKEN="", HF_HUB_DISABLE_XET="1")
        p = _cli(env, "summary", REPO, "--json")
    assert p.returncode == 0, p.stderr
    out, by_path = json.loads(p.stdout), run_json("summary", base)[0]
    assert out["hub"]["downloaded"] == "headers" and out["lm_head"] == by_path["lm_head"] == "none"
    same = ("family", "architecture", "parameters", "dtypes", "num_tensors", "ignored_tensors")
    assert {k: out[k] for k in same} == {k: by_path[k] for k in same}
