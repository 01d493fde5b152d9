"""Tokenizer fidelity on a SentencePiece model with the real property that Gemma's own lacks: trained with spm_train's
defaults (unigram, `add_dummy_prefix: true`, the `nmt_nfkc` normalizer with its precompiled charsmap, extra
whitespace removed), as a fine-tune with its own tokenizer has. After a conversion, transformers' AutoTokenizer,
SentencePiece and keras-hub must give identical ids; and `parity` runs each side's own tokenizer, so a
tokenizer.json that tokenizes differently fails it, naming the text."""

from __future__ import annotations

import io
import json
import os

import pytest
from click.testing import CliRunner
from conftest import FAMILIES

from gemma_inspect.cli import main
from gemma_inspect.convert import convert
from gemma_inspect.formats import load
from gemma_inspect.tiny import CORPUS, random_weights, tiny_spec, write_keras
from gemma_inspect.tokenizer import Tokenizer, spm_from_tokenizer_json, spm_pieces

TEXTS = ("Hello world", "  leading and trailing  spaces  ", "ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ ½ and ﬁ ligature",
         "tabs\tand\nnewlines\n", "<start_of_turn>user\nWhat is Gemma?<end_of_turn>")


@pytest.fixture(scope="session")
def default_spm(tmp_path_factory: pytest.TempPathFactory) -> str:
    """spm_train with its defaults; only Gemma's special ids and turn markers are set."""
    import sentencepiece as spm

    buf = io.BytesIO()
    lines = [line for line in CORPUS.splitlines() if line.strip()] * 4
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=384, hard_vocab_limit=False,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], minloglevel=2, num_threads=1)
    path = str(tmp_path_factory.mktemp("default-spm") / "tokenizer.model")
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


@pytest.fixture(scope="session")
def keras_with_default_spm(default_spm: str, tmp_path_factory: pytest.TempPathFactory):
    built: dict[str, str] = {}
    n = spm_pieces(open(default_spm, "rb").read())["pieces"]

    def get(family: str) -> str:
        if family not in built:
            spec = tiny_spec(family, vocab_size=len(n))
            out = str(tmp_path_factory.mktemp(f"keras-default-spm-{family}"))
            built[family] = write_keras(spec, random_weights(spec, 0), out, default_spm)
        return built[family]

    return get


def test_the_fixture_has_the_real_property(default_spm):
    info = spm_pieces(open(default_spm, "rb").read())
    assert info["add_dummy_prefix"] is True and info["remove_extra_whitespaces"] is True
    assert info["model_type"] == "unigram"
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(open(default_spm, "rb").read())
    assert proto.normalizer_spec.name == "nmt_nfkc" and len(proto.normalizer_spec.precompiled_charsmap) > 1000


@pytest.mark.parametrize("family", FAMILIES)
def test_convert_to_hf_keeps_the_dummy_prefix_and_normalizer(keras_with_default_spm, default_spm, tmp_path, family):
    """AutoTokenizer on the converted directory, SentencePiece and keras-hub: identical ids on every text."""
    import keras_hub
    import sentencepiece as spm
    from transformers import AutoTokenizer

    src = keras_with_default_spm(family)
    dest = str(tmp_path / "hf")
    convert(src, dest, "hf")
    auto = AutoTokenizer.from_pretrained(dest)
    sp = spm.SentencePieceProcessor(model_file=default_spm)
    kt = keras_hub.tokenizers.Tokenizer.from_preset(src)
    for text in TEXTS:
        want = [2] + sp.EncodeAsIds(text)
        assert list(auto(text)["input_ids"]) == want, text
        assert [2] + [int(i) for i in kt(text).tolist()] == want, text
    assert sp.IdToPiece(list(auto("Hello world")["input_ids"])[1]).startswith("\u2581")  # the dummy prefix
    r = CliRunner().invoke(main, ["parity", src, dest, "--runtime-a", "transformers", "--runtime-b", "transformers",
                                  "--json"])
    assert r.exit_code == 0, r.output[-3000:]
    tok = json.loads(r.stdout)["tokenizer"]
    assert tok["passed"] is True and tok["native"]["a"].startswith("keras-hub")
    assert tok["native"]["b"].startswith("transformers AutoTokenizer")


def test_sentencepiece_rebuilt_from_tokenizer_json_keeps_the_normalizer(keras_with_default_spm, default_spm,
                                                                        tmp_path):
    """The other direction: tokenizer.json alone (no tokenizer.model) -> a SentencePiece model with the same
    normalizer spec (charsmap, dummy prefix, whitespace removal) and the same ids."""
    import sentencepiece as spm

    dest = str(tmp_path / "hf")
    convert(keras_with_default_spm("gemma2"), dest, "hf")
    rebuilt = spm_from_tokenizer_json(Tokenizer(source=dest, json_path=os.path.join(dest, "tokenizer.json")))
    assert rebuilt is not None
    info, orig = spm_pieces(rebuilt), spm_pieces(open(default_spm, "rb").read())
    for key in ("pieces", "types", "model_type", "add_dummy_prefix", "remove_extra_whitespaces", "unk_id"):
        assert info[key] == orig[key], key
    a, b = spm.SentencePieceProcessor(model_proto=rebuilt), spm.SentencePieceProcessor(model_file=default_spm)
    for text in TEXTS:
        assert a.EncodeAsIds(text) == b.EncodeAsIds(text), text


def test_parity_fails_when_a_sides_own_tokenizer_differs(keras_with_default_spm, tmp_path):
    """The bug this replaced: Gemma's hard-coded pipeline (the GemmaTokenizer class rebuilds it whatever
    tokenizer.json says) drops the dummy prefix. Both SentencePiece models are the same, so only running each
    side's own tokenizer sees it; parity exits 1 and names the texts."""
    src = keras_with_default_spm("gemma3")
    dest = str(tmp_path / "hf")
    convert(src, dest, "hf")
    cfg_path = os.path.join(dest, "tokenizer_config.json")
    cfg = json.load(open(cfg_path))
    cfg["tokenizer_class"] = "GemmaTokenizer"
    json.dump(cfg, open(cfg_path, "w"))
    r = CliRunner().invoke(main, ["parity", src, dest, "--runtime-a", "transformers", "--runtime-b", "transformers",
                                  "--json"])
    assert r.exit_code == 1, r.output[-3000:]
    out = json.loads(r.stdout)
    tok = out["tokenizer"]
    assert out["passed"] is False and out["first_divergent_layer"] is None and tok["passed"] is False
    assert "Hello, world!" in [m["text"] for m in tok["mismatches"]]
    r = CliRunner().invoke(main, ["parity", src, dest, "--runtime-a", "transformers", "--runtime-b", "transformers"])
    assert r.exit_code == 1 and "'Hello, world!': first difference at id #1" in r.output
    assert "FAIL: the tokenizers differ" in r.output
