"""Session fixtures: tiny real checkpoints of every family, written by transformers and keras-hub themselves
from the same seeded weights, and a tiny SentencePiece tokenizer trained in the session."""

from __future__ import annotations

import os
import shutil
from typing import Callable

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAMILIES = ("gemma", "gemma-mha", "gemma2", "gemma3")


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    from gemma_inspect.tiny import train_tokenizer

    return train_tokenizer(str(tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"))


class TinyModels:
    """Builds (once per session) tiny checkpoints: `get(family, fmt, dtype, tokenizer, seed)` -> path.
    The HF and Keras checkpoints of one (family, dtype, seed) hold identical weights."""

    def __init__(self, root: str, spm: str):
        self.root = root
        self.spm = spm
        self._built: dict[tuple, str] = {}

    def spec(self, family: str, dtype: str = "float32"):
        from gemma_inspect.tiny import tiny_spec

        return tiny_spec(family, dtype=dtype)

    def weights(self, family: str, dtype: str = "float32", seed: int = 0):
        from gemma_inspect.tiny import random_weights

        return random_weights(self.spec(family, dtype), seed)

    def get(self, family: str, fmt: str = "hf", dtype: str = "float32", tokenizer: bool = True,
            seed: int = 0, shard: bool = False) -> str:
        key = (family, fmt, dtype, tokenizer, seed, shard)
        if key not in self._built:
            from gemma_inspect import tiny

            name = f"{fmt}-{family}-{dtype}-s{seed}" + ("-tok" if tokenizer else "") + ("-sharded" if shard else "")
            out = os.path.join(self.root, name)
            if os.path.exists(out):
                shutil.rmtree(out)
            spec = self.spec(family, dtype)
            w = self.weights(family, dtype, seed)
            spm = self.spm if tokenizer else None
            if fmt == "hf":
                tiny.write_hf(spec, w, out, spm, max_shard_size="100KB" if shard else None)
            elif fmt == "keras":
                tiny.write_keras(spec, w, out, spm, max_shard_size=0.0001 if shard else None)
            else:
                raise ValueError(fmt)
            self._built[key] = out
        return self._built[key]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: str) -> TinyModels:
    return TinyModels(str(tmp_path_factory.mktemp("tiny")), tiny_tokenizer)


@pytest.fixture
def copy_dir(tmp_path) -> Callable[[str], str]:
    """A writable copy of a fixture checkpoint (to corrupt or edit in one test)."""

    def _copy(src: str, name: str = "copy") -> str:
        dst = str(tmp_path / name)
        if os.path.isdir(src):
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)
        return dst

    return _copy


@pytest.fixture(scope="session")
def real_gguf_270m() -> str:
    """The public Gemma 3 270M Q4_K_M GGUF written by llama.cpp's converter (tests/real_artifacts.py)."""
    from real_artifacts import gemma3_270m_q4_k_m

    return gemma3_270m_q4_k_m()


@pytest.fixture(scope="session")
def real_embeddinggemma() -> str:
    """Google's EmbeddingGemma-300M sentence-transformers directory, as released (tests/real_artifacts.py)."""
    from real_artifacts import embeddinggemma_300m

    return embeddinggemma_300m()


@pytest.fixture(scope="session")
def real_mistral_spm() -> str:
    """Mistral's real v3 SentencePiece model, shipped in the mistral-common wheel (tests/real_artifacts.py)."""
    from real_artifacts import mistral_sentencepiece

    return mistral_sentencepiece()
