"""Tokenizers: where a checkpoint keeps its SentencePiece model / tokenizer.json, and how to use them.

Gemma's tokenizer is a SentencePiece model. HF directories carry it as `tokenizer.model` (plus a
`tokenizer.json` built from it); Keras presets as `assets/tokenizer/vocabulary.spm`, byte-identical.
Ids: pad 0, eos 1, bos 2, unk 3; BOS is always prepended, EOS never appended.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .errors import InputError

SPM_NAMES = ("tokenizer.model", os.path.join("assets", "tokenizer", "vocabulary.spm"))
HF_JSON = "tokenizer.json"
MAX_TOKENIZER_BYTES = 200 * 1024 * 1024

# Texts whose ids must agree between two tokenizers (parity, conversion tests).
PARITY_TEXTS = (
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n",
    "unicode: héllo wörld — ñ, 日本語, emoji 🙂",
    "numbers 1234567890 and symbols #$%&*",
    "<start_of_turn>user\nWhat is Gemma?<end_of_turn>\n<start_of_turn>model\n",
    "<bos>special <eos> tokens <pad> as text",
)


@dataclass
class Tokenizer:
    """A checkpoint's tokenizer files. `spm_path` is the SentencePiece model; `json_path` a HF
    tokenizer.json; `spm_bytes` a model held in memory (e.g. rebuilt from a GGUF vocabulary)."""

    source: str
    spm_path: str | None = None
    json_path: str | None = None
    spm_bytes: bytes | None = None
    extra_files: dict[str, str] = field(default_factory=dict)  # name -> path (tokenizer_config.json, ...)

    @property
    def has_spm(self) -> bool:
        return self.spm_path is not None or self.spm_bytes is not None

    def spm_model_bytes(self) -> bytes:
        if self.spm_bytes is not None:
            return self.spm_bytes
        if self.spm_path is None:
            raise InputError(self.source, "no SentencePiece model")
        size = os.path.getsize(self.spm_path)
        if size > MAX_TOKENIZER_BYTES:
            raise InputError(self.spm_path, f"tokenizer model is {size} bytes, over the limit")
        with open(self.spm_path, "rb") as f:
            return f.read()

    @cached_property
    def _spm(self) -> Any:
        import sentencepiece as spm

        proc = spm.SentencePieceProcessor()
        try:
            proc.LoadFromSerializedProto(self.spm_model_bytes())
        except Exception as e:  # sentencepiece raises RuntimeError/OSError for corrupt protos
            raise InputError(self.spm_path or self.source,
                             f"not a valid SentencePiece model ({str(e).splitlines()[0][:80]})") from None
        return proc

    @cached_property
    def _hf(self) -> Any:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return HFTokenizer.from_file(self.json_path)
        except Exception as e:
            raise InputError(self.json_path, f"not a valid tokenizer.json ({str(e).splitlines()[0][:80]})") from None

    @property
    def backend(self) -> str:
        return "sentencepiece" if self.has_spm else "tokenizers"

    @property
    def vocab_size(self) -> int:
        if self.has_spm:
            return int(self._spm.GetPieceSize())
        return int(self._hf.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        if self.has_spm:
            i = self._spm.PieceToId(token)
            return None if (i == self._spm.unk_id() and token != self._spm.IdToPiece(i)) else int(i)
        return self._hf.token_to_id(token)

    def id_to_token(self, i: int) -> str:
        if self.has_spm:
            return self._spm.IdToPiece(int(i))
        return self._hf.id_to_token(int(i))

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text` with BOS prepended (Gemma never appends EOS). Control tokens such as
        `<start_of_turn>` are user-defined symbols in Gemma's model, so they come out as single ids."""
        if self.has_spm:
            ids = [int(i) for i in self._spm.EncodeAsIds(text)]
            bos = int(self._spm.bos_id())
        else:
            ids = list(self._hf.encode(text, add_special_tokens=False).ids)
            bos = self._hf.token_to_id("<bos>")
        return ([bos] if add_bos and bos is not None and bos >= 0 else []) + ids

    def special_ids(self) -> dict[str, int | None]:
        return {t: self.token_to_id(t) for t in ("<pad>", "<eos>", "<bos>", "<unk>",
                                                 "<start_of_turn>", "<end_of_turn>")}


def find_tokenizer(directory: str, hf_json: bool = True) -> Tokenizer | None:
    """The tokenizer files of an HF directory or a Keras preset, or None when there are none.
    A Keras preset's `tokenizer.json` is a Keras layer config, not a HF tokenizer: pass hf_json=False."""
    spm = next((os.path.join(directory, n) for n in SPM_NAMES if os.path.isfile(os.path.join(directory, n))),
               None)
    js = os.path.join(directory, HF_JSON)
    js = js if hf_json and os.path.isfile(js) else None
    if spm is None and js is None:
        return None
    extra = {n: os.path.join(directory, n) for n in ("tokenizer_config.json", "special_tokens_map.json")
             if os.path.isfile(os.path.join(directory, n))}
    return Tokenizer(source=directory, spm_path=spm, json_path=js, extra_files=extra)
