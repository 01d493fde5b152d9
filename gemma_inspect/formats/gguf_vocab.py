"""The vocabulary a GGUF embeds (tokenizer.ggml.*), both ways: rebuilt as a SentencePiece model on first use when
reading, written from the source's SentencePiece model when writing, as llama.cpp's converter writes it."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import InputError, UnsupportedError
from ..tokenizer import Tokenizer
from .gguf_header import Header, Meta, StringArray

if TYPE_CHECKING:  # pragma: no cover
    from ..checkpoint import Checkpoint
    from ..spec import GemmaSpec


class _EmbeddedTokenizer(Tokenizer):
    """The GGUF's vocabulary as a SentencePiece model, built on first use (a 262k vocabulary takes a
    noticeable fraction of a second, which `summary` should not pay)."""

    _builder: Callable[[], tuple[bytes, tuple[list[str], Any, Any]]] | None = None
    _built: bytes | None = None
    _table: tuple[list[str], Any, Any] | None = None

    @property  # type: ignore[override]
    def spm_bytes(self) -> bytes | None:
        if self._built is None and self._builder is not None:
            self._built, self._table = self._builder()
        return self._built

    def piece_table(self) -> tuple[list[str], Any, Any] | None:
        self.spm_bytes  # noqa: B018 - built (and checked) first
        return self._table

    @spm_bytes.setter
    def spm_bytes(self, value: bytes | None) -> None:
        self._built, self._table = value, None

    @property
    def has_spm(self) -> bool:
        return self._builder is not None or self._built is not None

    @cached_property
    def _spm(self) -> Any:
        self.spm_bytes  # noqa: B018 - build first, so that a bad vocabulary is reported as itself
        return Tokenizer._spm.func(self)  # type: ignore[attr-defined]

    @cached_property
    def _ids(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.piece_table()[0])}  # type: ignore[index]

    def token_to_id(self, token: str) -> int | None:
        """Looked up in the pieces (distinct, checked as the model was built), as SentencePiece's PieceToId looks it
        up, without loading SentencePiece for it (a second for 262k pieces)."""
        return self._ids.get(token)


# How llama.cpp's converter (convert_hf_to_gguf.py, _create_vocab_sentencepiece) writes a SentencePiece vocabulary:
# the model's own piece types (normal 1, unknown 2, control 3, user-defined 4, unused 5, byte 6), then every token
# of tokenizer_config.json's added_tokens_decoder retyped: CONTROL when it is marked special (Gemma's <unk>,
# <mask>, <start_of_turn>, <unusedN>, ... all are), USER_DEFINED otherwise with U+2581 written back as a space
# ("\n\n", "  ", "<table>"), score -1000. tokenizer.ggml.unknown_token_id names the unknown token. Rebuilding the
# SentencePiece model undoes that: the unknown token is the one the metadata names; a CONTROL token other than
# bos/eos/pad was a piece SentencePiece matches whole in text (user-defined: Gemma's own model types them so, and
# llama.cpp, parsing special tokens, and transformers match them whole too); user-defined pieces get U+2581 back.
_SPACE_PIECE = "\u2581"


def sentencepiece_types(tokens: Any, types: np.ndarray, unk: int, special: list[int], notes: list[str]) -> np.ndarray:
    types = types.copy()
    retyped = []
    if types[unk] != 2:
        retyped.append(f"the unknown token (id {unk}, tokenizer.ggml.unknown_token_id) is typed {int(types[unk])}")
    others = np.flatnonzero(types == 2)
    types[others[others != unk]] = 3
    types[unk] = 2
    control = np.flatnonzero(types == 3)
    added = control[~np.isin(control, special)]
    if len(added):
        types[added] = 4
        retyped.append(f"{len(added)} control tokens besides bos/eos/pad (e.g. {tokens[int(added[0])]!r}) become "
                       f"user-defined pieces, matched whole in text as llama.cpp and transformers match them")
    if retyped:
        notes.append("vocabulary read as llama.cpp's converter writes it: " + "; ".join(retyped))
    return types


def sentencepiece_pieces(tokens: Any, types: np.ndarray) -> list[str]:
    """The pieces, with U+2581 back in user-defined ones (llama.cpp's converter writes it as a space)."""
    pieces = list(tokens)
    for i in np.flatnonzero(types == 4).tolist():
        if " " in pieces[i]:
            pieces[i] = pieces[i].replace(" ", _SPACE_PIECE)
    return pieces


def embedded_tokenizer(header: Header, path: str, spec: GemmaSpec, notes: list[str]) -> Tokenizer | None:
    import gguf

    K = gguf.Keys.Tokenizer
    md = header.metadata
    model = md.get(K.MODEL)
    tokens = md.get(K.LIST)
    if model is None and tokens is None:
        notes.append("no tokenizer metadata in this GGUF (llama.cpp refuses to load such a file)")
        return None
    if model not in ("llama", "gemma4"):
        notes.append(f"the embedded tokenizer is tokenizer.ggml.model={model!r}, not SentencePiece ('llama') or "
                     f"Gemma 4's BPE ('gemma4'): it is not converted")
        return None
    if not isinstance(tokens, StringArray) or not len(tokens):
        raise InputError(path, f"metadata {K.LIST!r} must be a non-empty array of strings")
    n = len(tokens)
    scores = md.get(K.SCORES)
    if model == "gemma4":  # BPE ranked by merges (the stored scores are all -1000): scores from the merge ranks
        scores = merge_scores(tokens, md.get(K.MERGES), path)
    types = md.get(K.TOKEN_TYPE)
    for key, arr in ((K.SCORES, scores), (K.TOKEN_TYPE, types)):
        if arr is not None and (not isinstance(arr, np.ndarray) or arr.shape != (n,)):
            raise InputError(path, f"metadata {key!r} must be an array of {n} numbers, one per token")
    if scores is None:
        notes.append("the vocabulary has no scores: merges of the rebuilt SentencePiece model follow id order")
        scores = -np.arange(n, dtype=np.float32)
    meta = Meta(header, path, "")
    types = None if types is None else np.asarray(types, dtype=np.int32)
    typed_unknown = [] if types is None else np.flatnonzero(types == 2).tolist()
    unk = meta.integer(K.UNK_ID, typed_unknown[0] if len(typed_unknown) == 1 else (3 if n > 3 else 0), positive=False)
    if not 0 <= unk < n:
        raise InputError(path, f"metadata {K.UNK_ID!r} is {unk}, outside the {n}-token vocabulary")
    special = [i for i in (spec.bos_token_id, spec.eos_token_id, spec.pad_token_id) if 0 <= i < n]
    if types is None:
        types = np.full(n, 1, dtype=np.int32)
        types[special] = 3
        types[unk] = 2
    else:
        types = sentencepiece_types(tokens, types, unk, special, notes)
    if model == "gemma4":
        # a piece of several characters that no merge produces is reachable only whole: an added token of the
        # tokenizer.json (Gemma's <start_of_turn>, ...), which the converter types NORMAL unless it is special
        whole = [i for i in np.flatnonzero(types == 1).tolist() if scores[i] == 0.0 and len(tokens[i]) > 1]
        if whole:
            types[whole] = 4
            notes.append(f"{len(whole)} tokens no merge produces (e.g. {tokens[whole[0]]!r}) are read as "
                         f"user-defined pieces, matched whole in text as the tokenizer.json they came from matches "
                         f"them")
    add_prefix = meta.flag(K.ADD_PREFIX, True)
    if K.ADD_PREFIX not in md:
        notes.append("tokenizer.ggml.add_space_prefix is absent: llama.cpp's default (true) is used")
    remove_ws = meta.flag(K.REMOVE_EXTRA_WS, False)
    if n != spec.vocab_size:
        notes.append(f"the vocabulary has {n} tokens for {spec.vocab_size} embedding rows")
    ids = (spec.bos_token_id, spec.eos_token_id, spec.pad_token_id)

    def build() -> tuple[bytes, tuple[list[str], Any, Any]]:
        from ..tokenizer import spm_from_pieces

        pieces = sentencepiece_pieces(tokens, types)
        try:
            # Gemma's SentencePiece model is BPE; GGUF keeps pieces, scores and types but not the model type.
            return spm_from_pieces(pieces, scores.tolist(), types.tolist(), model_type="bpe",
                                   add_dummy_prefix=add_prefix, remove_extra_whitespaces=remove_ws,
                                   bos_id=ids[0], eos_id=ids[1], pad_id=ids[2]), (pieces, scores, types)
        except ValueError as e:
            raise InputError(path, f"the embedded vocabulary cannot be rebuilt as a SentencePiece model: {e}") from None

    tok = _EmbeddedTokenizer(source=path, add_eos=meta.flag(K.ADD_EOS, False))
    tok._builder = build
    return tok


def merge_scores(tokens: Any, merges: Any, path: str) -> np.ndarray:
    """SentencePiece scores that merge in the order of a BPE merge list (tokenizer.ggml.merges, "left right"): minus
    one more than the rank of the first merge producing a piece, 0 for a piece no merge produces (SentencePiece merges
    the highest-scoring pair first: rank 0 first)."""
    if not isinstance(merges, StringArray):
        raise InputError(path, "metadata 'tokenizer.ggml.merges' must be an array of strings (llama.cpp's gemma4 "
                               "tokenizer requires it)")
    first: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, sep, right = merge.partition(" ")
        if not sep:
            raise InputError(path, f"tokenizer.ggml.merges[{rank}] is {merge!r}, not two pieces separated by a space")
        first.setdefault(left + right, rank)
    return np.array([-float(first[t] + 1) if t in first else 0.0 for t in tokens], dtype=np.float32)


# Gemma 4's tokens llama.cpp's converter always types USER_DEFINED (rendered, so that its chat parser reads them)
GEMMA4_VISIBLE = frozenset({"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                            "<tool_response|>", '<|"|>'})


def add_tokenizer_gemma4(w: Any, ckpt: Checkpoint, notes: list[str]) -> None:
    """tokenizer.ggml.* as llama.cpp's converter writes Gemma 4's (Gemma4Model.set_vocab): model "gemma4", the
    tokenizer.json's tokens in id order with gguf's LlamaHfVocab's scores and types (byte tokens BYTE, the
    tokenizer's special ids CONTROL, the others NORMAL; the chat parser's tokens USER_DEFINED), its merges and
    special ids by gguf's SpecialVocab, no space prefix, <bos> added. A source without a tokenizer.json (a
    SentencePiece model only) is written as SentencePiece ('llama'), which llama.cpp reads as well."""
    from pathlib import Path

    import gguf

    tok = ckpt.tokenizer
    if ckpt.format == "gguf" and _copy_gemma4_vocab(w, ckpt.source, ckpt.spec.vocab_size):
        return
    if tok is None or tok.json_path is None:
        if tok is not None:
            notes.append("the source tokenizer has no tokenizer.json: its SentencePiece model is written "
                         "(tokenizer.ggml.model 'llama') instead of Gemma 4's BPE ('gemma4')")
        add_tokenizer(w, ckpt, notes)
        return
    where = Path(tok.json_path).parent
    try:
        vocab = gguf.LlamaHfVocab(where)
    except (FileNotFoundError, TypeError, ValueError, KeyError) as e:
        raise UnsupportedError(f"{tok.json_path}: not a byte-fallback BPE tokenizer.json as Gemma 4's ({e})") from None
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(gguf.TokenType.USER_DEFINED if text.decode("utf-8", "replace") in GEMMA4_VISIBLE else kind)
    spec = ckpt.spec
    if len(tokens) > spec.vocab_size:
        raise UnsupportedError(f"the tokenizer has {len(tokens)} tokens but the embedding only {spec.vocab_size} "
                               f"rows: llama.cpp cannot load such a GGUF")
    if len(tokens) < spec.vocab_size:  # llama.cpp's converter cuts the embedding instead; we keep every row
        extra = spec.vocab_size - len(tokens)
        tokens += [f"[PAD{i}]".encode() for i in range(len(tokens), spec.vocab_size)]
        scores += [-1000.0] * extra
        types += [gguf.TokenType.UNUSED] * extra
        notes.append(f"the vocabulary has {len(tokens) - extra} tokens for {spec.vocab_size} embedding rows: "
                     f"{extra} unused [PAD] tokens added")
    w.add_tokenizer_model("gemma4")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    special = gguf.SpecialVocab(where, load_merges=True)
    special.add_special_token["bos"] = True  # the converter adds <bos> whatever tokenizer_config.json says
    special.add_to_gguf(w, quiet=True)
    w.add_add_space_prefix(False)


def _copy_gemma4_vocab(w: Any, source: str, rows: int) -> bool:
    """GGUF -> GGUF: a source's 'gemma4' vocabulary written again as it is (tokens, scores, types, merges, special
    ids and flags, chat template); False when the source holds another (or none)."""
    import gguf

    from .gguf_header import read_header

    K = gguf.Keys.Tokenizer
    md = read_header(source).metadata
    if md.get(K.MODEL) != "gemma4" or len(md.get(K.LIST) or ()) != rows:
        return False
    w.add_tokenizer_model("gemma4")
    w.add_token_list(list(md[K.LIST]))
    for key, add in ((K.SCORES, w.add_token_scores), (K.TOKEN_TYPE, w.add_token_types)):
        if key in md:
            add(np.asarray(md[key]).tolist())
    if K.MERGES in md:
        w.add_token_merges(list(md[K.MERGES]))
    for key, add in ((K.BOS_ID, w.add_bos_token_id), (K.EOS_ID, w.add_eos_token_id), (K.UNK_ID, w.add_unk_token_id),
                     (K.PAD_ID, w.add_pad_token_id), (K.MASK_ID, w.add_mask_token_id), (K.EOT_ID, w.add_eot_token_id),
                     (K.ADD_BOS, w.add_add_bos_token), (K.ADD_EOS, w.add_add_eos_token),
                     (K.ADD_SEP, w.add_add_sep_token),
                     (K.ADD_PREFIX, w.add_add_space_prefix), (K.CHAT_TEMPLATE, w.add_chat_template)):
        if key in md:
            add(md[key] if isinstance(md[key], str) else md[key].item() if hasattr(md[key], "item") else md[key])
    return True


def add_tokenizer(w: Any, ckpt: Checkpoint, notes: list[str]) -> None:
    """tokenizer.ggml.* from the source's SentencePiece model: pieces, scores and types as they are (llama.cpp's
    SentencePiece tokenizer works from exactly these), padded with unused tokens up to the embedding rows."""
    import gguf

    from ..tokenizer import PIECE_UNUSED, PIECE_USER_DEFINED, spm_pieces

    spec = ckpt.spec
    tok = ckpt.tokenizer
    if tok is None:
        notes.append("the source has no tokenizer: the GGUF has no tokenizer metadata, and llama.cpp will refuse "
                     "to load it (it needs tokenizer.ggml.model, tokens, scores and token types)")
        return
    model_bytes, rebuilt = tok.spm_or_rebuilt()
    if rebuilt:
        notes.append("rebuilt the SentencePiece vocabulary from tokenizer.json (ids checked equal on the "
                     "parity texts)")
    if model_bytes is None:
        notes.append("the source tokenizer has no SentencePiece model and none could be rebuilt from "
                     "tokenizer.json: the GGUF has no tokenizer metadata, and llama.cpp will refuse to load it")
        return
    try:
        info = spm_pieces(model_bytes)
    except ValueError as e:
        raise InputError(tok.spm_path or tok.source, str(e)) from None
    pieces, scores, types = info["pieces"], info["scores"], info["types"]
    if len(set(pieces)) != len(pieces):  # SentencePiece refuses such a model; llama.cpp would look pieces up wrong
        raise InputError(tok.spm_path or tok.source, "not a valid SentencePiece model (a piece appears twice)")
    # ids looked up in the pieces, as SentencePiece looks them up (loading it for that takes a second at 262k)
    eot = pieces.index("<end_of_turn>") if "<end_of_turn>" in pieces else None
    if info["precompiled_charsmap"] or info["model_type"] != "bpe":
        notes.append(f"the SentencePiece model is {info['model_type']} with the {info['normalizer']!r} normalizer; "
                     f"GGUF keeps neither its model type nor its normalization rules, and llama.cpp tokenizes with "
                     f"score-ranked merges on unnormalized text: ids can differ from SentencePiece's")
    if len(pieces) > spec.vocab_size:
        raise UnsupportedError(f"the tokenizer has {len(pieces)} pieces but the embedding only {spec.vocab_size} "
                               f"rows: llama.cpp cannot load such a GGUF")
    if len(pieces) < spec.vocab_size:
        # As llama.cpp's converter does: one unused token per extra embedding row, so the counts agree.
        extra = spec.vocab_size - len(pieces)
        pieces = pieces + [f"[PAD{i}]" for i in range(len(pieces), spec.vocab_size)]
        scores = scores + [-1000.0] * extra
        types = types + [PIECE_UNUSED] * extra
        notes.append(f"the vocabulary has {len(pieces) - extra} pieces for {spec.vocab_size} embedding rows: "
                     f"{extra} unused [PAD] tokens added")
    # As llama.cpp's converter writes user-defined pieces: U+2581 as a space, since llama.cpp matches them in the
    # raw text (the reader turns them back, see sentencepiece_pieces).
    pieces = [p.replace(_SPACE_PIECE, " ") if t == PIECE_USER_DEFINED else p for p, t in zip(pieces, types)]
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    unk = next((i for i, t in enumerate(types) if t == 2), None)
    if unk is None:
        raise InputError(tok.spm_path or tok.source, "the SentencePiece model has no unknown piece (type 2)")
    w.add_bos_token_id(spec.bos_token_id)
    w.add_eos_token_id(spec.eos_token_id)
    w.add_unk_token_id(unk)
    w.add_pad_token_id(spec.pad_token_id)
    if eot is not None:
        w.add_uint32(gguf.Keys.Tokenizer.EOT_ID, eot)
    w.add_add_bos_token(True)  # Gemma always starts with <bos>
    w.add_add_eos_token(tok.adds_eos)  # Gemma's causal LMs: no; EmbeddingGemma: yes, as its tokenizer says
    w.add_add_space_prefix(bool(info["add_dummy_prefix"]))
    if info["remove_extra_whitespaces"]:
        w.add_bool(gguf.Keys.Tokenizer.REMOVE_EXTRA_WS, True)
