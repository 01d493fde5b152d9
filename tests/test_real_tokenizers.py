"""Real-artifact tier, tokenizers: a SentencePiece model from a real release (Mistral's v3 instruct tokenizer, shipped
in the mistral-common wheel; tests/real_artifacts.py). It has what Gemma's own model lacks and fine-tunes bring:
`add_dummy_prefix: true`; and real user-defined and control pieces. The tokenizer.json this project writes from it must
tokenize as SentencePiece does under transformers' AutoTokenizer, and the SentencePiece model rebuilt from that
tokenizer.json must be the same model."""

from __future__ import annotations

import pytest

from gemma_inspect.tokenizer import find_tokenizer, spm_from_tokenizer_json, spm_pieces, write_hf_fast_tokenizer

TEXTS = (
    "Hello world",
    " Hello world",
    "  two leading spaces, two trailing  ",
    "What is the capital of France?",
    "tabs\tand\nnewlines\n\n and a tab\t",
    "unicode: héllo wörld — ñ, 日本語, emoji 🙂, combining e\u0301",
    "numbers 1234567890 and symbols #$%&*()",
    "def f(x):\n    return x ** 2  # code",
    "",
)


@pytest.fixture(scope="module")
def hf_dir(real_mistral_spm: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("mistral-hf"))
    write_hf_fast_tokenizer(real_mistral_spm, out, has_mask=False)
    return out


def test_the_real_model_has_the_property(real_mistral_spm):
    info = spm_pieces(open(real_mistral_spm, "rb").read())
    assert (len(info["pieces"]), info["model_type"], info["add_dummy_prefix"], info["byte_fallback"]) == \
        (32768, "bpe", True, True)
    assert info["types"].count(4) == 20 and info["types"].count(3) == 750


def test_autotokenizer_on_our_tokenizer_json_equals_sentencepiece(real_mistral_spm, hf_dir):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=real_mistral_spm)
    auto = AutoTokenizer.from_pretrained(hf_dir)
    for text in TEXTS:
        assert list(auto(text)["input_ids"]) == [sp.bos_id()] + sp.EncodeAsIds(text), text
    assert sp.IdToPiece(auto("Hello")["input_ids"][1]).startswith("\u2581")  # the dummy prefix is there
    # [INST] is a control piece: transformers reads its spelling as the token (as Mistral's own tokenizer.json
    # does), SentencePiece never does; every other piece of the text is tokenized alike.
    assert list(auto("[INST] Hi")["input_ids"])[:2] == [1, 3] and sp.PieceToId("[INST]") == 3
    assert auto.decode(auto(" Hello  world")["input_ids"], skip_special_tokens=True) == " Hello  world"


def test_sentencepiece_rebuilt_from_our_tokenizer_json_is_the_same_model(real_mistral_spm, hf_dir):
    import sentencepiece as spm

    tok = find_tokenizer(hf_dir)  # tokenizer.json and tokenizer_config.json (the eos token's name)
    assert tok is not None and not tok.has_spm
    rebuilt = spm_from_tokenizer_json(tok)
    assert rebuilt is not None
    got, want = spm_pieces(rebuilt), spm_pieces(open(real_mistral_spm, "rb").read())
    for key in ("pieces", "model_type", "add_dummy_prefix", "remove_extra_whitespaces", "byte_fallback", "unk_id",
                "bos_id", "eos_id"):
        assert got[key] == want[key], key
    a, b = spm.SentencePieceProcessor(model_proto=rebuilt), spm.SentencePieceProcessor(model_file=real_mistral_spm)
    for text in TEXTS:
        assert a.EncodeAsIds(text) == b.EncodeAsIds(text), text
