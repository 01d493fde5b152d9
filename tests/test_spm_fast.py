"""spm_fast against its references: the tokenizer.json (merges included) transformers' own SentencePiece conversion
(SpmConverter.build_tokenizer_from_spm_proto) builds, and the ModelProto bytes protobuf serializes; on the session's
tiny tokenizer under every normalizer setting, on vocabularies made to break a careless merge order or hash, and on
the real Gemma 3 270M GGUF's 262,144 pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gemma_inspect import spm_fast
from gemma_inspect.tokenizer import _spm_proto, spm_from_pieces, spm_pieces, write_hf_fast_tokenizer


def _reference_json(model: bytes) -> str:
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = _spm_proto(model)
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    return SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True).to_str(pretty=True)


def _fast_json(model: bytes) -> str:
    proto = _spm_proto(model)
    info = spm_pieces(model)
    ns = proto.normalizer_spec
    return spm_fast.hf_bpe_tokenizer(
        info["pieces"], info["scores"], info["types"], unk_piece=proto.trainer_spec.unk_piece,
        byte_fallback=proto.trainer_spec.byte_fallback, precompiled_charsmap=ns.precompiled_charsmap,
        remove_extra_whitespaces=ns.remove_extra_whitespaces, escape_whitespaces=ns.escape_whitespaces,
        add_dummy_prefix=ns.add_dummy_prefix).to_str(pretty=True)


def _protobuf_model(pieces, scores, types, **kw) -> bytes:
    """spm_from_pieces' model as protobuf itself serializes it, pieces added one by one."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    for p, s, t in zip(pieces, scores, types):
        model.pieces.add(piece=p, score=float(s), type=int(t))
    rest = pb.ModelProto()
    rest.ParseFromString(spm_from_pieces(pieces, scores, types, **kw))
    model.trainer_spec.CopyFrom(rest.trainer_spec)
    model.normalizer_spec.CopyFrom(rest.normalizer_spec)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer):
    with open(tiny_tokenizer, "rb") as f:
        model = f.read()
    return model, spm_pieces(model)


SETTINGS = [
    {},
    {"add_dummy_prefix": True},
    {"add_dummy_prefix": True, "remove_extra_whitespaces": True},
    {"escape_whitespaces": False, "remove_extra_whitespaces": True},
]


def test_the_tiny_tokenizer_as_trained(tiny):
    model, info = tiny
    assert info["model_type"] == "bpe"
    fast = _fast_json(model)
    assert fast == _reference_json(model)
    assert len(json.loads(fast)["model"]["merges"]) > 40


@pytest.mark.parametrize("settings", SETTINGS, ids=[",".join(s) or "gemma" for s in SETTINGS])
def test_every_normalizer_setting_and_user_defined_pieces(tiny, settings):
    _, info = tiny
    pieces, scores, types = list(info["pieces"]), list(info["scores"]), list(info["types"])
    # more user-defined pieces (isolated by the pre-tokenizer, never merged), one of regex syntax
    extra = [p for p in ("<tablé>", "[*]", "\n\n\n\n\n\n") if p not in pieces]
    assert len(extra) == 3 and 4 in types and 6 in types  # the tiny model has user-defined and byte pieces already
    pieces += extra
    scores += [0.0] * 3
    types += [4] * 3
    model = spm_from_pieces(pieces, scores, types, **settings)
    assert model == _protobuf_model(pieces, scores, types, **settings)
    assert _fast_json(model) == _reference_json(model)


def test_tied_scores_rank_by_id_then_split(tiny):
    """Every score equal (GGUFs without scores get -id, some writers 0.0): transformers' sort falls back on the id,
    then the split; merges listed in any other order tokenize differently."""
    _, info = tiny
    n = len(info["pieces"])
    zeros = spm_from_pieces(info["pieces"], [0.0 if i % 3 else -0.0 for i in range(n)], info["types"])
    assert _fast_json(zeros) == _reference_json(zeros)
    # longest pieces first, ties (many) by id: an order unlike the trained one (scores falling with the id)
    by_length = spm_from_pieces(info["pieces"], [float(len(p)) for p in info["pieces"]], info["types"])
    fast = _fast_json(by_length)
    assert fast == _reference_json(by_length)
    merges = json.loads(fast)["model"]["merges"]
    assert merges != json.loads(_fast_json(spm_from_pieces(info["pieces"], info["scores"], info["types"])))[
        "model"]["merges"]
    assert sorted(map(tuple, merges)) == sorted(spm_fast.bpe_merges(info["pieces"], info["scores"], info["types"]))


def test_hash_collisions_are_checked_on_the_strings(tiny, monkeypatch):
    """With a multiplier of 0 every substring hashes to its last character: nearly every split is a candidate, and
    only the string check keeps the merge list right."""
    model, info = tiny
    want = spm_fast.bpe_merges(info["pieces"], info["scores"], info["types"])
    monkeypatch.setattr(spm_fast, "_BASE", np.uint64(0))
    assert spm_fast.bpe_merges(info["pieces"], info["scores"], info["types"]) == want
    assert [list(m) for m in want] == json.loads(_reference_json(model))["model"]["merges"]


@pytest.mark.parametrize("longest", [1, 16367, 16368, 20000], ids=lambda n: f"longest-{n}")
def test_pieces_serialized_as_protobuf_does(longest):
    """Lengths of one and two varint bytes (records of 127/128 bytes), odd scores; a piece of 16368 bytes or more
    takes the plain loop (3-byte varints)."""
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "a", "\u2581b", "x" * 118, "x" * 119, "x" * 120, "x" * 200,
              "日本語" * 50, "🙂", "<0x00>", "y" * longest]
    scores = [0.0, -0.0, 1e-45, float("inf"), float("-inf"), float("nan"), -3.25, 1e30, -1e-3, 0.5, 1.0, 2.0, 3.0,
              4.0]
    types = [3, 3, 3, 2, 1, 1, 1, 1, 1, 1, 4, 5, 5, 1]
    got = spm_from_pieces(pieces, scores, types)
    assert got == _protobuf_model(pieces, scores, types)
    assert spm_pieces(got)["pieces"] == pieces


def test_write_hf_fast_tokenizer_matches_transformers_file_for_file(tiny, tiny_tokenizer, tmp_path):
    """The whole writer: its tokenizer.json equals the one transformers' conversion gives (with the special tokens
    and post-processor the writer adds), with and without the table of pieces handed in."""
    from tokenizers import Tokenizer

    _, info = tiny
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_hf_fast_tokenizer(tiny_tokenizer, str(a), has_mask=False)
    write_hf_fast_tokenizer(tiny_tokenizer, str(b), has_mask=False,
                            table=(info["pieces"], np.array(info["scores"], np.float32), np.array(info["types"])))
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    ref = Tokenizer.from_str(_reference_json(open(tiny_tokenizer, "rb").read()))
    got = Tokenizer.from_file(str(a / "tokenizer.json"))
    assert json.loads(got.to_str())["model"] == json.loads(ref.to_str())["model"]
    text = "Hello, world! tabs\tand\nnewlines  héllo"
    assert got.encode(text, add_special_tokens=False).ids == ref.encode(text, add_special_tokens=False).ids


def test_real_gemma3_vocabulary(real_gguf_270m, tmp_path):
    """The real 262,144-piece vocabulary: the rebuilt SentencePiece model byte for byte as protobuf writes it, and
    the tokenizer.json (513k merges) equal to transformers' conversion."""
    from gemma_inspect.formats import load

    tok = load(real_gguf_270m).tokenizer
    model = tok.spm_model_bytes()
    pieces, scores, types = tok.piece_table()
    assert len(pieces) == 262144
    assert model.startswith(spm_fast.serialize_pieces(pieces, scores, types))
    proto = _spm_proto(model)
    assert [p.piece for p in proto.pieces[:5000]] == pieces[:5000]
    ref = _reference_json(model)
    assert _fast_json(model) == ref
    assert len(json.loads(ref)["model"]["merges"]) > 500_000
    out = tmp_path / "hf"
    out.mkdir()
    write_hf_fast_tokenizer(_write(tmp_path / "t.model", model), str(out),
                            table=(pieces, scores, types))
    assert json.loads((out / "tokenizer.json").read_text())["model"] == json.loads(ref)["model"]
    # ids looked up in the pieces, as SentencePiece looks them up (every 97th piece, the specials, absent strings)
    assert "_spm" not in vars(tok)
    probes = pieces[::97] + ["<end_of_turn>", "<mask>", "<unk>", "<pad>", "not a piece", "\u2581\u2581x\u2581"]
    looked_up = [tok.token_to_id(p) for p in probes]
    assert "_spm" not in vars(tok)
    spm = tok._spm
    assert looked_up == [None if spm.PieceToId(p) == spm.unk_id() and p != "<unk>" else spm.PieceToId(p)
                         for p in probes]
    assert looked_up[-6:] == [106, 4, 3, 0, None, None]


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("pieces, types, fallback, message", [
    (["<0x4a>"], [6], None, "not of the form <0xXX>"),
    (["<0x100>"], [6], None, "not of the form <0xXX>"),
    (["<0x4A>"], [6], None, "found 1"),
    ([], [], True, "found 0"),
    ([f"<0x{i:02X}>" for i in range(256)], [6] * 256, False, "without byte fallback"),
])
def test_models_sentencepiece_would_refuse_are_refused(pieces, types, fallback, message):
    """spm_from_pieces refuses the byte pieces SentencePiece refuses as it loads a model (a rebuilt model is not
    loaded into SentencePiece to find out); the models it accepts load."""
    import sentencepiece as spm

    base, base_types = ["<pad>", "<eos>", "<bos>", "<unk>", "a"], [3, 3, 3, 2, 1]
    args = (base + pieces, [0.0] * (5 + len(pieces)), base_types + types)
    with pytest.raises(ValueError, match=message):
        spm_from_pieces(*args, byte_fallback=fallback)
    proc = spm.SentencePieceProcessor()
    with pytest.raises(Exception, match="byte"):
        proc.LoadFromSerializedProto(_unchecked(*args, fallback))
    ok = base + [f"<0x{i:02X}>" for i in range(256)]
    proc.LoadFromSerializedProto(spm_from_pieces(ok, [0.0] * len(ok), base_types + [6] * 256))
    assert proc.PieceToId("<0x4A>") == 5 + 0x4A


def _unchecked(pieces, scores, types, fallback) -> bytes:
    """The model spm_from_pieces would have written without its byte checks."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.ParseFromString(spm_from_pieces(pieces, scores, [1 if t == 6 else t for t in types]))
    for p, t in zip(model.pieces, types):
        p.type = t
    model.trainer_spec.byte_fallback = bool([t for t in types if t == 6]) if fallback is None else fallback
    return model.SerializeToString()
