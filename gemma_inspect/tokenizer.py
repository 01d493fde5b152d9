"""Tokenizers: where a checkpoint keeps its SentencePiece model / tokenizer.json, and how to use them.

Gemma's tokenizer is a SentencePiece model. HF directories carry it as `tokenizer.model` (plus a
`tokenizer.json` built from it); Keras presets as `assets/tokenizer/vocabulary.spm`, byte-identical.
Ids: pad 0, eos 1, bos 2, unk 3; BOS is always prepended; EOS appended only where the tokenizer says so
(EmbeddingGemma's release: tokenizer.json's post-processor and tokenizer_config.json's add_eos_token), which
`Tokenizer.adds_eos` reads and every writer carries (GGUF tokenizer.ggml.add_eos_token, the HF files, Keras
metadata).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

from .errors import GemmaInspectError, InputError

SPM_NAMES = ("tokenizer.model", os.path.join("assets", "tokenizer", "vocabulary.spm"))
HF_JSON = "tokenizer.json"
# Gemma 3's tokenizer.model is 4.7 MB (262,144 pieces), its tokenizer.json 33 MB (about 1.3 million JSON values).
MAX_TOKENIZER_BYTES = 100 * 1024 * 1024
MAX_TOKENIZER_JSON_VALUES = 4_000_000
MAX_PIECES = 2_000_000

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


def run_native(path: str, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` of a native tokenizer library (tokenizers, transformers) with its stderr silenced.
    Its Rust code panics on some files (a normalizer regex that exceeds the regex engine's backtracking limit
    raises pyo3's PanicException, a BaseException): one InputError naming `path`, "`what` (Class: first line)",
    instead, the backtrace kept off the terminal. Our own errors pass through."""
    from .quiet import native_stderr_silenced

    try:
        with native_stderr_silenced():
            return fn(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit, GeneratorExit, GemmaInspectError):
        raise
    except BaseException as e:  # noqa: B036 - PanicException derives from BaseException
        first = str(e).splitlines()[0][:120] if str(e) else ""
        raise InputError(path, f"{what} ({e.__class__.__name__}: {first})") from None


@dataclass
class Tokenizer:
    """A checkpoint's tokenizer files. `spm_path` is the SentencePiece model; `json_path` a HF
    tokenizer.json; `spm_bytes` a model held in memory (e.g. rebuilt from a GGUF vocabulary)."""

    source: str
    spm_path: str | None = None
    json_path: str | None = None
    spm_bytes: bytes | None = None
    extra_files: dict[str, str] = field(default_factory=dict)  # name -> path (tokenizer_config.json, ...)
    # Whether encoding appends EOS, where the format says it outside tokenizer.json (GGUF's
    # tokenizer.ggml.add_eos_token, our Keras metadata); None: read from the HF files (`adds_eos`).
    add_eos: bool | None = None

    @property
    def has_spm(self) -> bool:
        return self.spm_path is not None or self.spm_bytes is not None

    def spm_or_rebuilt(self) -> tuple[bytes | None, bool]:
        """(SentencePiece model bytes, rebuilt): the stored model; else one rebuilt from tokenizer.json, accepted
        only if it tokenizes the parity texts to the same ids (see spm_from_tokenizer_json); else (None, False)."""
        if self.has_spm:
            return self.spm_model_bytes(), False
        rebuilt = spm_from_tokenizer_json(self) if self.json_path else None
        return rebuilt, rebuilt is not None

    def spm_model_bytes(self) -> bytes:
        if self.spm_bytes is not None:
            return self.spm_bytes
        if self.spm_path is None:
            raise InputError(self.source, "no SentencePiece model")
        from .safeio import regular_file

        size = regular_file(self.spm_path)
        if size > MAX_TOKENIZER_BYTES:
            raise InputError(self.spm_path, f"tokenizer model is {size} bytes, over the "
                                            f"{MAX_TOKENIZER_BYTES // 2**20} MB limit")
        with open(self.spm_path, "rb") as f:
            return f.read(MAX_TOKENIZER_BYTES)

    def piece_table(self) -> "tuple[list[str], Any, Any] | None":
        """(pieces, scores, types) of the SentencePiece model where they are held already (a model rebuilt from a
        vocabulary), else None: read them from the model."""
        return None

    @cached_property
    def _spm(self) -> Any:
        import sentencepiece as spm

        from .quiet import native_stderr_silenced

        model = self.spm_model_bytes()
        where = self.spm_path or self.source
        try:
            info = spm_pieces(model)
        except ValueError as e:
            raise InputError(where, str(e)) from None
        if not info["complete"]:
            # A model cut short between two fields still parses; without its trainer and normalizer specs it
            # would tokenize with defaults (NFKC normalization), silently differently.
            raise InputError(where, "not a complete SentencePiece model (no trainer_spec or normalizer_spec): "
                                    "truncated?")
        proc = spm.SentencePieceProcessor()
        try:
            with native_stderr_silenced():  # its C++ logging writes to fd 2 ("precompiled_charsmap is empty")
                proc.LoadFromSerializedProto(model)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError for corrupt protos
            raise InputError(where, f"not a valid SentencePiece model ({str(e).splitlines()[0][:80]})") from None
        return proc

    @cached_property
    def _hf(self) -> Any:
        from tokenizers import Tokenizer as HFTokenizer

        from .safeio import read_json_bytes
        from .quiet import native_stderr_silenced

        path: str = self.json_path  # type: ignore[assignment]
        # bounded before the tokenizers library builds its tables from it
        raw = read_json_bytes(path, "tokenizer.json", MAX_TOKENIZER_BYTES, MAX_TOKENIZER_JSON_VALUES)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(path, "tokenizer.json is not UTF-8 text") from None
        try:
            with native_stderr_silenced():  # a Rust panic prints its message (and backtrace) on fd 2
                return HFTokenizer.from_str(text)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: B036 - the Rust code panics on some files (PanicException)
            raise InputError(path, f"not a valid tokenizer.json ({e.__class__.__name__}: "
                                   f"{str(e).splitlines()[0][:80] if str(e) else ''})") from None

    def _run_hf(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args)` of the tokenizers library on this tokenizer.json, through run_native."""
        return run_native(self.json_path or self.source, "the tokenizers library failed on this tokenizer.json",
                          fn, *args, **kwargs)

    @cached_property
    def adds_eos(self) -> bool:
        """Whether the model's inputs end in EOS: `add_eos` where the format stated it, else tokenizer.json's
        post-processor (its single-sequence template ends with the EOS token) or tokenizer_config.json's
        add_eos_token. Gemma's causal LMs: no; EmbeddingGemma's release: yes."""
        import json

        from .safeio import read_json_object

        if self.add_eos is not None:
            return self.add_eos
        cfg_path = self.extra_files.get("tokenizer_config.json")
        if cfg_path:
            flag = read_json_object(cfg_path, "tokenizer_config.json").get("add_eos_token")
            if isinstance(flag, bool):
                return flag
        if self.json_path:
            post = json.loads(self._hf.to_str()).get("post_processor") or {}
            single = post.get("single") if isinstance(post, dict) else None
            if isinstance(single, list) and single and isinstance(single[-1], dict):
                last = single[-1].get("SpecialToken")
                return isinstance(last, dict) and last.get("id") == "<eos>"
        return False

    @property
    def backend(self) -> str:
        return "sentencepiece" if self.has_spm else "tokenizers"

    @property
    def vocab_size(self) -> int:
        if self.has_spm:
            return int(self._spm.GetPieceSize())
        return int(self._run_hf(self._hf.get_vocab_size, with_added_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        if self.has_spm:
            i = self._spm.PieceToId(token)
            return None if (i == self._spm.unk_id() and token != self._spm.IdToPiece(i)) else int(i)
        return self._run_hf(self._hf.token_to_id, token)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text` with BOS prepended, and EOS appended where the tokenizer says so (`adds_eos`:
        EmbeddingGemma; Gemma's causal LMs never). `add_bos` False: the text's own ids alone. Control tokens such as
        `<start_of_turn>` are user-defined symbols in Gemma's model, so they come out as single ids."""
        if self.has_spm:
            ids = [int(i) for i in self._spm.EncodeAsIds(text)]
            bos, eos = int(self._spm.bos_id()), int(self._spm.eos_id())
        else:
            ids = list(self._run_hf(self._hf.encode, text, add_special_tokens=False).ids)
            bos, eos = (self._run_hf(self._hf.token_to_id, t) for t in ("<bos>", "<eos>"))
        if not add_bos:
            return ids
        tail = [eos] if self.adds_eos and eos is not None and eos >= 0 else []
        return ([bos] if bos is not None and bos >= 0 else []) + ids + tail

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


# ----------------------------------------------------------------------------- writing tokenizer files
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def write_hf_tokenizer(tok: Tokenizer, dest: str) -> list[str]:
    """Write tokenizer.model (SentencePiece) and tokenizer.json / tokenizer_config.json /
    special_tokens_map.json into an HF directory. Returns notes for the user."""
    import shutil

    from .safeio import read_json_object

    notes: list[str] = []
    if tok.json_path:
        # An HF source: its fast-tokenizer files travel as they are, once they are known to parse (a corrupt
        # tokenizer.json copied along would only fail later, in whatever loads the output).
        tok._hf  # noqa: B018 - an InputError naming the file if the tokenizers library cannot load it
        for path in tok.extra_files.values():
            read_json_object(path, os.path.basename(path))
        shutil.copyfile(tok.json_path, os.path.join(dest, HF_JSON))
        for name, path in tok.extra_files.items():
            shutil.copyfile(path, os.path.join(dest, name))
    if tok.has_spm:
        spm_file = os.path.join(dest, "tokenizer.model")
        with open(spm_file, "wb") as f:
            f.write(tok.spm_model_bytes())
        if not tok.json_path:
            table = tok.piece_table()
            # a model rebuilt from pieces was checked as it was built; a file is checked by SentencePiece loading it
            has_mask = "<mask>" in table[0] if table is not None else tok.token_to_id("<mask>") is not None
            run_native(tok.spm_path or tok.source, "transformers could not build a fast tokenizer from this "
                       "SentencePiece model", write_hf_fast_tokenizer, spm_file, dest, has_mask=has_mask,
                       add_eos=tok.adds_eos, table=table)
    else:
        notes.append("the source tokenizer has no SentencePiece model: tokenizer.json copied, no tokenizer.model")
    return notes


def write_hf_fast_tokenizer(spm_file: str, dest: str, has_mask: bool = True, add_eos: bool = False,
                            table: "tuple[Any, Any, Any] | None" = None) -> None:
    """tokenizer.json + tokenizer_config.json from a SentencePiece model, as transformers' own
    SentencePiece-to-tokenizers conversion (SpmConverter.build_tokenizer_from_spm_proto) builds it, which follows the
    model's normalizer spec: its precompiled charsmap (nmt_nfkc, ...), whitespace removal, whitespace escaping, the
    dummy prefix, user-defined pieces kept whole, BPE merges ranked by piece score. BOS added; EOS too where `add_eos`
    (EmbeddingGemma), not for Gemma's causal LMs.
    A BPE model of distinct pieces and scores that are numbers is built by spm_fast.hf_bpe_tokenizer, the same
    tokenizer without transformers' Python loops over every piece (seconds for Gemma's 262k); any other model by
    transformers itself. `table`: the model's (pieces, scores, types) where the caller holds them already.
    Control and unknown pieces become special tokens. The config names the generic fast-tokenizer class: the
    GemmaTokenizer class rebuilds its pipeline with Gemma's hard-coded normalizer, whatever tokenizer.json says."""
    import json

    import numpy as np
    from tokenizers import AddedToken, processors

    model_bytes = Tokenizer(source=spm_file, spm_path=spm_file).spm_model_bytes()
    proto = _spm_proto(model_bytes)
    ts = proto.trainer_spec
    if table is None:
        table = ([p.piece for p in proto.pieces], [p.score for p in proto.pieces], [p.type for p in proto.pieces])
    pieces, scores, types = list(table[0]), np.asarray(table[1], dtype=np.float32), np.asarray(table[2])
    vocab = {p: i for i, p in enumerate(pieces)}
    fast = (ts.model_type == 2 and len(vocab) == len(pieces) and all(isinstance(p, str) for p in pieces)
            and not np.isnan(scores).any())
    if fast:
        from .spm_fast import hf_bpe_tokenizer

        ns = proto.normalizer_spec
        tok = hf_bpe_tokenizer(pieces, scores, types, unk_piece=ts.unk_piece, byte_fallback=ts.byte_fallback,
                               precompiled_charsmap=ns.precompiled_charsmap,
                               remove_extra_whitespaces=ns.remove_extra_whitespaces,
                               escape_whitespaces=ns.escape_whitespaces, add_dummy_prefix=ns.add_dummy_prefix,
                               vocab=vocab)
    else:
        from transformers.convert_slow_tokenizer import SpmConverter

        # a dict builds a BPE model, a list of (piece, score) a Unigram one (spm_train's default model type)
        model_vocab: Any = [(p.piece, p.score) for p in proto.pieces] if ts.model_type == 1 else vocab
        tok = SpmConverter.build_tokenizer_from_spm_proto(proto, model_vocab, legacy=True)
    if tok is None:
        raise InputError(spm_file, "transformers cannot convert this SentencePiece model to a fast tokenizer")
    special = [pieces[i] for i in np.flatnonzero(np.isin(types, (PIECE_CONTROL, PIECE_UNKNOWN))).tolist()]
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in special])
    names = {"bos_token": ts.bos_id, "eos_token": ts.eos_id, "unk_token": ts.unk_id, "pad_token": ts.pad_id}
    cfg: dict[str, Any] = {name: pieces[i] for name, i in names.items() if 0 <= i < len(pieces)}
    if has_mask and "<mask>" in vocab:
        cfg["mask_token"] = "<mask>"
    add_eos = add_eos and "eos_token" in cfg
    if "bos_token" in cfg:
        bos = cfg["bos_token"]
        eos = f" {cfg['eos_token']}" if add_eos else ""
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0{eos}:0" if eos else f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0{eos}:0 {bos}:1 $B:1{eos}:1" if eos else f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, vocab[bos])] + ([(cfg["eos_token"], vocab[cfg["eos_token"]])] if eos else []))
    tok.save(os.path.join(dest, HF_JSON))
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", backend="tokenizers", add_bos_token="bos_token" in cfg,
               add_eos_token=add_eos, padding_side="left", model_max_length=1_000_000_000_000_000_019_884_624_838_656)
    with open(os.path.join(dest, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def _spm_proto(model_bytes: bytes) -> Any:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model_bytes)
    return proto


def spm_from_tokenizer_json(tok: Tokenizer) -> bytes | None:
    """Rebuild a SentencePiece model (BPE, or Unigram) from a tokenizer.json, with the normalizer spec it encodes
    (see _normalizer_settings), or None when that is not possible.

    HF's BPE applies merges by rank; SentencePiece's BPE merges the adjacent pair whose result scores
    highest. Scoring each piece by minus the rank of the first merge that produces it gives the same
    merge order. The result is checked: it must tokenize the parity texts to the same ids as the
    tokenizer.json itself (texts that spell control tokens such as "<bos>" are left out, since HF's
    fast tokenizers read those as the tokens themselves and SentencePiece never does)."""
    import re

    from .safeio import read_json

    data = read_json(tok.json_path, "tokenizer.json", MAX_TOKENIZER_BYTES,  # type: ignore[arg-type]
                     MAX_TOKENIZER_JSON_VALUES)
    model = data.get("model") if isinstance(data, dict) else None
    unigram: list[tuple[str, float]] | None = None
    if isinstance(model, dict) and model.get("type") == "Unigram" and isinstance(model.get("vocab"), list):
        # spm_train's default model type: pieces with their log-probabilities, as SentencePiece keeps them
        if not all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], (int, float))
                   for v in model["vocab"]) or len(model["vocab"]) > MAX_PIECES:
            return None
        unigram = [(v[0], float(v[1])) for v in model["vocab"]]
        model = {"vocab": {p: i for i, (p, _) in enumerate(unigram)}, "merges": [],
                 "byte_fallback": model.get("byte_fallback"),
                 "unk_token": unigram[model["unk_id"]][0] if isinstance(model.get("unk_id"), int)
                 and 0 <= model["unk_id"] < len(unigram) else "<unk>"}
    if not isinstance(model, dict) or not (unigram is not None or model.get("type") == "BPE") \
            or not isinstance(model.get("vocab"), dict):
        return None
    vocab: dict[str, int] = model["vocab"]
    if not vocab or not all(isinstance(i, int) and 0 <= i < MAX_PIECES for i in vocab.values()):
        return None
    n = max(vocab.values()) + 1
    pieces: list[str | None] = [None] * n
    for piece, i in vocab.items():
        pieces[i] = piece
    tokens = data.get("added_tokens") or []
    if not isinstance(tokens, list) or not all(isinstance(t, dict) and isinstance(t.get("content"), str)
                                               and isinstance(t.get("id"), int) for t in tokens):
        return None
    added = {t["content"]: t for t in tokens}
    for content, t in added.items():
        if 0 <= t["id"] < n and pieces[t["id"]] is None:
            pieces[t["id"]] = content
    if any(p is None for p in pieces):
        return None
    first_rank: dict[str, int] = {}
    merges = model.get("merges") or []
    if not isinstance(merges, list):
        return None
    for rank, merge in enumerate(merges):
        if isinstance(merge, str) and " " in merge:
            left, right = merge.split(" ", 1)
        elif isinstance(merge, list) and len(merge) == 2 and all(isinstance(m, str) for m in merge):
            left, right = merge
        else:
            return None
        first_rank.setdefault(left + right, rank)
    byte_re = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
    norm = _normalizer_settings(data)
    if norm is None:
        return None
    user_defined: set[str] = norm.pop("user_defined")
    names = _special_names(tok, data)
    control = {"<pad>", "<eos>", "<bos>"} | {v for v in names.values() if v}
    if norm.pop("converter"):
        # written by transformers' SentencePiece converter: its special added tokens are the model's control pieces
        control |= {c for c, t in added.items() if t.get("special") and c not in user_defined}
    types, scores = [], []
    for p in pieces:
        if p == (model.get("unk_token") or "<unk>"):
            types.append(PIECE_UNKNOWN)
        elif p in control:
            types.append(PIECE_CONTROL)
        elif byte_re.match(p):  # type: ignore[arg-type]
            types.append(PIECE_BYTE)
        elif p in added or p in user_defined:
            types.append(PIECE_USER_DEFINED)
        else:
            types.append(PIECE_NORMAL)
        scores.append(unigram[len(scores)][1] if unigram is not None else
                      -float(first_rank[p]) if p in first_rank else 0.0)
    try:
        rebuilt = spm_from_pieces(pieces, scores, types,  # type: ignore[arg-type]
                                  model_type="unigram" if unigram is not None else "bpe",
                                  byte_fallback=bool(model.get("byte_fallback")),
                                  bos_id=vocab.get(names["bos"]) if names["bos"] else None,
                                  eos_id=vocab.get(names["eos"]) if names["eos"] else None,
                                  pad_id=vocab.get(names["pad"]) if names["pad"] else None, **norm)
    except ValueError:
        return None
    check = Tokenizer(source=tok.source, spm_bytes=rebuilt)
    for text in PARITY_TEXTS:
        if any(c in text for c in control):
            continue
        if check.encode(text, add_bos=False) != tok.encode(text, add_bos=False):
            return None
    return rebuilt


def _special_names(tok: Tokenizer, data: dict[str, Any]) -> dict[str, str | None]:
    """The bos/eos/pad token strings: tokenizer_config.json's, else the BOS that tokenizer.json's post-processor
    prepends, else Gemma's (<bos>, <eos>, <pad>)."""
    from .safeio import read_json_object

    names: dict[str, str | None] = {"bos": "<bos>", "eos": "<eos>", "pad": "<pad>"}
    post = data.get("post_processor")
    single = post.get("single") if isinstance(post, dict) and post.get("type") == "TemplateProcessing" else None
    first = single[0] if isinstance(single, list) and single and isinstance(single[0], dict) else {}
    if isinstance(first.get("SpecialToken"), dict) and isinstance(first["SpecialToken"].get("id"), str):
        names["bos"] = first["SpecialToken"]["id"]
    cfg_path = tok.extra_files.get("tokenizer_config.json")
    cfg = read_json_object(cfg_path, "tokenizer_config.json") if cfg_path else {}
    for key in names:
        v = cfg.get(f"{key}_token")
        v = v.get("content") if isinstance(v, dict) else v
        if isinstance(v, str):
            names[key] = v
    return names


def _flatten(node: Any, key: str) -> list[dict[str, Any]]:
    """The steps of a tokenizer.json normalizer / pre-tokenizer, Sequences flattened."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        return [step for child in (node.get(key) or []) for step in _flatten(child, key)]
    return [node]


def _normalizer_settings(data: dict[str, Any]) -> dict[str, Any] | None:
    """The SentencePiece normalizer spec a tokenizer.json encodes, as transformers' SentencePiece converter writes
    it (SpmConverter.build_tokenizer_from_spm_proto): the precompiled charsmap, extra-whitespace removal, spaces
    escaped as U+2581, the dummy prefix (a Metaspace that prepends), user-defined pieces (isolated by a Split).
    Gemma's Hub tokenizer.json (a bare space -> U+2581 Replace) gives Gemma's identity spec. None: a step that
    no SentencePiece normalizer does."""
    import base64
    import re

    norms = _flatten(data.get("normalizer"), "normalizers")
    pres = _flatten(data.get("pre_tokenizer"), "pretokenizers")
    charsmap = b""
    remove_ws = escape = add_prefix = False
    user_defined: set[str] = set()
    for step in norms:
        kind, pattern = step.get("type"), step.get("pattern") or {}
        if kind == "Precompiled" and isinstance(step.get("precompiled_charsmap"), str):
            charsmap = base64.b64decode(step["precompiled_charsmap"])
        elif kind == "Replace" and pattern == {"String": " "} and step.get("content") == "\u2581":
            escape = True
        elif kind == "Replace" and pattern.get("Regex") in (r"\A +| +\z", " {2,}"):
            remove_ws = True
        elif kind == "Replace" and pattern.get("Regex") == "\\A\u2581" and step.get("content") == "\u2581\u2581":
            pass  # the converter's fix for Metaspace skipping the prefix before a leading space
        else:
            return None
    for step in pres:
        kind = step.get("type")
        if kind == "Metaspace":
            escape = True
            add_prefix = step.get("prepend_scheme", "always") != "never" and step.get("add_prefix_space", True)
        elif kind == "Split" and isinstance((step.get("pattern") or {}).get("Regex"), str) \
                and step.get("behavior") == "Isolated":
            user_defined.update(re.sub(r"\\(.)", r"\1", alt, flags=re.S) for alt in
                                re.split(r"(?<!\\)\|", step["pattern"]["Regex"]))
        elif kind == "Split" and (step.get("pattern") or {}).get("String") == " ":
            pass  # Gemma's Hub tokenizer.json: spaces kept with the preceding piece, already escaped
        else:
            return None
    return {"precompiled_charsmap": charsmap, "add_dummy_prefix": bool(add_prefix),
            "remove_extra_whitespaces": remove_ws, "escape_whitespaces": escape or not norms,
            "user_defined": user_defined,
            "converter": any(s.get("type") == "Metaspace" or s.get("behavior") == "Isolated" for s in pres)}


# ----------------------------------------------------------------------------- SentencePiece model <-> pieces
# Piece types as SentencePiece numbers them (GGUF's tokenizer.ggml.token_type uses the same numbers).
PIECE_NORMAL, PIECE_UNKNOWN, PIECE_CONTROL, PIECE_USER_DEFINED, PIECE_UNUSED, PIECE_BYTE = 1, 2, 3, 4, 5, 6
PIECE_TYPES = (PIECE_NORMAL, PIECE_UNKNOWN, PIECE_CONTROL, PIECE_USER_DEFINED, PIECE_UNUSED, PIECE_BYTE)
SPM_MODEL_TYPES = {"unigram": 1, "bpe": 2}


def spm_from_pieces(pieces: "list[str] | tuple[str, ...]", scores: "list[float] | tuple[float, ...]",
                    types: "list[int] | tuple[int, ...]", *, model_type: str = "bpe",
                    byte_fallback: bool | None = None, add_dummy_prefix: bool = False,
                    remove_extra_whitespaces: bool = False, escape_whitespaces: bool = True,
                    precompiled_charsmap: bytes = b"",
                    bos_id: int | None = 2, eos_id: int | None = 1, pad_id: int | None = 0) -> bytes:
    """A serialized SentencePiece ModelProto from its vocabulary: piece strings, scores and piece types
    (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte). Normalization defaults are
    Gemma's: identity rules, no dummy prefix, no whitespace removal, spaces escaped as U+2581.
    `byte_fallback` defaults to whether any byte piece exists; the special ids name pieces of the
    vocabulary (None or an id outside it: no such token). Raises ValueError for an inconsistent vocabulary.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    n = len(pieces)
    if len(scores) != n or len(types) != n:
        raise ValueError(f"{n} pieces but {len(scores)} scores and {len(types)} types")
    if model_type not in SPM_MODEL_TYPES:
        raise ValueError(f"model_type must be one of {', '.join(SPM_MODEL_TYPES)}, got {model_type!r}")
    bad = next((i for i, t in enumerate(types) if int(t) not in PIECE_TYPES), None)
    if bad is not None:
        raise ValueError(f"piece {bad} ({pieces[bad]!r}) has unknown type {types[bad]}")
    unknown = [i for i, t in enumerate(types) if int(t) == PIECE_UNKNOWN]
    if len(unknown) != 1:
        raise ValueError(f"a SentencePiece model needs exactly one unknown piece, found {len(unknown)}")
    if not all(isinstance(p, str) and p for p in pieces):
        bad = next(i for i, p in enumerate(pieces) if not isinstance(p, str) or not p)
        raise ValueError(f"piece {bad} is empty or not a string: {pieces[bad]!r}")
    if len(set(pieces)) != n:
        seen: dict[str, int] = {}
        for i, p in enumerate(pieces):
            if p in seen:
                raise ValueError(f"piece {p!r} appears twice (ids {seen[p]} and {i})")
            seen[p] = i
    # what SentencePiece checks as it loads a model, checked here so that a model rebuilt from a vocabulary is known
    # to load without loading it (a second for 262k pieces)
    byte_ids = [i for i, t in enumerate(types) if int(t) == PIECE_BYTE]
    bad = next((i for i in byte_ids if not re.fullmatch(r"<0x[0-9A-F]{2}>", pieces[i])), None)
    if bad is not None:
        raise ValueError(f"byte piece {bad} ({pieces[bad]!r}) is not of the form <0xXX>")
    byte_fallback = bool(byte_ids) if byte_fallback is None else byte_fallback
    if byte_fallback and len(byte_ids) != 256:
        raise ValueError(f"byte fallback needs the 256 byte pieces <0x00>..<0xFF>, found {len(byte_ids)}")
    if not byte_fallback and byte_ids:
        raise ValueError(f"byte piece {pieces[byte_ids[0]]!r} without byte fallback")
    model = pb.ModelProto()
    ts = model.trainer_spec
    ts.model_type = SPM_MODEL_TYPES[model_type]
    ts.vocab_size = n
    ts.byte_fallback = byte_fallback
    ts.unk_id, ts.unk_piece = unknown[0], pieces[unknown[0]]
    # SentencePiece finds bos/eos/pad by these piece strings; -1 disables a special token.
    for field_name, i in (("bos", bos_id), ("eos", eos_id), ("pad", pad_id)):
        valid = i is not None and 0 <= i < n
        setattr(ts, f"{field_name}_id", i if valid else -1)
        if valid:
            setattr(ts, f"{field_name}_piece", pieces[i])
    ns = model.normalizer_spec
    # SentencePiece normalizes with the precompiled charsmap whatever the name says; the name tells a reader.
    ns.name = "identity" if not precompiled_charsmap else "user_defined"
    ns.precompiled_charsmap = precompiled_charsmap
    ns.add_dummy_prefix = add_dummy_prefix
    ns.remove_extra_whitespaces = remove_extra_whitespaces
    ns.escape_whitespaces = escape_whitespaces
    # protobuf writes the repeated pieces (field 1) before the specs (fields 2, 3): the pieces are serialized on
    # the wire format directly, as protobuf would (checked byte for byte in tests/test_spm_fast.py)
    from .spm_fast import serialize_pieces

    return serialize_pieces(pieces, scores, types) + model.SerializeToString()


MAX_SPM_OTHER_FIELDS = 1000  # besides its pieces a model holds a trainer, a normalizer and a denormalizer spec


def _count_fields(b: bytes) -> int:
    """The number of pieces (top-level field 1) of a serialized ModelProto, read from its wire format; ValueError
    beyond MAX_PIECES pieces or MAX_SPM_OTHER_FIELDS other fields, for a field tag written in more bytes than it
    needs (protobuf accepts `8a 00` for `0a`, so such tags would hide pieces from any count of tag bytes), or
    when the bytes are no protobuf message."""
    pos, end, pieces, other = 0, len(b), 0, 0

    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        for i in range(pos, min(pos + 10, end)):
            byte = b[i]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, i + 1
            shift += 7
        raise ValueError("not a SentencePiece model (a varint runs past 10 bytes or the end)")

    while pos < end:
        tag = b[pos]
        if tag < 0x80:  # a tag is written in its shortest form: a one-byte tag is one byte
            pos += 1
        else:
            tag, after = varint(pos)
            if b[after - 1] == 0:  # `8a 00`: field 1 written in two bytes; protobuf accepts it, no writer does
                raise ValueError(f"not a SentencePiece model as protobuf writes one (the field tag at byte {pos} is "
                                 f"written in more bytes than it needs)")
            pos = after
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            pos = varint(pos)[1]
        elif wire == 2:
            if b[pos:pos + 1] and b[pos] < 0x80:
                length, pos = b[pos], pos + 1
            else:
                length, pos = varint(pos)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"not a SentencePiece model (wire type {wire} at top level)")
        if pos > end:
            raise ValueError("not a SentencePiece model (a field runs past the end: truncated?)")
        if field == 1:
            pieces += 1
            if pieces > MAX_PIECES:
                raise ValueError(f"a SentencePiece model of more than {MAX_PIECES:,} pieces, more than the "
                                 f"{MAX_PIECES:,} this tool accepts")
        else:
            other += 1
            if other > MAX_SPM_OTHER_FIELDS:
                raise ValueError(f"a SentencePiece model of more than {MAX_SPM_OTHER_FIELDS} fields besides its "
                                 f"pieces (a model holds a few)")
    return pieces


def spm_pieces(model_bytes: bytes) -> dict[str, Any]:
    """The vocabulary and settings of a serialized SentencePiece model: {"pieces", "scores", "types",
    "model_type", "byte_fallback", "add_dummy_prefix", "remove_extra_whitespaces", "normalizer" (its name),
    "precompiled_charsmap" (whether it has one), "unk_id", "bos_id",
    "eos_id", "pad_id", "complete" (both specs present)}. Raises ValueError when the bytes are not a
    SentencePiece model."""
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2 as pb

    # The pieces are counted before the parser builds them (a crafted model of 2-byte pieces would make
    # ~100 M of them), by walking the wire format: a tag may be written in more bytes than it needs (`8a 00` is
    # field 1 as well as `0a`), so counting 0x0a bytes is not enough.
    _count_fields(model_bytes)
    model = pb.ModelProto()
    try:
        model.ParseFromString(model_bytes)
    except DecodeError as e:
        raise ValueError(f"not a SentencePiece model ({e})") from None
    if not len(model.pieces):
        raise ValueError("not a SentencePiece model (no pieces)")
    ts, ns = model.trainer_spec, model.normalizer_spec
    model_type = {v: k for k, v in SPM_MODEL_TYPES.items()}.get(ts.model_type, str(ts.model_type))
    pieces = [p.piece for p in model.pieces]
    bad = next((i for i, p in enumerate(pieces) if not isinstance(p, str)), None)
    if bad is not None:  # protobuf hands back the raw bytes; SentencePiece's own lookups raise later
        raise ValueError(f"piece {bad} ({pieces[bad]!r}) is not valid UTF-8")
    return {
        "pieces": pieces,
        "scores": [p.score for p in model.pieces],
        "types": [int(p.type) for p in model.pieces],
        "model_type": model_type,
        "byte_fallback": bool(ts.byte_fallback),
        "add_dummy_prefix": bool(ns.add_dummy_prefix),
        "remove_extra_whitespaces": bool(ns.remove_extra_whitespaces),
        "normalizer": ns.name, "precompiled_charsmap": bool(ns.precompiled_charsmap),
        "unk_id": int(ts.unk_id), "bos_id": int(ts.bos_id), "eos_id": int(ts.eos_id), "pad_id": int(ts.pad_id),
        "complete": model.HasField("trainer_spec") and model.HasField("normalizer_spec"),
    }
