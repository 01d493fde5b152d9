"""Hostile tokenizer files (tokenizer.model, vocabulary.spm, tokenizer.json) and configs (HF config.json, Keras
config.json and metadata.json): every key deleted or set to hostile values, truncations, byte flips,
SentencePiece models with inconsistent vocabularies. Tokenizer variants are used as convert uses them (the
GGUF vocabulary is built from the pieces, HF files are written) and as parity does (encoding)."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil

import pytest

from gemma_inspect.convert import convert

from files import read_bytes

from .conftest import sweep, use_checkpoint
from .variants import Variant, flips, json_variants, tree_variants, truncations

N = 24
_outputs = itertools.count()


def spm_variants(file: str, data: bytes, rng: random.Random, n: int) -> list[Variant]:
    from sentencepiece import sentencepiece_model_pb2 as pb

    base = pb.ModelProto()
    base.ParseFromString(data)
    out = truncations(file, data, rng, n)
    out += flips(file, data, rng, 2 * n)

    def changed(label: str, edit, must_fail: bool = True) -> None:
        m = pb.ModelProto()
        m.CopyFrom(base)
        edit(m)
        out.append(Variant(f"{file}: {label}", file, m.SerializeToString(), must_fail=must_fail))

    unk = next(i for i, p in enumerate(base.pieces) if p.type == 2)
    changed("a piece twice", lambda m: setattr(m.pieces[40], "piece", m.pieces[41].piece))
    changed("an empty piece", lambda m: setattr(m.pieces[40], "piece", ""))
    changed("no unknown piece", lambda m: setattr(m.pieces[unk], "type", 1))
    changed("two unknown pieces", lambda m: setattr(m.pieces[40], "type", 2))
    changed("a NaN score", lambda m: setattr(m.pieces[40], "score", float("nan")), must_fail=False)
    changed("a 1 MB piece", lambda m: setattr(m.pieces[40], "piece", "x" * 2**20), must_fail=False)
    changed("no pieces", lambda m: m.ClearField("pieces"))
    changed("model type CHAR", lambda m: setattr(m.trainer_spec, "model_type", 4), must_fail=False)
    # SentencePiece finds its special pieces by type at run time; these ids are informational.
    changed("unk_id outside the vocabulary", lambda m: setattr(m.trainer_spec, "unk_id", 10**6), must_fail=False)
    changed("bos_id outside the vocabulary", lambda m: setattr(m.trainer_spec, "bos_id", 10**6), must_fail=False)
    changed("no trainer_spec", lambda m: m.ClearField("trainer_spec"))
    changed("no normalizer_spec", lambda m: m.ClearField("normalizer_spec"))
    changed("a garbage precompiled charsmap", lambda m: (setattr(m.normalizer_spec, "name", "custom"), setattr(
        m.normalizer_spec, "precompiled_charsmap", bytes(rng.randrange(256) for _ in range(40)))), must_fail=False)
    changed("unknown normalizer nmt_nfkc_x", lambda m: setattr(m.normalizer_spec, "name", "nmt_nfkc_x"),
            must_fail=False)
    out.append(Variant(f"{file}: JSON text", file, b'{"model": "bpe"}'))
    out.append(Variant(f"{file}: empty", file, b""))
    return out


def use_tokenizer(ckpt) -> None:
    """What parity and convert do with a tokenizer: encode, the GGUF vocabulary, the HF tokenizer files."""
    use_checkpoint(ckpt)
    scratch = os.environ["HOSTILE_SCRATCH"]
    for to, ext in (("gguf", ".gguf"), ("hf", "")):
        dest = os.path.join(scratch, f"out-{next(_outputs)}{ext}")
        convert(ckpt, dest, to)
        shutil.rmtree(dest) if os.path.isdir(dest) else os.remove(dest)


@pytest.fixture
def scratch_env(tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    out.mkdir()
    monkeypatch.setenv("HOSTILE_SCRATCH", str(out))
    return str(tmp_path)


def test_tokenizer_model(tiny_models, copy_dir, scratch_env):
    root = copy_dir(tiny_models.get("gemma2", "hf"), "hf")
    name = "tokenizer.model"
    variants = spm_variants(name, read_bytes(os.path.join(root, name)), random.Random(41), N)
    variants += tree_variants(name, os.path.join(scratch_env, "outside"))[:4]  # missing: no tokenizer
    sweep("tokenizer.model", root, variants, scratch_env, use=use_tokenizer)


def test_vocabulary_spm(tiny_models, copy_dir, scratch_env):
    root = copy_dir(tiny_models.get("gemma3", "keras"), "keras")
    name = os.path.join("assets", "tokenizer", "vocabulary.spm")
    variants = spm_variants(name, read_bytes(os.path.join(root, name)), random.Random(42), N // 2)
    variants += tree_variants(name, os.path.join(scratch_env, "outside"))[:4]
    sweep("vocabulary.spm (keras)", root, variants, scratch_env, use=use_tokenizer)


def test_tokenizer_json(tiny_models, copy_dir, scratch_env):
    """An HF directory whose only tokenizer is tokenizer.json: it is parsed, used, and rebuilt as SentencePiece."""
    root = copy_dir(tiny_models.get("gemma2", "hf"), "hf")
    os.remove(os.path.join(root, "tokenizer.model"))
    name = "tokenizer.json"
    data = read_bytes(os.path.join(root, name))
    rng = random.Random(43)
    variants = json_variants(name, data, rng, N, values_per_key=3, depth=2)
    obj = json.loads(data)

    def changed(label: str, edit) -> None:
        o = json.loads(data)
        edit(o)
        variants.append(Variant(f"{name}: {label}", name, json.dumps(o).encode(), must_fail=False))

    some = list(obj["model"]["vocab"])[50]
    changed("a negative id", lambda o: o["model"]["vocab"].update({some: -5}))
    changed("an id beyond the vocabulary", lambda o: o["model"]["vocab"].update({some: 10**9}))
    changed("two pieces with one id", lambda o: o["model"]["vocab"].update({some: 51}))
    changed("a merge of unknown pieces", lambda o: o["model"]["merges"].insert(0, ["\u2603", "\u2604"]))
    changed("a merge that is a number", lambda o: o["model"]["merges"].insert(0, 7))
    changed("an added token without an id", lambda o: o["added_tokens"][0].pop("id"))
    changed("model type WordPiece", lambda o: o["model"].update(type="WordPiece"))
    variants += tree_variants(name, os.path.join(scratch_env, "outside"))[:4]
    sweep("tokenizer.json", root, variants, scratch_env, use=use_tokenizer)


def test_tokenizer_json_beside_tokenizer_model(tiny_models, copy_dir, scratch_env):
    """With tokenizer.model present, tokenizer.json and tokenizer_config.json are copied by convert: a corrupt one
    is refused rather than copied into the output."""
    root = copy_dir(tiny_models.get("gemma2", "hf"), "hf")
    rng = random.Random(48)
    variants = []
    for name in ("tokenizer.json", "tokenizer_config.json"):
        data = read_bytes(os.path.join(root, name))
        variants += truncations(name, data, rng, N // 3, [1, len(data) // 2])
        variants += tree_variants(name, os.path.join(scratch_env, "outside"))[:4]
    sweep("tokenizer.json + tokenizer.model", root, variants, scratch_env, use=use_tokenizer)


def test_hf_config(tiny_models, copy_dir, tmp_path):
    root = copy_dir(tiny_models.get("gemma3", "hf", tokenizer=False), "hf")
    name = "config.json"
    variants = json_variants(name, read_bytes(os.path.join(root, name)), random.Random(44), N, values_per_key=5)
    variants += tree_variants(name, str(tmp_path / "outside"))
    sweep("config.json (hf)", root, variants, str(tmp_path))


def test_keras_config_and_metadata(tiny_models, copy_dir, tmp_path):
    root = copy_dir(tiny_models.get("gemma2", "keras", tokenizer=False), "keras")
    rng = random.Random(45)
    variants = json_variants("config.json", read_bytes(os.path.join(root, "config.json")), rng, N, values_per_key=5)
    variants += tree_variants("config.json", str(tmp_path / "outside"))
    sweep("config.json (keras)", root, variants, str(tmp_path))
    variants = json_variants("metadata.json", read_bytes(os.path.join(root, "metadata.json")), rng, N // 2,
                             values_per_key=3)
    variants += tree_variants("metadata.json", str(tmp_path / "outside"))[:4]
    sweep("metadata.json (keras)", root, variants, str(tmp_path))


@pytest.mark.slow
def test_larger_config_sweep(tiny_models, copy_dir, tmp_path):
    for family in ("gemma", "gemma2", "gemma3"):
        root = copy_dir(tiny_models.get(family, "hf", tokenizer=False), f"hf-{family}")
        data = read_bytes(os.path.join(root, "config.json"))
        sweep("config.json (hf)", root, json_variants("config.json", data, random.Random(46), 100), str(tmp_path))
        root = copy_dir(tiny_models.get(family, "keras", tokenizer=False), f"keras-{family}")
        data = read_bytes(os.path.join(root, "config.json"))
        sweep("config.json (keras)", root, json_variants("config.json", data, random.Random(47), 100), str(tmp_path))
