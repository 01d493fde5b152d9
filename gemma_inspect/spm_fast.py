"""A SentencePiece BPE vocabulary to its two files, fast enough for Gemma's 262,144 pieces:

- `bpe_merges`: the merge list of the equivalent tokenizers BPE model, as transformers' SentencePiece conversion
  (SpmConverter.build_tokenizer_from_spm_proto) generates it: every split of a normal piece (type 1) into two
  normal pieces, ranked by the piece's score (highest first), then its id, then the split position. Candidate
  splits are found with array hashes over all pieces at once, then checked exactly on the strings.
- `hf_bpe_tokenizer`: the tokenizers.Tokenizer that conversion builds (model, normalizer, pre-tokenizer, decoder),
  without importing transformers (1.4 s) or looping over 262k pieces in Python.
- `serialize_pieces`: the pieces part of a serialized SentencePiece ModelProto, written on the wire format
  directly (protobuf's per-piece `add` costs about a second for 262k pieces).

tests/test_spm_fast.py holds each against its reference: transformers' own conversion, protobuf's serialization.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

SPACE = "\u2581"
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
_BASE = np.uint64(0x100000001B3)  # any odd multiplier: hashes only pick candidates, strings decide


def _codes(pieces: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code points of all pieces concatenated as uint64, start of each piece, length of each piece)."""
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    codes = np.frombuffer("".join(pieces).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    starts = np.zeros(len(pieces), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return codes.astype(np.uint64) + np.uint64(1), starts, lengths


def bpe_merges(pieces: Sequence[str], scores: Sequence[float] | np.ndarray,
               types: Sequence[int] | np.ndarray) -> list[tuple[str, str]]:
    """The merges of a SentencePiece BPE vocabulary (distinct pieces, no NaN score), in transformers' order."""
    n = len(pieces)
    types = np.asarray(types)
    scores = np.asarray(scores, dtype=np.float32).astype(np.float64)  # as the model stores them
    normal = np.flatnonzero(types == 1)
    if not len(normal):
        return []
    codes, starts, lengths = _codes(pieces)
    # Polynomial hash of every prefix of every normal piece, by piece length (one array op per character column).
    full = np.zeros(n, dtype=np.uint64)  # hash of each whole piece
    found_piece: list[np.ndarray] = []
    found_split: list[np.ndarray] = []
    with np.errstate(over="ignore"):
        powers = np.ones(int(lengths.max()) + 1, dtype=np.uint64)
        for j in range(1, len(powers)):
            powers[j] = powers[j - 1] * _BASE
        groups: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for length in np.unique(lengths[normal]).tolist():
            ids = normal[lengths[normal] == length]
            block = codes[starts[ids][:, None] + np.arange(length)]  # (pieces, length)
            prefix = np.zeros((len(ids), length + 1), dtype=np.uint64)
            for j in range(length):
                prefix[:, j + 1] = prefix[:, j] * _BASE + block[:, j]
            full[ids] = prefix[:, length]
            groups[length] = (ids, prefix)
        # a piece of any length hashes with its length mixed in, so that lookups need one sorted table
        keyed = np.sort(full[normal] ^ (lengths[normal].astype(np.uint64) * _MASK // np.uint64(97)))

        def known(h: np.ndarray, length: int) -> np.ndarray:
            key = h ^ (np.uint64(length) * _MASK // np.uint64(97))
            at = np.searchsorted(keyed, key).clip(0, len(keyed) - 1)
            return keyed[at] == key

        for length, (ids, prefix) in groups.items():
            for k in range(1, length):
                left = prefix[:, k]
                right = prefix[:, length] - left * powers[length - k]
                hit = np.flatnonzero(known(left, k) & known(right, length - k))
                if len(hit):
                    found_piece.append(ids[hit])
                    found_split.append(np.full(len(hit), k, dtype=np.int64))
    if not found_piece:
        return []
    piece = np.concatenate(found_piece)
    split = np.concatenate(found_split)
    # transformers sorts (-score, id, left, right): a shorter left part of one piece is a prefix of a longer one
    order = np.lexsort((split, piece, -scores[piece]))
    vocab = {pieces[i]: i for i in normal.tolist()}
    merges = []
    for i, k in zip(piece[order].tolist(), split[order].tolist()):
        p = pieces[i]
        left, right = p[:k], p[k:]
        if left in vocab and right in vocab:  # the hash candidates, checked on the strings
            merges.append((left, right))
    return merges


def hf_bpe_tokenizer(pieces: Sequence[str], scores: Sequence[float] | np.ndarray, types: Sequence[int] | np.ndarray,
                     *, unk_piece: str, byte_fallback: bool, precompiled_charsmap: bytes = b"",
                     remove_extra_whitespaces: bool = False, escape_whitespaces: bool = True,
                     add_dummy_prefix: bool = False, vocab: dict[str, int] | None = None) -> Any:
    """The tokenizers.Tokenizer transformers' SpmConverter.build_tokenizer_from_spm_proto(proto, {piece: id},
    legacy=True) builds for a BPE model: the same model, normalizer, pre-tokenizer and decoder. `vocab`: {piece: id}
    where the caller has it already."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    vocab = {p: i for i, p in enumerate(pieces)} if vocab is None else vocab
    user_defined = [pieces[i] for i in np.flatnonzero(np.asarray(types) == 4).tolist()]
    tok = Tokenizer(BPE(vocab=vocab, merges=bpe_merges(pieces, scores, types), unk_token=unk_piece, fuse_unk=True,
                        byte_fallback=byte_fallback, dropout=None, ignore_merges=bool(user_defined)))
    norms: list[Any] = []
    if precompiled_charsmap:
        norms.append(normalizers.Precompiled(precompiled_charsmap))
    if remove_extra_whitespaces:  # spaces only, as SentencePiece does
        norms += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if escape_whitespaces:
        norms.append(normalizers.Replace(" ", SPACE))
    if add_dummy_prefix:  # SentencePiece prefixes even a text that starts with U+2581; Metaspace would not
        norms.append(normalizers.Replace(Regex(r"\A" + SPACE), SPACE + SPACE))
    tok.normalizer = normalizers.Sequence(norms)
    pres: list[Any] = []
    if add_dummy_prefix:
        pres.append(pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=False))
    if user_defined:  # matched whole, longest first
        pattern = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
        pres.append(pre_tokenizers.Split(Regex(pattern), behavior="isolated"))
    if pres:
        tok.pre_tokenizer = pre_tokenizers.Sequence(pres)
    decs: list[Any] = [decoders.Replace(SPACE, " ")]
    if byte_fallback:
        decs.append(decoders.ByteFallback())
    if add_dummy_prefix:
        decs += [decoders.Fuse(), decoders.Strip(content=" ", left=1)]
    elif byte_fallback:
        decs.append(decoders.Fuse())
    tok.decoder = decoders.Sequence(decs)
    return tok


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def serialize_pieces(pieces: Sequence[str], scores: Sequence[float] | np.ndarray,
                     types: Sequence[int] | np.ndarray) -> bytes:
    """ModelProto field 1 (`repeated SentencePiece pieces`, each {1: piece, 2: score as float32, 3: type}) as
    protobuf serializes pieces added with all three fields set: the bytes before the trainer spec. Every record is
    laid out with array operations (lengths below 16384 bytes take one or two varint bytes); longer pieces or
    types beyond one varint byte go through a plain loop."""
    f32 = np.ascontiguousarray(np.asarray(scores, dtype=np.float32), dtype="<f4")
    enc = [p.encode("utf-8") for p in pieces]
    n = np.fromiter(map(len, enc), dtype=np.int64, count=len(enc))
    t = np.asarray(types, dtype=np.int64)
    if not len(n) or n.max() >= 16384 - 16 or t.min() < 0 or t.max() >= 128:
        return _serialize_pieces_loop(enc, f32, t)
    v2 = 1 + (n >= 128)  # varint size of the piece length
    body = 1 + v2 + n + 5 + 2  # piece field, score field (tag + 4), type field (tag + 1)
    v1 = 1 + (body >= 128)
    rec = 1 + v1 + body
    off = np.zeros(len(n), dtype=np.int64)
    np.cumsum(rec[:-1], out=off[1:])
    out = np.zeros(int(rec.sum()), dtype=np.uint8)

    def varint(at: np.ndarray, value: np.ndarray, size: np.ndarray) -> None:
        out[at] = (value & 0x7F) | np.where(size == 2, 0x80, 0)
        two = size == 2
        out[at[two] + 1] = value[two] >> 7

    out[off] = 0x0A
    varint(off + 1, body, v1)
    p = off + 1 + v1
    out[p] = 0x0A
    varint(p + 1, n, v2)
    d = p + 1 + v2  # the piece's bytes
    data = np.frombuffer(b"".join(enc), dtype=np.uint8)
    first = np.zeros(len(n), dtype=np.int64)
    np.cumsum(n[:-1], out=first[1:])
    out[np.repeat(d - first, n) + np.arange(len(data))] = data
    e = d + n
    out[e] = 0x15
    out[(e + 1)[:, None] + np.arange(4)] = f32.view(np.uint8).reshape(-1, 4)
    out[e + 5] = 0x18
    out[e + 6] = t
    return out.tobytes()


def _serialize_pieces_loop(enc: list[bytes], f32: np.ndarray, types: np.ndarray) -> bytes:
    raw = f32.tobytes()
    out = []
    for i, (e, t) in enumerate(zip(enc, types.tolist())):
        body = b"\x0a" + _varint(len(e)) + e + b"\x15" + raw[4 * i:4 * i + 4] + b"\x18" + _varint(t & (2**64 - 1))
        out.append(b"\x0a" + _varint(len(body)) + body)
    return b"".join(out)
