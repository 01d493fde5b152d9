"""PyTorch checkpoints, read and written safely: the machinery under gemma_pytorch's format, free of its names.

Reading: before `torch.load` sees a file, `check_container` reads it as torch will (zip archive or the legacy
format of several pickles) and refuses what would make the weights_only unpickler allocate far more than the
file holds or spin for minutes; `torch_load` then unpickles with weights_only=True (a pickle that references
anything but tensors and plain containers is refused and nothing in it runs); `check_state_dict` accepts only
str -> dense CPU tensor, each a contiguous run of its own storage bytes. Writing: `save_streaming` writes
torch.save's zip format with torch's own writer, the pickle first (tensors as stubs), then one tensor's bytes
at a time.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import struct
import sys
import warnings
from typing import Any, Callable

import numpy as np

from ..errors import InputError, UnsupportedError

# torch dtype -> the dtype name of a float tensor
TORCH_FLOAT_NAMES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


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


def check_container(path: str) -> None:
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


def torch_load(path: str) -> Any:
    """`torch.load(weights_only=True, mmap=True)`, falling back to no mmap only for the legacy (non-zip)
    format, which cannot be mapped; errors become InputErrors naming the file."""
    import torch

    check_container(path)

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


def check_state_dict(state: dict[Any, Any], path: str) -> None:
    """Every entry must be str -> a dense CPU tensor over its own storage bytes (see check_views)."""
    import torch

    for k, v in state.items():
        if not isinstance(k, str):
            raise InputError(path, f"state dict key {k!r} is not a string")
        if not isinstance(v, torch.Tensor):
            raise InputError(path, f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        # weights_only admits sparse and meta tensors too; neither holds values to read.
        if v.layout != torch.strided or v.device.type != "cpu" or v.is_nested:
            kind = f"on the {v.device.type} device" if v.device.type != "cpu" else f"a {v.layout} tensor"
            raise InputError(path, f"state dict entry {k!r} is {kind}; expected dense tensors")
    check_views(state, path)


def check_views(state: dict[str, Any], path: str) -> None:
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


# ----------------------------------------------------------------------------- tensors -> numpy
def to_numpy(t: Any) -> np.ndarray:
    """A view of a CPU tensor as numpy (bfloat16 as ml_dtypes.bfloat16); no copy for mapped tensors."""
    import torch

    t = t.detach()  # an nn.Parameter unpickles with requires_grad
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.contiguous().numpy()


# ----------------------------------------------------------------------------- writing torch.save's format
def _storage_type(dtype: str) -> Any:
    import torch

    return {"float32": torch.FloatStorage, "bfloat16": torch.BFloat16Storage, "float16": torch.HalfStorage}[dtype]


class StorageStub:
    """Stands for a storage in the pickle: torch.load finds the bytes in the record `data/<key>`."""

    def __init__(self, key: str, dtype: str, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class TensorStub:
    """Pickles exactly as a contiguous CPU tensor does (torch._utils._rebuild_tensor_v2), without the data."""

    def __init__(self, storage: StorageStub, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol: int) -> Any:
        import torch._utils

        stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, tuple(self.shape), stride, False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, StorageStub):
            return ("storage", _storage_type(obj.dtype), obj.key, "cpu", obj.numel)
        return None


def save_streaming(dest: str, obj: Any, records: list[tuple[str, int, Callable[[], np.ndarray]]],
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

