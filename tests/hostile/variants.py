"""Hostile variants of real checkpoint files, generated systematically from a seed.

Each `Variant` replaces one file of a checkpoint (by its new bytes) or edits the checkpoint tree (a symlink,
a FIFO, a missing file). Generators know each format's structure: where its length and count fields sit,
where headers end, what a tensor entry holds. The same seed gives the same variants, so a failure names a
variant that can be rebuilt; a larger `n` (the slow sweep) simply draws more of them.
"""

from __future__ import annotations

import json
import os
import random
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterable


@dataclass(frozen=True)
class Variant:
    label: str  # what was done, for the failure message
    file: str  # the file it changes, relative to the checkpoint root ("" = the root itself)
    data: bytes | None = None  # the file's new content; None: `edit` changes the tree
    edit: Callable[[str], None] | None = None  # edits a copy of the checkpoint rooted at its argument
    must_fail: bool = True  # False: the change may be harmless (a flipped byte inside tensor data)


# Values that break assumptions: wrong types, signs, magnitudes, non-finite numbers, containers.
HOSTILE_VALUES: tuple[Any, ...] = (None, True, False, -1, 0, 1, 3, 2**31, 2**63, 10**40, -2.0, 0.5, 1e308,
                                   float("nan"), float("inf"), "", "x", "64", [], [1, 2], {}, {"a": 1})
# Little-endian integer fields: zero, small, just around the file size, and far beyond anything real.
def hostile_ints(size: int) -> tuple[int, ...]:
    return (0, 1, 2, 7, size - 1, size, size + 1, 2**31 - 1, 2**32, 2**40, 2**62, 2**63, 2**64 - 1)


# ----------------------------------------------------------------------------- bytes
def truncations(file: str, data: bytes, rng: random.Random, n: int, landmarks: Iterable[int] = ()) -> list[Variant]:
    """`data` cut at fixed landmarks (0, 1, header boundaries, ...) and at `n` seeded offsets."""
    size = len(data)
    cuts = {0, 1, size // 2, size - 1, *(c for c in landmarks if 0 <= c < size)}
    cuts.update(rng.randrange(size) for _ in range(n))
    # Cutting off nothing but trailing whitespace (a JSON file's last newline) is harmless.
    return [Variant(f"{file}: cut to {c} of {size} bytes", file, data[:c], must_fail=bool(data[c:].strip()))
            for c in sorted(cuts)]


def flips(file: str, data: bytes, rng: random.Random, n: int, lo: int = 0, hi: int | None = None,
          must_fail: bool = False, what: str = "") -> list[Variant]:
    """`n` variants, each with one byte in [lo, hi) XOR-ed with a random non-zero value."""
    hi = len(data) if hi is None else hi
    out = []
    for _ in range(n):
        pos = rng.randrange(lo, hi)
        x = rng.randrange(1, 256)
        b = bytearray(data)
        b[pos] ^= x
        out.append(Variant(f"{file}: {what}byte {pos} ^= {x:#04x}", file, bytes(b), must_fail=must_fail))
    return out


def patch_uint(file: str, data: bytes, offset: int, fmt: str, values: Iterable[int], what: str,
               must_fail: bool = True) -> list[Variant]:
    """The integer field at `offset` (struct format `fmt`, e.g. '<Q') set to each of `values`."""
    width = struct.calcsize(fmt)
    (orig,) = struct.unpack_from(fmt, data, offset)
    limit = 2 ** (8 * width)
    out = []
    for v in dict.fromkeys(values):
        if v == orig or not 0 <= v < limit:
            continue
        new = data[:offset] + struct.pack(fmt, v) + data[offset + width:]
        out.append(Variant(f"{file}: {what} {orig} -> {v}", file, new, must_fail=must_fail))
    return out


# ----------------------------------------------------------------------------- safetensors
def split_safetensors(data: bytes) -> tuple[dict[str, Any], bytes]:
    (hlen,) = struct.unpack_from("<Q", data)
    return json.loads(data[8:8 + hlen]), data[8 + hlen:]


def join_safetensors(header: dict[str, Any] | bytes, body: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def safetensors_variants(file: str, data: bytes, rng: random.Random, n: int) -> list[Variant]:
    """Truncations, header byte flips, absurd header lengths, and entry-by-entry lies in the JSON header:
    dtypes, shapes, offsets (reversed, overlapping, outside the data), duplicated and renamed tensors."""
    header, body = split_safetensors(data)
    (hlen,) = struct.unpack_from("<Q", data)
    names = [k for k in header if k != "__metadata__"]
    spans = sorted((v["data_offsets"][0], v["data_offsets"][1], k) for k, v in header.items() if k != "__metadata__")
    marks = [7, 8, 9, 8 + hlen // 2, 8 + hlen - 1, 8 + hlen, 8 + hlen + 1]
    for b, e, _ in spans[:: max(1, len(spans) // 6)]:
        marks += [8 + hlen + b + 1, 8 + hlen + e - 1]
    out = truncations(file, data, rng, n, marks)
    out += flips(file, data, rng, n, 0, 8 + hlen, what="header ")
    out += flips(file, data, rng, max(2, n // 4), 8 + hlen, len(data), what="tensor data ")
    out += patch_uint(file, data, 0, "<Q", [*hostile_ints(len(data)), hlen - 1, hlen + 1, len(data) - 8,
                                            len(data) - 7], "header length")

    def mutated(label: str, edit: Callable[[dict[str, Any]], Any], must_fail: bool = True) -> None:
        h = json.loads(json.dumps(header))
        result = edit(h)
        raw = result if isinstance(result, bytes) else None
        out.append(Variant(f"{file}: {label}", file, join_safetensors(raw if raw is not None else h, body),
                           must_fail=must_fail))

    picked = sorted({names[0], names[-1], *rng.sample(names, min(len(names), 2 + n // 8))}, key=names.index)
    data_size = len(body)
    for name in picked:
        e = header[name]
        b, end = e["data_offsets"]
        shape = e["shape"]
        for dtype in ("BF16", "F16", "F64", "I8", "U8", "BOOL", "I64", "F8_E4M3", "f32", "", None, 4, ["F32"]):
            if dtype != e["dtype"]:
                mutated(f"{name}: dtype {e['dtype']} -> {dtype!r}", lambda h, d=dtype: h[name].update(dtype=d))
        shapes = [shape[::-1], shape + [1], shape[:-1], [0], [], [-1], [2**40], [2**63], [1.5], ["4"], None, {},
                  [True], [shape], [1] * 9, [s * 2 for s in shape]]
        for s in shapes:
            if s != shape:
                mutated(f"{name}: shape {shape} -> {s!r}", lambda h, s=s: h[name].update(shape=s))
        prev_end = max((e1 for b1, e1, _ in spans if e1 <= b and e1 > 0), default=0)
        offsets = [[end, b], [0, 0], [b + 1, end + 1], [b, end + 4], [b - 4, end - 4], [b, data_size + 1],
                   [data_size, data_size + end - b], [-8, end], [b, 2**64], [1.5, 2], None, [b], [b, end, end],
                   ["0", str(end)], [prev_end - 4, prev_end - 4 + end - b]]
        for o in offsets:
            if o != [b, end]:
                mutated(f"{name}: data_offsets {[b, end]} -> {o!r}", lambda h, o=o: h[name].update(data_offsets=o))
        mutated(f"{name}: removed", lambda h: h.pop(name))
        mutated(f"{name}: entry is a list", lambda h: h.update({name: list(h[name].values())}))
        mutated(f"{name}: copied as 'model.extra.weight' over the same bytes",
                lambda h: h.update({"model.extra.weight": dict(h[name])}))
        other = names[(names.index(name) + 1) % len(names)]
        if other != name:
            mutated(f"{name}: renamed to {other!r} (a duplicate name)", lambda h, o=other: _rename(h, name, o))
        # A duplicated key in the JSON text: json.loads keeps the last one silently.
        mutated(f"{name}: key written twice", lambda h: _duplicate_key(h, name, {"dtype": "F32", "shape": [1],
                                                                                    "data_offsets": [0, 4]}))
    mutated("header is a list", lambda h: b"[]")
    mutated("header is a string", lambda h: b'"x"')
    mutated("header nested 100000 deep", lambda h: b"[" * 100_000 + b"]" * 100_000)
    mutated("__metadata__ is a list", lambda h: h.update(__metadata__=[1, 2]))
    mutated("__metadata__ holds objects", lambda h: h.update(__metadata__={"format": {"a": [1]}}), must_fail=False)
    mutated("header is not UTF-8", lambda h: json.dumps(h).encode().replace(b'"', b'"\xff', 1))
    mutated("NUL bytes in a name", lambda h: _rename(h, names[0], names[0] + "\x00"))
    layered = next((n for n in names if n.startswith("model.layers.")), None)
    if layered is not None:
        i = layered.split(".")[2]
        for index in ("9" * 5000, "999999", "-1", "01"):
            mutated(f"{layered}: layer index {index[:12]}{'...' if len(index) > 12 else ''}",
                    lambda h, x=index: _rename(h, layered, layered.replace(f".{i}.", f".{x}.", 1)))
    return out


def _rename(h: dict[str, Any], old: str, new: str) -> bytes:
    """The header with `old` renamed to `new`, written as JSON text (so a duplicate name stays duplicated)."""
    items = [(new if k == old else k, v) for k, v in h.items()]
    return ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in items) + "}").encode()


def _duplicate_key(h: dict[str, Any], name: str, first: dict[str, Any]) -> bytes:
    items = [(name, first)] + list(h.items())
    return ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in items) + "}").encode()


# ----------------------------------------------------------------------------- JSON files
def json_key_paths(obj: Any, prefix: tuple = (), depth: int = 2) -> list[tuple]:
    """Paths (tuples of keys) to every value of a JSON object, `depth` levels deep."""
    out = []
    if isinstance(obj, dict) and depth:
        for k, v in obj.items():
            out.append(prefix + (k,))
            out += json_key_paths(v, prefix + (k,), depth - 1)
    return out


def _set(obj: Any, path: tuple, value: Any, delete: bool = False) -> None:
    for k in path[:-1]:
        obj = obj[k]
    if delete:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


def json_variants(file: str, data: bytes, rng: random.Random, n: int, values_per_key: int | None = None,
                  depth: int = 2, must_fail: bool = False) -> list[Variant]:
    """Each key (to `depth` levels) deleted or set to hostile values; truncations and byte flips of the text;
    absurd nesting and sizes. Most of these must fail; a few (an unused key) are harmless."""
    obj = json.loads(data)
    out = truncations(file, data, rng, max(2, n // 4), [1, len(data) - 2])
    out += flips(file, data, rng, max(2, n // 4), what="")
    for path in json_key_paths(obj, depth=depth):
        label = ".".join(str(p) for p in path)
        values = list(HOSTILE_VALUES)
        if values_per_key is not None:
            values = rng.sample(values, min(values_per_key, len(values)))
        for v in values:
            o = json.loads(data)
            _set(o, path, v)
            out.append(Variant(f"{file}: {label} = {v!r}", file, json.dumps(o).encode(), must_fail=must_fail))
        o = json.loads(data)
        _set(o, path, None, delete=True)
        out.append(Variant(f"{file}: {label} deleted", file, json.dumps(o).encode(), must_fail=must_fail))
    out.append(Variant(f"{file}: nested 100000 deep", file, b"[" * 100_000 + b"]" * 100_000))
    out.append(Variant(f"{file}: a list", file, b"[1, 2]"))
    out.append(Variant(f"{file}: empty", file, b""))
    out.append(Variant(f"{file}: UTF-16", file, data.decode().encode("utf-16")))
    out.append(Variant(f"{file}: 3 million empty arrays", file, b"[" + b"[]," * 3_000_000 + b"[]]"))
    return out


# ----------------------------------------------------------------------------- trees
def tree_variants(file: str, outside: str, must_fail: bool = True) -> list[Variant]:
    """`file` replaced by: a symlink out of the checkpoint (to a real copy of itself), a link to /dev/zero,
    a FIFO (opening it would block forever), a directory, nothing."""

    def link_out(root: str) -> None:
        p = os.path.join(root, file)
        target = os.path.join(outside, os.path.basename(file) + ".outside")
        os.makedirs(outside, exist_ok=True)
        os.replace(p, target)
        os.symlink(target, p)

    def replace_with(make: Callable[[str], None]) -> Callable[[str], None]:
        def edit(root: str) -> None:
            p = os.path.join(root, file)
            os.remove(p)
            make(p)
        return edit

    return [
        Variant(f"{file}: symlink to a copy outside the checkpoint", file, edit=link_out, must_fail=must_fail),
        Variant(f"{file}: symlink to /dev/zero", file, edit=replace_with(lambda p: os.symlink("/dev/zero", p)),
                must_fail=must_fail),
        Variant(f"{file}: a FIFO", file, edit=replace_with(os.mkfifo), must_fail=must_fail),
        Variant(f"{file}: a directory", file, edit=replace_with(os.mkdir), must_fail=must_fail),
        Variant(f"{file}: missing", file, edit=replace_with(lambda p: None), must_fail=must_fail),
    ]


# ----------------------------------------------------------------------------- GGUF
_GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_fields(data: bytes) -> tuple[list[tuple[str, int, str]], int]:
    """Every length, count, type, dimension and offset field of a GGUF header as (label, byte offset, struct
    format), found by walking the header; and the end of the tensor infos."""
    fields: list[tuple[str, int, str]] = [("version", 4, "<I"), ("tensor count", 8, "<Q"), ("key count", 16, "<Q")]
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)

    def string(label: str) -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        fields.append((f"length of {label}", pos, "<Q"))
        s = data[pos + 8:pos + 8 + n].decode()
        pos += 8 + n
        return s

    for _ in range(n_kv):
        key = string("a key")
        (vtype,) = struct.unpack_from("<I", data, pos)
        fields.append((f"value type of {key}", pos, "<I"))
        pos += 4
        if vtype == 8:
            string(f"{key}")
        elif vtype == 9:
            itype, count = struct.unpack_from("<IQ", data, pos)
            fields += [(f"element type of {key}", pos, "<I"), (f"element count of {key}", pos + 4, "<Q")]
            pos += 12
            if itype == 8:
                for j in range(count):
                    if j in (0, count // 2, count - 1):
                        string(f"{key}[{j}]")
                    else:
                        (n,) = struct.unpack_from("<Q", data, pos)
                        pos += 8 + n
            else:
                pos += count * struct.calcsize(_GGUF_SCALAR[itype])
        else:
            pos += struct.calcsize(_GGUF_SCALAR[vtype])
    for _ in range(n_tensors):
        name = string("a tensor name")
        (n_dims,) = struct.unpack_from("<I", data, pos)
        fields.append((f"dimension count of {name}", pos, "<I"))
        pos += 4
        for d in range(n_dims):
            fields.append((f"dimension {d} of {name}", pos, "<Q"))
            pos += 8
        fields += [(f"type of {name}", pos, "<I"), (f"offset of {name}", pos + 4, "<Q")]
        pos += 12
    return fields, pos


def gguf_variants(file: str, data: bytes, rng: random.Random, n: int, fields_per_run: int) -> list[Variant]:
    """Truncations (inside the header, at tensor boundaries), header and data byte flips, and every kind of
    header field - lengths, counts, value and tensor types, dimensions, offsets - set to hostile values."""
    fields, header_end = gguf_fields(data)
    out = truncations(file, data, rng, n, [4, 8, 16, 23, 24, 25, header_end - 1, header_end, header_end + 1])
    out += flips(file, data, rng, n, 0, header_end, what="header ")
    out += flips(file, data, rng, max(2, n // 4), header_end, len(data), what="tensor data ")
    size = len(data)
    u32 = (0, 1, 2, 3, 7, 8, 9, 12, 13, 14, 30, 31, 99, 2**31, 2**32 - 1)
    picked = fields[:3] + rng.sample(fields[3:], min(len(fields) - 3, fields_per_run))
    for label, offset, fmt in picked:
        values = hostile_ints(size) if fmt == "<Q" else u32
        out += patch_uint(file, data, offset, fmt, values, label, must_fail=False)
    return out
