"""gemma_pytorch (Google's reference PyTorch implementation): a `.ckpt` pickle, or a directory of shards.

`torch.load(path, weights_only=True, mmap=True)["model_state_dict"]` holds tensors named like HF's, except
the embedding (`embedder.weight`), the fused `self_attn.qkv_proj.weight` (rows q | k | v, split with explicit
sizes H*D, K*D, K*D: equal thirds are only right when K = H) and Gemma 3's `query_norm`/`key_norm`.
The sharded form is `pytorch_model.bin.index.json` + shards that are plain state dicts. Unpickling is
always `weights_only=True`: a pickle that references anything but tensors and plain containers is
refused and nothing in it runs.

The file stores no configuration. The architecture version comes from the tensors present (post-FFN norms:
Gemma 2 or 3; query/key norms: Gemma 3), sizes from shapes, and what shapes cannot tell (head_dim of Gemma 1
and 2, sliding window, soft caps, query_pre_attn_scalar, RoPE, context length) from, in order:
  1. the configuration our writer embeds in the pickle (key "gemma_inspect": {"config": HF config.json dict});
  2. a `gemma_inspect.json` or `config.json` next to the checkpoint, in HF config.json spelling (any subset of
     keys, e.g. {"head_dim": 256, "query_pre_attn_scalar": 144, "sliding_window": 4096});
  3. the published model of the same family and shape (the built-in cards);
  4. the family's defaults.
Every value taken from 3 or 4 is listed in a note and in `Checkpoint.assumed`.
"""

from __future__ import annotations

import collections
import functools
import os
import pickle
import re
import struct
import sys
import warnings
from typing import Any, Callable, Iterator

import numpy as np

from ..checkpoint import (Checkpoint, TensorRef, canonical_name, check_against_spec, compile_names, expected_tensors,
                          match_name)
from ..errors import InputError, UnsupportedError
from ..spec import CARD_NAMES, GemmaSpec, card
from .common import check_member, most_common, read_json_object, safe_child

STATE_KEY = "model_state_dict"
EXTRA_KEY = "gemma_inspect"  # our writer's self-description; gemma_pytorch's loader never looks at it
INDEX = "pytorch_model.bin.index.json"
SIDE_CONFIGS = ("gemma_inspect.json", "config.json")
QKV = "model.layers.{i}.self_attn.qkv_proj.weight"

# canonical role -> gemma_pytorch name (gemma/model.py). q, k and v live together in QKV.
NAMES: dict[str, str] = {
    "embed": "embedder.weight",
    "final_norm": "model.norm.weight",
    "attn_norm": "model.layers.{i}.input_layernorm.weight",
    "post_attn_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "ffn_norm": "model.layers.{i}.pre_feedforward_layernorm.weight",
    "post_ffn_norm": "model.layers.{i}.post_feedforward_layernorm.weight",
    "o": "model.layers.{i}.self_attn.o_proj.weight",
    "q_norm": "model.layers.{i}.self_attn.query_norm.weight",
    "k_norm": "model.layers.{i}.self_attn.key_norm.weight",
    "gate": "model.layers.{i}.mlp.gate_proj.weight",
    "up": "model.layers.{i}.mlp.up_proj.weight",
    "down": "model.layers.{i}.mlp.down_proj.weight",
}
# Gemma 1's decoder layer calls its pre-FFN norm `post_attention_layernorm` (it has no post-attention norm);
# None: the family has no such tensor.
NAME_OVERRIDES: dict[str, dict[str, str | None]] = {
    "gemma": {"ffn_norm": "model.layers.{i}.post_attention_layernorm.weight", "post_attn_norm": None,
              "post_ffn_norm": None, "q_norm": None, "k_norm": None},
}
QKV_ROLES = ("q", "k", "v")
# The multimodal Gemma3ForMultimodalLM keeps the text embedding under another name.
EMBED_ALIASES = ("text_token_embedder.weight",)
# Rotary tables are buffers recomputed from the spec; the vision tower is not part of the text decoder.
BUFFER_PATTERN = re.compile(r"(^|\.)(local_|global_)?freqs_cis$")
VISION_PREFIXES = ("siglip_vision_model.", "mm_soft_embedding_norm.", "mm_input_projection.")
SCALER_SUFFIX = ".weight_scaler"  # int8 checkpoints (quant=True): weight = int8 * scaler[:, None]

FLOAT_DTYPES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


def names_for(family: str) -> dict[str, str]:
    """The name table of a family: the shared rows with the family's overrides applied."""
    merged = {**NAMES, **NAME_OVERRIDES.get(family, {})}
    return {role: t for role, t in merged.items() if t is not None}


@functools.lru_cache(maxsize=None)
def _reverse(family: str) -> list[tuple[str, re.Pattern[str]]]:
    return compile_names(names_for(family))  # derived, not written twice: gemma_pytorch name -> role


def _role_of(name: str, family: str) -> tuple[str, int | None] | None:
    if name in EMBED_ALIASES:
        return "embed", None
    found = match_name(_reverse(family), name)
    if found is not None:
        return found
    m = re.match(r"^model\.layers\.(\d{1,6})\.self_attn\.qkv_proj\.weight$", name)
    if m:
        return "qkv", int(m.group(1))
    return None


# ----------------------------------------------------------------------------- unpickling, safely
# weights_only stops code from running, not memory from being spent: it builds every list and dict a pickle
# describes (a 2-byte opcode pair makes a 56-byte list), and torch's zip reader inflates compressed records.
# A checkpoint's pickle holds ~25 opcodes per tensor; torch.save writes every record uncompressed.
MAX_PICKLE_OPS = 1_000_000
MAX_ZIP_ENTRIES = 100_000
MAX_CENTRAL_DIRECTORY = 16 * 1024 * 1024  # 100,000 records of ~100 bytes; a checkpoint's holds a few hundred
MAX_DICT_ITEMS = 100_000
LEGACY_PICKLES = 5  # magic number, protocol version, sys_info, the object, the storage keys
ZIP_MAGIC = b"PK\x03\x04"


def _check_container(path: str) -> None:
    """Refuse, before torch.load, what would make it allocate far more than the file holds or spin for minutes,
    reading the file exactly as torch.load will: zip or legacy by the first four bytes (torch's
    `_is_zipfile`), the pickle record `<first record's folder>/data.pkl` (torch's PyTorchStreamReader), and
    its opcodes with the weights_only unpickler's own reading rules. Refused: zip archives that two readers
    could read differently (end record and central directory disagreeing, duplicate names, a second pickle
    record), compressed records, pickles of more than MAX_PICKLE_OPS opcodes, dict keys that are not strings
    (integers can be made to collide in Python's hash: 100,000 of them take minutes to insert), dicts of more
    than MAX_DICT_ITEMS items, and storages declaring more bytes than the file holds."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if f.read(4) == ZIP_MAGIC:
                start, length = _zip_pickle_record(f, path, size)
                scan = _PickleScan(_Window(f, start, length), path)
                scan.run(1)
            else:  # the legacy format: several pickles in a row, then the raw storages
                f.seek(0)
                scan = _PickleScan(_Window(f, 0, size), path)
                scan.run(LEGACY_PICKLES)
                # torch.load swaps a zip archive's bytes when its `byteorder` record differs from the machine's,
                # but reads a legacy file's storages as they are, whatever its sys_info says.
                if scan.little_endian is not None and scan.little_endian != (sys.byteorder == "little"):
                    raise InputError(path, f"a legacy checkpoint written on a "
                                           f"{'little' if scan.little_endian else 'big'}-endian machine "
                                           f"(sys_info little_endian={scan.little_endian}); torch.load would read "
                                           f"its bytes unswapped")
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    declared = sum(scan.storages.values())
    if declared > size:
        big = max(scan.storages.items(), key=lambda kv: kv[1])
        raise InputError(path, f"its storages declare {declared} bytes (storage {big[0]!r}: {big[1]}), more than "
                               f"the file's {size}")


class _Window:
    """Bytes [start, start + length) of an open file, read as a stream (read and readline never pass the end)."""

    def __init__(self, f: Any, start: int, length: int):
        self.f, self.left = f, length
        f.seek(start)

    def read(self, n: int) -> bytes:
        b = self.f.read(max(0, min(n, self.left)))
        self.left -= len(b)
        return b

    def readline(self) -> bytes:
        b = self.f.readline(self.left)
        self.left -= len(b)
        return b


def _zip_pickle_record(f: Any, path: str, size: int) -> tuple[int, int]:
    """(offset, length) of the pickle record torch.load reads from this zip archive, after checking that the
    archive reads one way only."""

    def bad(problem: str) -> InputError:
        return InputError(path, f"not a readable PyTorch checkpoint (zip archive: {problem})")

    tail_len = min(size, 22 + 65535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    i = tail.rfind(b"PK\x05\x06")
    if i < 0 or i + 22 > len(tail):
        raise bad("no end-of-central-directory record")
    eocd = size - tail_len + i
    disk, cd_disk, n_disk, n_total, cd_size, cd_offset, _comment = struct.unpack_from("<HHHHIIH", tail, i + 4)
    end_of_cd = eocd
    located = i >= 20 and tail[i - 20:i - 16] == b"PK\x06\x07"
    if not located and (0xFFFF in (n_disk, n_total) or 0xFFFFFFFF in (cd_size, cd_offset)):
        raise bad("a zip64 end record without its locator")
    if located:  # zip64 (torch's writer always adds it): its record, before the locator, has the real counts
        (end_of_cd,) = struct.unpack_from("<Q", tail, i - 20 + 8)
        if end_of_cd + 56 > eocd:
            raise bad("zip64 end record out of place")
        f.seek(end_of_cd)
        rec = f.read(56)
        if len(rec) != 56 or rec[:4] != b"PK\x06\x06":
            raise bad("zip64 end record missing")
        disk, cd_disk, n_disk, n_total, cd_size, cd_offset = struct.unpack_from("<IIQQQQ", rec, 16)
    if disk or cd_disk or n_disk != n_total:
        raise bad("a multi-disk archive")
    if n_total > MAX_ZIP_ENTRIES:
        raise InputError(path, f"a zip archive of {n_total} records, more than the {MAX_ZIP_ENTRIES} a checkpoint "
                               f"needs")
    if cd_offset + cd_size != end_of_cd:
        raise bad(f"the central directory ({cd_size} bytes at {cd_offset}) does not end where the end record "
                  f"begins ({end_of_cd})")
    if cd_size > MAX_CENTRAL_DIRECTORY:
        raise InputError(path, f"a zip central directory of {cd_size} bytes, more than the "
                               f"{MAX_CENTRAL_DIRECTORY // 2**20} MB a checkpoint needs")
    f.seek(cd_offset)
    cd = f.read(cd_size)
    records: dict[str, tuple[str, int, int, int]] = {}  # casefolded name -> (name, method, size, local offset)
    order: list[str] = []
    pos = 0
    while pos < len(cd):
        if len(order) >= n_total:
            raise bad(f"the end record counts {n_total} records, the central directory holds more")
        if cd[pos:pos + 4] != b"PK\x01\x02" or pos + 46 > len(cd):
            raise bad(f"central directory entry {len(order)} is corrupt")
        method, csize, usize, nlen, elen, clen = struct.unpack_from("<H8xIIHHH", cd, pos + 10)
        (local,) = struct.unpack_from("<I", cd, pos + 42)
        name_raw = cd[pos + 46:pos + 46 + nlen]
        extra = cd[pos + 46 + nlen:pos + 46 + nlen + elen]
        pos += 46 + nlen + elen + clen
        if pos > len(cd):
            raise bad(f"central directory entry {len(order)} runs past the directory")
        csize, usize, local = _zip64_extra(extra, csize, usize, local)
        name = name_raw.decode("utf-8", "replace")
        key = name.lower()  # torch's reader (miniz) looks names up ignoring case
        if key in records:
            raise bad(f"the record {name!r} is listed twice")
        records[key] = (name, method, csize, local)
        order.append(key)
    if len(order) != n_total:
        raise bad(f"the end record counts {n_total} records, the central directory holds {len(order)}")
    if not order:
        raise bad("no records")
    first = records[order[0]][0]
    if "/" not in first:
        raise bad(f"the first record {first!r} is not in a folder")
    prefix = first[:first.index("/") + 1]  # PyTorchStreamReader: every record is looked up under this folder
    packed = next((records[k][0] for k in order if records[k][1] != 0), None)
    if packed is not None:
        raise InputError(path, f"record {packed!r} is compressed; torch.save stores records as they are (a "
                               f"compressed record would be inflated into memory)")
    want = (prefix + "data.pkl").lower()
    if want not in records:
        raise bad(f"no record {prefix}data.pkl")
    other = next((records[k][0] for k in order if k.endswith(".pkl") and k != want), None)
    if other is not None:
        raise bad(f"a second pickle record {other!r} besides {prefix}data.pkl")
    name, _method, length, local = records[want]
    f.seek(local)
    head = f.read(30)
    if len(head) != 30 or head[:4] != ZIP_MAGIC:
        raise bad(f"the local header of {name!r} is missing")
    nlen, elen = struct.unpack_from("<HH", head, 26)
    if f.read(nlen).decode("utf-8", "replace") != name:
        raise bad(f"the local header of {name!r} names another record")
    start = local + 30 + nlen + elen
    if start + length > cd_offset:
        raise bad(f"record {name!r} runs past the records")
    return start, length


def _zip64_extra(extra: bytes, csize: int, usize: int, local: int) -> tuple[int, int, int]:
    """Sizes and offset of a central directory entry with its zip64 extra field applied."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + n]
        pos += 4 + n
        if tag != 1:
            continue
        vals = [struct.unpack_from("<Q", body, j)[0] for j in range(0, len(body) - 7, 8)]
        if usize == 0xFFFFFFFF and vals:
            usize = vals.pop(0)
        if csize == 0xFFFFFFFF and vals:
            csize = vals.pop(0)
        if local == 0xFFFFFFFF and vals:
            local = vals.pop(0)
    return csize, usize, local


class _Opaque:
    """A value the scan does not follow (a tensor, a storage, a float, ...)."""


class _Container:
    """A dict, list or set the pickle builds: only its item count is kept."""

    def __init__(self) -> None:
        self.items = 0


class _Global:
    def __init__(self, name: str):
        self.name = name


_OPAQUE = _Opaque()
_MARK = object()
# Bytes per element of the storage classes a persistent id names (torch.FloatStorage, ...); others count 16.
_STORAGE_ITEMSIZE = {"FloatStorage": 4, "BFloat16Storage": 2, "HalfStorage": 2, "DoubleStorage": 8, "LongStorage": 8,
                     "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
                     "UntypedStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16}
_DICT_CLASSES = ("collections.OrderedDict", "collections.Counter")


class _PickleScan:
    """Walks pickles opcode by opcode as torch's weights_only unpickler reads them (the same opcodes, the same
    byte counts), building nothing big: strings, numbers and tuples are kept, containers only counted. What it
    refuses, torch would have built at great cost (or refused itself)."""

    def __init__(self, stream: _Window, path: str):
        self.stream, self.path = stream, path
        self.ops = 0
        self.storages: dict[str, int] = {}  # storage key -> declared bytes
        self.pickle = 0  # which pickle of the file is being read
        self.little_endian: bool | None = None  # sys_info["little_endian"] of a legacy file (its third pickle)

    def fail(self, problem: str) -> InputError:
        return InputError(self.path, problem)

    def run(self, pickles: int) -> None:
        for n in range(pickles):
            if n and not self.stream.left:  # the file ends between two pickles: torch says why
                return
            self.pickle = n
            try:
                value = self.one()
            except UnicodeDecodeError:
                raise self.fail("the pickle holds a string that is not UTF-8 (refused before unpickling)") from None
            if n == 0 and pickles > 1 and not isinstance(value, int):
                return  # not torch's legacy magic number: torch.load stops here and says so

    def one(self) -> Any:  # noqa: C901 - one branch per opcode, as in the unpickler it mirrors
        read, readline = self.stream.read, self.stream.readline
        stack: list[Any] = []
        metastack: list[list[Any]] = []
        memo: dict[int, Any] = {}

        def need(n: int) -> bytes:
            b = read(n)
            if len(b) != n:
                raise self.fail("the pickle ends early: truncated (refused before unpickling)")
            return b

        def pop_mark() -> list[Any]:
            nonlocal stack
            if not metastack:
                raise self.fail("the pickle pops a mark it never set (refused before unpickling)")
            items, stack = stack, metastack.pop()
            return items

        def pop() -> Any:
            if not stack:
                raise self.fail("the pickle pops an empty stack (refused before unpickling)")
            return stack.pop()

        def set_items(target: Any, keys: list[Any], values: list[Any]) -> None:
            if self.pickle == 2 and "little_endian" in keys:
                v = values[keys.index("little_endian")]
                self.little_endian = v if isinstance(v, bool) else None
            for k in keys:
                if not isinstance(k, str):
                    raise self.fail(f"a dict key is {_describe(k)}, not a string; a checkpoint's keys are names "
                                    f"(refused before unpickling)")
            if isinstance(target, _Container):
                target.items += len(keys)
                if target.items > MAX_DICT_ITEMS:
                    raise self.fail(f"a dict of more than {MAX_DICT_ITEMS} items (refused before unpickling)")

        while True:
            code = read(1)
            if not code:
                raise self.fail("the pickle ends before its STOP opcode: truncated (refused before unpickling)")
            self.ops += 1
            if self.ops > MAX_PICKLE_OPS:
                raise self.fail(f"the pickle has more than {MAX_PICKLE_OPS} opcodes, far more than a checkpoint's "
                                f"(refused before unpickling)")
            op = code[0]
            if op == 0x80:  # PROTO
                need(1)
            elif op == 0x2E:  # STOP
                return pop()
            elif op == 0x63:  # GLOBAL
                module = readline()[:-1].decode("utf-8", "replace")
                name = readline()[:-1].decode("utf-8", "replace")
                stack.append(_Global(f"{module}.{name}"))
            elif op in (0x81, 0x52):  # NEWOBJ, REDUCE
                pop()
                func = stack[-1] if stack else None
                if func is None:
                    raise self.fail("the pickle calls nothing (refused before unpickling)")
                stack[-1] = (_Container() if isinstance(func, _Global) and func.name in _DICT_CLASSES
                             else _OPAQUE)
            elif op == 0x62:  # BUILD
                pop()
            elif op == 0x61:  # APPEND
                pop()
            elif op == 0x65:  # APPENDS
                pop_mark()
            elif op == 0x73:  # SETITEM
                value = pop()
                key = pop()
                set_items(stack[-1] if stack else None, [key], [value])
            elif op == 0x75:  # SETITEMS
                items = pop_mark()
                set_items(stack[-1] if stack else None, items[0::2], items[1::2])
            elif op == 0x28:  # MARK
                metastack.append(stack)
                stack = []
            elif op == 0x74:  # TUPLE
                items = pop_mark()  # first: pop_mark rebinds `stack`
                stack.append(tuple(items))
            elif op in (0x85, 0x86, 0x87):  # TUPLE1..3
                n = op - 0x84
                if len(stack) < n:
                    raise self.fail("the pickle pops an empty stack (refused before unpickling)")
                stack[-n:] = [tuple(stack[-n:])]
            elif op == 0x4E:  # NONE
                stack.append(None)
            elif op in (0x88, 0x89):  # NEWTRUE, NEWFALSE
                stack.append(op == 0x88)
            elif op == 0x29:  # EMPTY_TUPLE
                stack.append(())
            elif op == 0x5D:  # EMPTY_LIST
                stack.append(_Container())
            elif op == 0x7D:  # EMPTY_DICT
                stack.append(_Container())
            elif op == 0x8F:  # EMPTY_SET
                stack.append(_Container())
            elif op == 0x4A:  # BININT
                stack.append(struct.unpack("<i", need(4))[0])
            elif op == 0x4B:  # BININT1
                stack.append(need(1)[0])
            elif op == 0x4D:  # BININT2
                stack.append(struct.unpack("<H", need(2))[0])
            elif op == 0x47:  # BINFLOAT
                need(8)
                stack.append(_OPAQUE)
            elif op == 0x58:  # BINUNICODE
                (n,) = struct.unpack("<I", need(4))
                stack.append(need(n).decode("utf-8", "surrogatepass"))
            elif op == 0x55:  # SHORT_BINSTRING
                stack.append(need(need(1)[0]).decode("latin-1"))
            elif op == 0x51:  # BINPERSID
                pid = pop()
                self._storage(pid)
                stack.append(_OPAQUE)
            elif op in (0x68, 0x6A):  # BINGET, LONG_BINGET
                idx = need(1)[0] if op == 0x68 else struct.unpack("<I", need(4))[0]
                if idx not in memo:
                    raise self.fail(f"the pickle reads memo entry {idx}, which it never wrote (refused before "
                                    f"unpickling)")
                stack.append(memo[idx])
            elif op in (0x71, 0x72):  # BINPUT, LONG_BINPUT
                idx = need(1)[0] if op == 0x71 else struct.unpack("<I", need(4))[0]
                if not stack:
                    raise self.fail("the pickle pops an empty stack (refused before unpickling)")
                memo[idx] = stack[-1]
            elif op == 0x8A:  # LONG1
                stack.append(int.from_bytes(need(need(1)[0]), "little", signed=True))
            else:
                raise self.fail(f"the pickle uses opcode {code!r}, which torch's weights_only loader does not "
                                f"accept (refused before unpickling)")

    def _storage(self, pid: Any) -> None:
        """A persistent id ('storage', <storage class>, key, location, numel[, view]): its declared bytes."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            return  # torch refuses it itself
        cls, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(numel, int) or numel < 0:
            raise self.fail(f"storage {key!r} declares {_describe(numel)} elements (refused before unpickling)")
        itemsize = _STORAGE_ITEMSIZE.get(cls.name.rsplit(".", 1)[-1], 16) if isinstance(cls, _Global) else 16
        self.storages[str(key)] = numel * itemsize


def _describe(v: Any) -> str:
    if isinstance(v, (int, str)) and not isinstance(v, bool):
        text = repr(v)
        return text if len(text) <= 40 else text[:37] + "..."
    return {_Container: "a container", _Global: "a class", tuple: "a tuple"}.get(type(v), "an object")


def _torch_load(path: str) -> Any:
    """`torch.load(weights_only=True, mmap=True)`, falling back to no mmap only for the legacy (non-zip)
    format, which cannot be mapped; errors become InputErrors naming the file."""
    import torch

    _check_container(path)

    def load(mmap: bool) -> Any:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the library never prints
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            return load(True)
        except RuntimeError as e:
            if "mmap" in str(e) and "zipfile" in str(e):  # legacy pickle: still weights_only
                return load(False)
            raise
    except pickle.UnpicklingError as e:
        m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\.\s|\n\n|$)", str(e), re.S)
        what = (m.group(1) if m else str(e).splitlines()[0] if str(e) else "").strip()
        raise InputError(path, f"refused: the pickle is not plain tensors ({what[:160]}); it was opened with "
                               f"weights_only=True, so nothing in it ran") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError, TypeError, IndexError) as e:
        msg = str(e).splitlines()[0][:160] if str(e) else e.__class__.__name__
        raise InputError(path, f"not a readable PyTorch checkpoint ({msg})") from None


def _state_of(obj: Any, path: str, sharded: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(state dict, our embedded description) of one loaded pickle; anything but str -> tensor is refused."""
    import torch

    extra = None
    if isinstance(obj, dict) and STATE_KEY in obj:
        state = obj[STATE_KEY]
        extra = obj.get(EXTRA_KEY)
        if extra is not None and not isinstance(extra, dict):
            raise InputError(path, f"{EXTRA_KEY!r} must be a dict, got {type(extra).__name__}")
    elif sharded and isinstance(obj, dict):
        state = obj
    else:
        keys = f" with keys {list(obj)[:5]}" if isinstance(obj, dict) else ""
        raise InputError(path, f"not a gemma_pytorch checkpoint: expected a dict with {STATE_KEY!r}, got "
                               f"{type(obj).__name__}{keys}")
    if not isinstance(state, dict):
        raise InputError(path, f"{STATE_KEY!r} must be a dict of tensors, got {type(state).__name__}")
    for k, v in state.items():
        if not isinstance(k, str):
            raise InputError(path, f"state dict key {k!r} is not a string")
        if not isinstance(v, torch.Tensor):
            raise InputError(path, f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        # weights_only admits sparse and meta tensors too; neither holds values to read.
        if v.layout != torch.strided or v.device.type != "cpu" or v.is_nested:
            kind = f"on the {v.device.type} device" if v.device.type != "cpu" else f"a {v.layout} tensor"
            raise InputError(path, f"state dict entry {k!r} is {kind}; expected dense tensors")
    _check_views(state, path)
    return state, extra


def _check_views(state: dict[str, Any], path: str) -> None:
    """Every tensor must be a contiguous run of its storage's bytes, inside the storage, and no two may share
    bytes. A stride-0 view of a 4-byte storage can declare a 262144 x 1024 embedding: reading it would
    materialize a gigabyte from a file of a kilobyte (and two tensors over the same bytes multiply the output
    of a conversion the same way). torch.save writes each tensor of a state dict over its own storage bytes."""
    spans: dict[int, list[tuple[int, int, str]]] = {}
    for k, v in state.items():
        if not v.numel():
            continue
        if not v.is_contiguous():
            raise InputError(path, f"tensor {k!r} of shape {list(v.shape)} is a view with strides "
                                   f"{list(v.stride())}, not a contiguous tensor (refused: it would be expanded "
                                   f"from fewer bytes than it claims)")
        storage = v.untyped_storage()
        begin = v.storage_offset() * v.element_size()
        end = begin + v.numel() * v.element_size()
        if v.storage_offset() < 0 or end > storage.nbytes():
            raise InputError(path, f"tensor {k!r} spans bytes {begin}..{end} of a storage of {storage.nbytes()} "
                                   f"bytes")
        spans.setdefault(storage.data_ptr(), []).append((begin, end, k))
    for runs in spans.values():
        runs.sort()
        for (_b0, e0, k0), (b1, _e1, k1) in zip(runs, runs[1:]):
            if b1 < e0:
                raise InputError(path, f"tensors {k0!r} and {k1!r} share bytes of one storage; a checkpoint "
                                       f"stores each tensor once")


def _checkpoint_files(path: str) -> tuple[list[str], bool, str]:
    """(pickle files, sharded?, the path messages name for the tensors)."""
    if not os.path.isdir(path):
        return [path], False, path
    index = os.path.join(path, INDEX)
    if os.path.isfile(index):
        wm = read_json_object(index, "index").get("weight_map")
        if not isinstance(wm, dict) or not wm:
            raise InputError(index, "has no weight_map (a name -> shard file object)")
        files = []
        for fname in dict.fromkeys(wm.values()):
            full = safe_child(path, fname, index)
            if not os.path.isfile(full):
                raise InputError(index, f"names shard {fname!r}, which does not exist")
            files.append(full)
        return files, True, index
    ckpts = sorted(e for e in os.listdir(path) if e.endswith(".ckpt"))
    if len(ckpts) != 1:
        raise InputError(path, f"expected one .ckpt file or {INDEX} in this directory, found "
                               f"{len(ckpts)} .ckpt files")
    return [os.path.join(path, ckpts[0])], False, os.path.join(path, ckpts[0])


# ----------------------------------------------------------------------------- tensors -> numpy
def _numpy(t: Any) -> np.ndarray:
    """A view of a CPU tensor as numpy (bfloat16 as ml_dtypes.bfloat16); no copy for mapped tensors."""
    import torch

    t = t.detach()  # an nn.Parameter unpickles with requires_grad
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.contiguous().numpy()


def _dtype_name(t: Any, path: str, name: str) -> str:
    d = FLOAT_DTYPES.get(str(t.dtype))
    if d is None:
        raise InputError(path, f"tensor {name!r} has dtype {str(t.dtype).replace('torch.', '')}; expected "
                               f"float32, bfloat16 or float16 (or int8 with a weight_scaler)")
    return d


def _ref(canonical: str, tensor: Any, path: str, stored: str, rows: slice | None = None,
         scaler: Any = None) -> TensorRef:
    import torch

    shape = tuple(tensor.shape) if rows is None else (rows.stop - rows.start, *tensor.shape[1:])
    origin = f"{path}:{stored}" + (f"[{rows.start}:{rows.stop}]" if rows is not None else "")
    if tensor.dtype == torch.int8:
        if scaler is None:
            raise InputError(path, f"tensor {stored!r} is int8 but {stored.rsplit('.', 1)[0]}.weight_scaler is missing")
        if tuple(scaler.shape) != tuple(tensor.shape[:1]) or not scaler.dtype.is_floating_point:
            raise InputError(path, f"{stored.rsplit('.', 1)[0]}.weight_scaler is {str(scaler.dtype)[6:]} "
                                   f"{list(scaler.shape)}; expected one float per row of {stored} "
                                   f"({tensor.shape[0]})")
        # gemma_pytorch's quant=True: w = int8 * weight_scaler[:, None] (one scale per output row).
        nbytes = int(np.prod(shape)) + 4 * shape[0]

        def load_int8() -> np.ndarray:
            q = tensor if rows is None else tensor[rows]
            s = scaler if rows is None else scaler[rows]
            return (q.to(torch.float32) * s.to(torch.float32).unsqueeze(-1)).numpy()

        return TensorRef(canonical, shape, "int8", load_int8, nbytes=nbytes, origin=origin)
    dtype = _dtype_name(tensor, path, stored)

    def load() -> np.ndarray:
        return _numpy(tensor if rows is None else tensor[rows])

    def chunks(size: int) -> Iterator[memoryview]:
        view = memoryview(np.ascontiguousarray(load()).reshape(-1).view(np.uint8))  # bfloat16 has no buffer code
        for i in range(0, len(view), size):
            yield view[i:i + size]

    nbytes = int(np.prod(shape)) * tensor.element_size()
    return TensorRef(canonical, shape, dtype, load, nbytes=nbytes, origin=origin, chunks=chunks)


# ----------------------------------------------------------------------------- shapes -> spec
MODEL_TYPE = {"gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text"}
# What shapes cannot tell, when no published model of the same shape exists (HF config spelling).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma": {"max_position_embeddings": 8192, "rope_theta": 10000.0},
    "gemma2": {"max_position_embeddings": 8192, "sliding_window": 4096, "attn_logit_softcapping": 50.0,
               "final_logit_softcapping": 30.0, "rope_theta": 10000.0},
    "gemma3": {"max_position_embeddings": 32768, "sliding_window": 1024, "rope_theta": 1_000_000.0,
               "rope_local_base_freq": 10000.0, "rope_scaling": None, "final_logit_softcapping": None,
               "attn_logit_softcapping": None},
}
DEFAULT_HEAD_DIM = 256  # every published Gemma but the Gemma 2/3 27B models (128)


def _card_config(spec: GemmaSpec) -> dict[str, Any]:
    """The values of a built-in card that shapes cannot tell, in HF config spelling."""
    cfg: dict[str, Any] = {"head_dim": spec.head_dim, "max_position_embeddings": spec.max_position_embeddings,
                           "rope_theta": spec.rope_theta}
    if spec.family != "gemma":
        cfg.update(query_pre_attn_scalar=spec.query_pre_attn_scalar, sliding_window=spec.sliding_window,
                   attn_logit_softcapping=spec.attention_logit_softcap,
                   final_logit_softcapping=spec.final_logit_softcap)
    if spec.family == "gemma3":
        cfg["rope_local_base_freq"] = spec.local_rope_theta
        if spec.rope_scaling_factor != 1.0:
            cfg["rope_scaling"] = {"rope_type": "linear", "factor": spec.rope_scaling_factor}
    return cfg


def _matching_card(family: str, hidden: int, layers: int, ffn: int, q_out: int, kv_out: int) -> str | None:
    for name in CARD_NAMES:
        c = card(name)
        if (c.family, c.hidden_size, c.num_layers, c.intermediate_size) == (family, hidden, layers, ffn) and \
                c.num_attention_heads * c.head_dim == q_out and c.num_key_value_heads * c.head_dim == kv_out:
            return name
    return None


def _side_config(path: str) -> tuple[dict[str, Any], str | None]:
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for name in SIDE_CONFIGS:
        p = os.path.join(directory, name)
        check_member(directory, name)  # a .ckpt given as a file: its siblings are checked here, not in detect()
        if os.path.isfile(p):
            return read_json_object(p, name), p
    return {}, None


def _spec(family: str, shapes: dict[str, tuple[int, ...]], dtype: str, path: str, extra: dict[str, Any] | None,
          notes: list[str]) -> tuple[GemmaSpec, frozenset[str]]:
    from .hf import spec_from_config

    emb = shapes["embed"]
    vocab, hidden = emb
    layers = 1 + max(int(n.split(".")[2]) for n in shapes if n.startswith("model.layers."))
    q_out = shapes[NAMES["o"].format(i=0)][1]
    qkv_rows = shapes[QKV.format(i=0)][0]
    kv_out2 = qkv_rows - q_out
    ffn = shapes[NAMES["gate"].format(i=0)][0]
    if kv_out2 <= 0 or kv_out2 % 2:
        raise InputError(path, f"qkv_proj has {qkv_rows} rows and o_proj {q_out} columns: the rows left for k and "
                               f"v ({kv_out2}) cannot be split in two")
    kv_out = kv_out2 // 2

    if extra is not None and isinstance(extra.get("config"), dict):
        cfg = dict(extra["config"])  # written by us: complete
        spec, cfg_notes = spec_from_config(cfg, f"{path} ({EXTRA_KEY} config)", dtype)
        notes.extend(cfg_notes)
        return spec, frozenset()

    side, side_path = _side_config(path)
    if side.get("model_type") not in (None, *MODEL_TYPE.values(), "gemma3"):
        raise InputError(side_path, f"model_type {side.get('model_type')!r} does not match this {family} checkpoint")
    side = {k: v for k, v in side.items() if k != "model_type"}
    base: dict[str, Any] = {"model_type": MODEL_TYPE[family], "vocab_size": vocab, "hidden_size": hidden,
                            "num_hidden_layers": layers, "intermediate_size": ffn,
                            "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
                            "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "dtype": dtype}
    qn = NAMES["q_norm"].format(i=0)
    matched = _matching_card(family, hidden, layers, ffn, q_out, kv_out)
    assumed_from: dict[str, Any] = {}
    if matched:
        assumed_from = _card_config(card(matched))
        source = f"the published {matched}"
    else:
        assumed_from = dict(FAMILY_DEFAULTS[family])
        if family in ("gemma", "gemma2"):
            assumed_from["head_dim"] = DEFAULT_HEAD_DIM
        source = f"{family} defaults"
    if qn in shapes:  # Gemma 3's query norm runs over head_dim: the shape tells
        base["head_dim"] = shapes[qn][0]
        assumed_from.pop("head_dim", None)
    head_dim = side.get("head_dim", base.get("head_dim", assumed_from.get("head_dim")))
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim <= 0 \
            or q_out % head_dim or kv_out % head_dim:
        raise InputError(side_path or path, f"head_dim {head_dim!r} does not divide the query width {q_out} and the "
                                            f"key/value width {kv_out}; give the right head_dim in a "
                                            f"{SIDE_CONFIGS[0]} next to the checkpoint")
    base["num_attention_heads"] = q_out // head_dim
    base["num_key_value_heads"] = kv_out // head_dim
    if family != "gemma" and "query_pre_attn_scalar" not in assumed_from:
        assumed_from["query_pre_attn_scalar"] = head_dim
    cfg = {**base, **assumed_from, **side}
    cfg["head_dim"] = head_dim
    taken = sorted(k for k in assumed_from if k not in side and k not in base)
    if taken:
        notes.append(f"gemma_pytorch checkpoints store no configuration: {', '.join(f'{k}={cfg[k]}' for k in taken)} "
                     f"assumed from {source}" + (f" ({side_path} gave the rest)" if side_path else
                                                 f"; put the right values in a {SIDE_CONFIGS[0]} next to the "
                                                 f"checkpoint (HF config.json keys) to override"))
    elif side_path:
        notes.append(f"configuration read from {side_path}")
    spec, cfg_notes = spec_from_config(cfg, side_path or path, dtype)
    notes.extend(n for n in cfg_notes if "declares no dtype" not in n)
    to_field = {"head_dim": "head_dim", "max_position_embeddings": "max_position_embeddings",
                "rope_theta": "rope_theta", "rope_local_base_freq": "rope_local_theta",
                "rope_scaling": "rope_scaling_factor", "query_pre_attn_scalar": "query_pre_attn_scalar",
                "sliding_window": "sliding_window", "attn_logit_softcapping": "attention_logit_softcap",
                "final_logit_softcapping": "final_logit_softcap"}
    # rms_norm_eps is 1e-6 in every Gemma and no file says so: assumed, not worth a note.
    assumed = {to_field[k] for k in taken if k in to_field} | ({"rms_norm_eps"} - set(side))
    return spec, frozenset(assumed)


# ----------------------------------------------------------------------------- reading
def read(path: str) -> Checkpoint:
    files, sharded, where = _checkpoint_files(path)
    state: dict[str, tuple[Any, str]] = {}
    extra = None
    for f in files:
        obj = _torch_load(f)
        sd, ex = _state_of(obj, f, sharded)
        extra = extra if ex is None else ex
        for k, v in sd.items():
            if k in state:
                raise InputError(f, f"tensor {k!r} is also stored in {state[k][1]}")
            state[k] = (v, f)
    notes: list[str] = []
    ignored: dict[str, tuple[tuple[int, ...], str]] = {}
    family = "gemma"
    if any(k.endswith(("post_feedforward_layernorm.weight", "pre_feedforward_layernorm.weight")) for k in state):
        family = "gemma3" if any(k.endswith("self_attn.query_norm.weight") for k in state) else "gemma2"
    vision = 0
    dropped = []
    tensors_by_name: dict[str, Any] = {}
    for k, (v, f) in state.items():
        if BUFFER_PATTERN.search(k):
            dropped.append(k)
            ignored[k] = (tuple(v.shape), str(v.dtype).replace("torch.", ""))
        elif k.startswith(VISION_PREFIXES):
            vision += 1
            ignored[k] = (tuple(v.shape), str(v.dtype).replace("torch.", ""))
        elif not k.endswith(SCALER_SUFFIX):
            tensors_by_name[k] = (v, f)
    if dropped:
        notes.append(f"rotary tables dropped ({', '.join(sorted(dropped))}): they are recomputed from the spec")
    if vision:
        notes.append(f"multimodal Gemma 3: {vision} vision tensors reported and ignored; only the text decoder is read")

    # Roles, then shapes for the spec.
    located: dict[str, tuple[str, int | None, Any, str, str]] = {}  # gp name -> (role, layer, tensor, file, name)
    for k, (v, f) in tensors_by_name.items():
        rl = _role_of(k, family)
        if rl is None:
            raise InputError(f, f"tensor {k!r} is not part of a gemma_pytorch {family} checkpoint")
        if str(v.dtype) != "torch.int8":
            _dtype_name(v, f, k)  # float32, bfloat16 or float16, or an InputError naming the tensor
        located[k] = (rl[0], rl[1], v, f, k)
    shapes = {}
    for k, (role, layer, v, _f, _n) in located.items():
        shapes["embed" if role == "embed" else k] = tuple(v.shape)
    for needed in ("embed", NAMES["o"].format(i=0), QKV.format(i=0), NAMES["gate"].format(i=0)):
        if needed not in shapes:
            raise InputError(where, f"no {NAMES['embed'] if needed == 'embed' else needed} tensor: not a "
                                    f"gemma_pytorch Gemma checkpoint")
        if len(shapes[needed]) != 2:  # the spec is read from these shapes
            raise InputError(where, f"{NAMES['embed'] if needed == 'embed' else needed} has shape "
                                    f"{list(shapes[needed])}; expected a matrix")
    weight_dtypes = [FLOAT_DTYPES.get(str(v.dtype)) for (_r, _l, v, _f, _n) in located.values()]
    float_dtypes = [d for d in weight_dtypes if d]
    dtype = most_common(float_dtypes) or "float32"
    if len(float_dtypes) != len(weight_dtypes):
        notes.append("int8 weights (gemma_pytorch quant=True) are dequantized with their weight_scaler to float32")
        dtype = "float32"
    spec, assumed = _spec(family, shapes, dtype, path, extra, notes)

    tensors: dict[str, TensorRef] = {}
    q_out = spec.num_attention_heads * spec.head_dim
    kv_out = spec.num_key_value_heads * spec.head_dim
    for k, (role, layer, v, f, stored) in located.items():
        scaler = state.get(k.rsplit(".", 1)[0] + SCALER_SUFFIX, (None,))[0]
        if role == "qkv":
            if v.shape[0] != q_out + 2 * kv_out:
                raise InputError(f, f"{k} has {v.shape[0]} rows; the spec implies (H + 2K) * D = "
                                    f"{q_out} + 2 x {kv_out}")
            # Rows are q | k | v with sizes H*D, K*D, K*D (equal thirds only when K = H).
            bounds = {"q": slice(0, q_out), "k": slice(q_out, q_out + kv_out),
                      "v": slice(q_out + kv_out, q_out + 2 * kv_out)}
            for r in QKV_ROLES:
                name = canonical_name(r, layer)
                tensors[name] = _ref(name, v, f, stored, bounds[r], scaler)
        else:
            name = canonical_name(role, layer)
            if name in tensors:
                raise InputError(f, f"two tensors map to {name} ({stored})")
            tensors[name] = _ref(name, v, f, stored, None, scaler)
    check_against_spec(spec, tensors, where, where)
    ordered = {n: tensors[n] for n in expected_tensors(spec)}
    tokenizer = _tokenizer(path, extra)
    return Checkpoint(spec=spec, tensors=ordered, source=path, format="gemma-pytorch", tokenizer=tokenizer,
                      notes=notes, ignored=ignored, config=dict(extra.get("config", {})) if extra else {},
                      files=files, assumed=assumed)


def _tokenizer(path: str, extra: dict[str, Any] | None) -> Any:
    from ..tokenizer import Tokenizer

    if extra is not None and isinstance(extra.get("tokenizer.model"), bytes):
        return Tokenizer(source=path, spm_bytes=extra["tokenizer.model"])
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for rel in ("tokenizer.model", os.path.join("tokenizer", "tokenizer.model")):
        p = os.path.join(directory, rel)
        check_member(directory, rel)
        if os.path.isfile(p):
            return Tokenizer(source=directory, spm_path=p)
    return None


# ----------------------------------------------------------------------------- writing
def _storage_type(dtype: str) -> Any:
    import torch

    return {"float32": torch.FloatStorage, "bfloat16": torch.BFloat16Storage, "float16": torch.HalfStorage}[dtype]


class _StorageStub:
    """Stands for a storage in the pickle: torch.load finds the bytes in the record `data/<key>`."""

    def __init__(self, key: str, dtype: str, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorStub:
    """Pickles exactly as a contiguous CPU tensor does (torch._utils._rebuild_tensor_v2), without the data."""

    def __init__(self, storage: _StorageStub, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol: int) -> Any:
        import torch._utils

        stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, tuple(self.shape), stride, False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _StorageStub):
            return ("storage", _storage_type(obj.dtype), obj.key, "cpu", obj.numel)
        return None


def _save_streaming(dest: str, obj: Any, records: list[tuple[str, int, Callable[[], np.ndarray]]],
                    progress: Callable[[int], None]) -> None:
    """Write torch.save's zip format with torch's own zip writer: the pickle (tensors as stubs) first, then
    each tensor's bytes as its own record, produced one at a time, so only one tensor is ever in memory."""
    import io

    import torch

    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    data = buf.getvalue()
    with open(dest, "wb") as f:
        out = _WriteGuard(f)
        writer = torch._C.PyTorchFileWriter(out, True, 64)
        try:
            writer.write_record("data.pkl", data, len(data))
            writer.write_record(".format_version", "1", 1)
            writer.write_record(".storage_alignment", "64", 2)
            writer.write_record("byteorder", "little", 6)
            for key, nbytes, produce in records:
                out.check()
                arr = np.ascontiguousarray(produce())
                if arr.nbytes != nbytes:  # pragma: no cover - a planning bug
                    raise UnsupportedError(f"record {key}: produced {arr.nbytes} bytes, planned {nbytes}")
                storage = torch.from_numpy(arr.reshape(-1).view(np.uint8)).untyped_storage()
                writer.write_record(f"data/{key}", storage, arr.nbytes)
                progress(arr.nbytes)
                del arr
            out.check()
        except BaseException:
            out.discard = True  # finish the archive into the void, so that the destructor has nothing to do
            writer.write_end_of_file()
            raise
        writer.write_end_of_file()
        out.check()


class _WriteGuard:
    """The file torch's zip writer writes through. An unfinished writer finishes the archive in its C++
    destructor, and an error there (a closed file, a full disk, Ctrl-C inside a write) is thrown from a
    destructor: std::terminate, the process aborts with a C++ trace. So nothing raises into the writer: the
    first error (KeyboardInterrupt included) is kept and raised by `check()`, later writes are dropped, and the
    writer is always finished."""

    def __init__(self, f: Any):
        self.f, self.error, self.discard = f, None, False

    def write(self, b: Any) -> int:
        n = len(b) if isinstance(b, (bytes, bytearray)) else memoryview(b).nbytes
        if self.error is None and not self.discard:
            try:
                self.f.write(b)
            except BaseException as e:  # noqa: B036 - see the class docstring
                self.error = e
        return n

    def flush(self) -> None:
        pass

    def check(self) -> None:
        if self.error is not None:
            self.discard = True
            raise self.error


def write(ckpt: Checkpoint, dest: str, options: Any, progress: Callable[[int], None]) -> None:
    """Write a `.ckpt` that gemma_pytorch's `load_weights` accepts: {"model_state_dict": {...}} with the fused
    qkv_proj, plus our configuration and tokenizer under "gemma_inspect" (which gemma_pytorch ignores).
    Streams one tensor at a time."""
    from ..tensorio import cast_array
    from .safetensors_io import ITEMSIZE
    from .hf import config_dict

    spec = ckpt.spec
    if not spec.is_gemma:
        raise UnsupportedError(f"{spec.family} checkpoints cannot be written as gemma_pytorch")
    if not spec.tied_embeddings:
        raise UnsupportedError("gemma_pytorch always uses the embedding as the output projection; this checkpoint "
                               "has a separate lm_head")
    cfg = config_dict(spec)  # refuses what the family layout cannot express

    out_dtype = options.float_dtype
    names = names_for(spec.family)
    state: dict[str, _TensorStub] = {}
    records: list[tuple[str, int, Callable[[], np.ndarray]]] = []

    def add(name: str, shape: tuple[int, ...], dtype: str, produce: Callable[[], np.ndarray]) -> None:
        key = str(len(records))
        numel = int(np.prod(shape))
        state[name] = _TensorStub(_StorageStub(key, dtype, numel), shape)
        records.append((key, numel * ITEMSIZE[dtype], produce))

    def cast(ref: TensorRef, dtype: str) -> Callable[[], np.ndarray]:
        return lambda: cast_array(ref.load(), dtype)  # quantized refs load as float32

    emb = ckpt.tensors[canonical_name("embed", None)]
    add(names["embed"], tuple(emb.shape), out_dtype(emb), cast(emb, out_dtype(emb)))
    for i in range(spec.num_layers):
        for role in _layer_roles_in_order(spec):
            if role == "qkv":
                refs = [ckpt.tensors[canonical_name(r, i)] for r in QKV_ROLES]
                dtype = out_dtype(refs[0])
                rows = sum(r.shape[0] for r in refs)
                add(QKV.format(i=i), (rows, spec.hidden_size), dtype,
                    lambda refs=refs, dtype=dtype: np.concatenate([cast(r, dtype)() for r in refs], axis=0))
            else:
                ref = ckpt.tensors[canonical_name(role, i)]
                add(names[role].format(i=i), tuple(ref.shape), out_dtype(ref), cast(ref, out_dtype(ref)))
    norm = ckpt.tensors[canonical_name("final_norm", None)]
    add(names["final_norm"], tuple(norm.shape), out_dtype(norm), cast(norm, out_dtype(norm)))

    extra: dict[str, Any] = {"config": cfg}
    tok = ckpt.tokenizer
    model_bytes = None
    if tok is not None:
        model_bytes, _rebuilt = tok.spm_or_rebuilt()
    if model_bytes is not None:
        extra["tokenizer.model"] = model_bytes
        options.notes.append(f"the SentencePiece model is embedded in the .ckpt under {EXTRA_KEY!r} "
                             f"(gemma_pytorch itself loads tokenizer.model from the path its config names)")
    elif tok is not None:
        options.notes.append("the source tokenizer has no SentencePiece model and none could be rebuilt: "
                             "no tokenizer written")
    else:
        options.notes.append("the source has no tokenizer: weights and configuration written, no tokenizer")
    _save_streaming(dest, {STATE_KEY: state, EXTRA_KEY: extra}, records, progress)


def _layer_roles_in_order(spec: GemmaSpec) -> list[str]:
    from ..checkpoint import layer_roles

    out: list[str] = []
    for role in layer_roles(spec):
        if role in QKV_ROLES:
            if "qkv" not in out:
                out.append("qkv")
        else:
            out.append(role)
    return out


# ----------------------------------------------------------------------------- the format contract (common.FormatInfo)
from .common import FormatInfo  # noqa: E402

FORMAT = FormatInfo(
    name="gemma-pytorch", title="gemma_pytorch", description="a gemma_pytorch .ckpt", stores_quantization=False,
    native_runtime=None,
    member_files=(INDEX, *SIDE_CONFIGS, "tokenizer.model", os.path.join("tokenizer", "tokenizer.model")),
    weight_files=(INDEX,), weight_suffixes=(".ckpt",), file_suffixes=(".ckpt", ".pt", ".pth", ".bin"))
