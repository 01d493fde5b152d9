"""`parity`'s tokenizer check: each side's NATIVE tokenizer on the same texts, ids compared.

Comparing two SentencePiece models says nothing about what a user of either side gets: transformers tokenizes
with tokenizer.json (whose normalizer and pre-tokenizer may have been built wrong), keras-hub with its own
SentencePiece layer, llama.cpp with its own reading of the GGUF vocabulary. So each side is tokenized by the
library that side's users run:

- an HF directory: transformers' `AutoTokenizer`;
- a Keras preset: keras-hub's tokenizer of the preset (`Tokenizer.from_preset`);
- a gemma_pytorch checkpoint: its SentencePiece model (gemma_pytorch tokenizes with SentencePiece);
- a GGUF: llama.cpp's tokenizer through llama-cpp-python (vocabulary only, special tokens parsed) where it is
  installed; otherwise the SentencePiece model rebuilt from the GGUF vocabulary, and the result says so.

Every side prepends BOS. A text that spells a control token ("<bos>") is compared only between tokenizers that
agree on whether such spellings are read as the token (transformers and llama.cpp do, SentencePiece never does:
the published Gemma checkpoints differ there too); the result lists the texts skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoint import Checkpoint

CONTROL_SPELLINGS = ("<bos>", "<eos>", "<pad>", "<unk>")


@dataclass
class NativeTokenizer:
    name: str  # which library tokenizes, in words
    encode: Callable[[str], list[int]]  # ids with BOS prepended
    reads_control_text: bool  # whether "<bos>" in the text becomes the <bos> token


def _spm_side(ckpt: "Checkpoint", name: str) -> NativeTokenizer:
    tok = ckpt.tokenizer
    assert tok is not None
    return NativeTokenizer(name, lambda text: tok.encode(text), reads_control_text=False)


def _hf_side(ckpt: "Checkpoint") -> NativeTokenizer:
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .tokenizer import run_native

    hf_logging.set_verbosity_error()
    try:  # AutoTokenizer reads config.json too, more strictly than our reader in places (1e9 for an int)
        config = AutoConfig.from_pretrained(ckpt.source)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        msg = " ".join(str(e).split())[:200]
        raise InputError(os.path.join(ckpt.source, "config.json"), f"transformers cannot load this checkpoint's "
                         f"config, so neither its tokenizer ({e.__class__.__name__}{': ' + msg if msg else ''})") \
            from None
    # The config read above is handed over, so that AutoTokenizer does not read config.json a second time.
    tok = run_native(ckpt.source, "transformers' AutoTokenizer cannot load its tokenizer",
                     AutoTokenizer.from_pretrained, ckpt.source, config=config)
    bos = tok.bos_token_id
    # The Rust tokenizers panic on some files (a catastrophic normalizer regex): one line naming the file
    where = (ckpt.tokenizer.json_path if ckpt.tokenizer is not None else None) or ckpt.source

    def encode(text: str) -> list[int]:
        ids = [int(i) for i in run_native(where, "the tokenizers library failed on this tokenizer.json", tok,
                                          text)["input_ids"]]
        # Gemma's tokenizer_config adds BOS; one that does not is compared as if it did (parity feeds BOS).
        return ids if ids[:1] == [bos] or bos is None else [int(bos)] + ids

    return NativeTokenizer(f"transformers AutoTokenizer ({type(tok).__name__})", encode, reads_control_text=True)


def _keras_side(ckpt: "Checkpoint") -> NativeTokenizer:
    import os

    from .quiet import native_stderr_silenced

    # keras picks its backend on first import, for the whole run: the keras runtime's (torch) unless the user chose
    os.environ.setdefault("KERAS_BACKEND", "torch")
    with native_stderr_silenced():
        import keras_hub

        try:
            tok = keras_hub.tokenizers.Tokenizer.from_preset(ckpt.source)
        except Exception as e:  # keras-hub raises ValueError/OSError/... for a preset it cannot load
            raise InputError(ckpt.source, f"keras-hub cannot load the preset's tokenizer "
                                          f"({e.__class__.__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})"
                             ) from None
    bos = int(tok.token_to_id(tok.start_token)) if getattr(tok, "start_token", None) else None
    # keras-hub's tokenizer adds neither; its preprocessor adds EOS where the model's inputs end in it (EmbeddingGemma)
    eos = int(tok.token_to_id(tok.end_token)) if getattr(tok, "end_token", None) and ckpt.tokenizer is not None \
        and ckpt.tokenizer.adds_eos else None

    def encode(text: str) -> list[int]:
        out = tok(text)
        ids = [int(i) for i in (out.tolist() if hasattr(out, "tolist") else list(out))]
        ids = ids if bos is None or ids[:1] == [bos] else [bos] + ids
        return ids if eos is None or ids[-1:] == [eos] else ids + [eos]

    return NativeTokenizer(f"keras-hub {type(tok).__name__}", encode, reads_control_text=False)


def _gguf_side(ckpt: "Checkpoint") -> NativeTokenizer:
    try:
        import llama_cpp
    except ImportError:
        return _spm_side(ckpt, "SentencePiece model rebuilt from the GGUF vocabulary (stand-in for llama.cpp: "
                               "llama-cpp-python is not installed)")
    from .quiet import native_stderr_silenced

    try:
        with native_stderr_silenced():
            llm = llama_cpp.Llama(model_path=ckpt.source, vocab_only=True, verbose=False)
    except Exception as e:  # llama.cpp refuses the file: that is a finding about the GGUF
        raise InputError(ckpt.source, f"llama.cpp cannot load this GGUF's vocabulary ({str(e)[:100]})") from None
    bos = int(llm.token_bos())

    def encode(text: str) -> list[int]:
        with native_stderr_silenced():  # llama.cpp warns on stderr of a text that starts with "<bos>" (two BOS)
            ids = [int(i) for i in llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)]
        return ids if ids[:1] == [bos] else [bos] + ids

    return NativeTokenizer(f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", encode, reads_control_text=True)


def native_tokenizer(ckpt: "Checkpoint") -> NativeTokenizer | None:
    """The tokenizer the users of `ckpt`'s format run, or None when the checkpoint has none."""
    if ckpt.tokenizer is None:
        return None
    if ckpt.format == "hf" and os.path.isdir(ckpt.source):
        return _hf_side(ckpt)
    if ckpt.format == "keras" and os.path.isdir(ckpt.source) and ckpt.tokenizer.has_spm:
        return _keras_side(ckpt)
    if ckpt.format == "gguf":
        return _gguf_side(ckpt)
    return _spm_side(ckpt, "SentencePiece")


def tokenizer_parity(a: "Checkpoint", b: "Checkpoint") -> dict[str, Any] | None:
    """Ids of the fixed PARITY_TEXTS under each side's native tokenizer (None unless both sides have one)."""
    from .tokenizer import PARITY_TEXTS

    ta, tb = native_tokenizer(a), native_tokenizer(b)
    if ta is None or tb is None:
        return None
    assert a.tokenizer is not None and b.tokenizer is not None
    mismatches, skipped = [], []
    for text in PARITY_TEXTS:
        if ta.reads_control_text != tb.reads_control_text and any(c in text for c in CONTROL_SPELLINGS):
            skipped.append(text)
            continue
        ia, ib = ta.encode(text), tb.encode(text)
        if ia != ib:
            first = next((k for k, (x, y) in enumerate(zip(ia, ib)) if x != y), min(len(ia), len(ib)))
            mismatches.append({"text": text, "a": ia, "b": ib, "first_difference": first})
    sa, sb = a.tokenizer.special_ids(), b.tokenizer.special_ids()
    special = [{"token": t, "a": sa[t], "b": sb[t]} for t in sa if sa[t] != sb[t]]
    return {"passed": not mismatches and not special and a.tokenizer.vocab_size == b.tokenizer.vocab_size,
            "texts": len(PARITY_TEXTS) - len(skipped), "mismatches": mismatches, "special_token_mismatches": special,
            "vocab_size": {"a": a.tokenizer.vocab_size, "b": b.tokenizer.vocab_size},
            "native": {"a": ta.name, "b": tb.name},
            "skipped": [{"text": t, "why": "spells a control token, which only one side's tokenizer reads as the "
                                          "token"} for t in skipped]}
