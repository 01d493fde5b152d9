"""Second round of hostile pickles (issue 17): tensors that are views of fewer bytes than they claim (stride 0,
overlapping, transposed), pickle records that two readers would pick differently (a decoy data.pkl, a zip end
record appended to a legacy pickle, duplicate names), dicts whose keys collide in Python's hash, zip central
directories that disagree with their end record, legacy storages declaring more than the file, and byte order.
Each class is swept through the library; the cases the issue measured run as commands in their own process,
timed and with their peak memory compared with a normal tiny checkpoint's."""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import zipfile

import numpy as np
import pytest
import torch


from files import read_bytes

from .conftest import sweep
from .round2 import MB, refused, run
from .variants import Variant

EMBED = "embedder.weight"
QKV = "model.layers.1.self_attn.qkv_proj.weight"
NORM0 = "model.layers.0.input_layernorm.weight"
NORM1 = "model.layers.1.input_layernorm.weight"
GATE = "model.layers.0.mlp.gate_proj.weight"


@pytest.fixture(scope="module")
def baseline(ckpt_file, tmp_path_factory):
    """`summary --scan` of the normal tiny .ckpt (imports torch, reads every tensor)."""
    r = run(["summary", ckpt_file, "--scan"], str(tmp_path_factory.mktemp("round2-baseline")))
    assert r.code == 0, r.err
    return r


def _saved(obj: object, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _zip(records: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, data in records:
            z.writestr(name, data)
    return out.getvalue()


def _records(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


# ----------------------------------------------------------------------------- views (item 5)
def view_states(sd: dict) -> list[tuple[str, dict]]:
    """State dicts whose tensors claim more bytes than their storage gives them, each way a view can."""
    out = []
    one = torch.zeros(1)

    def changed(label: str, **tensors: torch.Tensor) -> None:
        new = dict(sd)
        new.update({k.replace("__", "."): v for k, v in tensors.items()})
        out.append((label, new))

    e, q, n0, g = sd[EMBED], sd[QKV], sd[NORM0], sd[GATE]
    out.append(("every tensor a stride-0 view of one 4-byte storage",
                {k: one.to(v.dtype).expand(v.shape) for k, v in sd.items()}))
    out.append(("the embedding a stride-0 view of one float", {**sd, EMBED: one.expand(e.shape)}))
    out.append(("the embedding its first row repeated (stride 0 on rows)", {**sd, EMBED: e[:1].expand(e.shape)}))
    out.append(("the embedding transposed twice, not contiguous", {**sd, EMBED: e.T.contiguous().T}))
    out.append(("qkv a strided view (every other row of a twice-as-long storage)",
                {**sd, QKV: torch.stack([q, q], 1).reshape(2 * q.shape[0], q.shape[1])[::2]}))
    out.append(("qkv through as_strided with overlapping rows",
                {**sd, QKV: q.reshape(-1)[: q.shape[1] + q.shape[0]].as_strided(q.shape, (1, 1))}))
    base = torch.arange(2 * n0.numel(), dtype=n0.dtype)
    out.append(("two norms over the same bytes", {**sd, NORM0: base[: n0.numel()], NORM1: base[: n0.numel()]}))
    out.append(("two norms overlapping by half", {**sd, NORM0: base[: n0.numel()],
                                                  NORM1: base[n0.numel() // 2: n0.numel() // 2 + n0.numel()]}))
    flat = torch.zeros(g.numel() + e.numel())
    out.append(("the gate and the embedding overlapping in one storage",
                {**sd, GATE: flat[: g.numel()].view(g.shape), EMBED: flat[1: 1 + e.numel()].view(e.shape)}))
    return out


def test_views_of_fewer_bytes_are_refused(ckpt_file, copy_dir, tmp_path):
    path = copy_dir(ckpt_file, "model.ckpt")
    obj = torch.load(path, weights_only=True)
    variants = []
    for label, sd in view_states(obj["model_state_dict"]):
        o = {**obj, "model_state_dict": sd}
        variants.append(Variant(label, "", _saved(o)))
        variants.append(Variant(f"{label} (legacy format)", "", _saved(o, legacy=True)))
    results = sweep("gemma_pytorch views (round 2)", path, variants, str(tmp_path))
    assert not results["ok"]
    for v, msg in results["error"]:
        assert "not a contiguous tensor" in msg or "share bytes of one storage" in msg, (v.label, msg)


def _stride0_bomb(obj: dict, vocab: int) -> dict:
    """The issue's file: every tensor a stride-0 view of one 4-byte storage, the embedding `vocab` rows."""
    sd = obj["model_state_dict"]
    one = torch.zeros(1)
    new = {k: one.to(v.dtype).expand(v.shape) for k, v in sd.items()}
    new[EMBED] = one.expand(vocab, sd[EMBED].shape[1])
    extra = {k: v for k, v in obj["gemma_inspect"].items() if k != "tokenizer.model"}
    extra["config"] = {**extra["config"], "vocab_size": vocab}
    return {"model_state_dict": new, "gemma_inspect": extra}


def test_stride0_bomb_is_refused_fast_and_small(ckpt_file, baseline, tmp_path):
    """A kilobyte-sized .ckpt declaring a 1 GB embedding: `summary --scan` and `convert` refuse it before
    expanding anything, and `convert` writes nothing."""
    obj = torch.load(ckpt_file, weights_only=True)
    path = str(tmp_path / "bomb.ckpt")
    with open(path, "wb") as f:
        f.write(_saved(_stride0_bomb(obj, vocab=(1 << 30) // 4 // obj["model_state_dict"][EMBED].shape[1])))
    assert os.path.getsize(path) < 64 * 1024
    msg = f"tensor {EMBED!r} of shape"
    refused(["summary", path, "--scan"], str(tmp_path), msg, baseline)
    refused(["convert", path, str(tmp_path / "out"), "--to", "hf"], str(tmp_path), msg, baseline)
    refused(["convert", path, str(tmp_path / "out.ckpt"), "--to", "gemma-pytorch"], str(tmp_path), msg, baseline)
    assert sorted(os.listdir(tmp_path)) == ["bomb.ckpt"]


# ----------------------------------------------------------------------------- which pickle (item 6a, 6b)
EMPTY_LISTS = b"\x80\x02]" + b"]a" * (20 * MB) + b"."  # 40 MB of pickle, 20 million lists (1.1 GB) if built


def decoy_variants(data: bytes) -> list[Variant]:
    """Zip archives whose pickle record a reader could choose differently from torch."""
    recs = _records(data)
    prefix = recs[0][0].split("/", 1)[0]
    pkl = dict(recs)[f"{prefix}/data.pkl"]
    rest = [(n, d) for n, d in recs if n != f"{prefix}/data.pkl"]
    bomb = b"\x80\x02]" + b"]a" * 1_100_000 + b"."  # just over the opcode limit
    out = [
        ("a decoy <folder>/decoy/data.pkl listed before the real one",
         [(f"{prefix}/decoy/data.pkl", pkl), (f"{prefix}/data.pkl", bomb), *rest]),
        ("a decoy listed after the real one", [(f"{prefix}/data.pkl", bomb), *rest, (f"{prefix}/x/data.pkl", pkl)]),
        ("a second pickle of another name", [(f"{prefix}/data.pkl", pkl), *rest, (f"{prefix}/constants.pkl", bomb)]),
        ("data.pkl listed twice", [(f"{prefix}/data.pkl", pkl), *rest, (f"{prefix}/data.pkl", bomb)]),
        ("data.pkl and DATA.PKL (torch's reader ignores case)",
         [(f"{prefix}/data.pkl", pkl), *rest, (f"{prefix}/DATA.PKL", bomb)]),
        ("the real pickle outside the first record's folder",
         [(f"{prefix}/byteorder", b"little"), ("other/data.pkl", pkl),
          *[r for r in rest if r[0] != f"{prefix}/byteorder"]]),
        ("the first record not in a folder", [("data.pkl", pkl), *rest]),
    ]
    import warnings

    variants = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        for label, records in out:
            variants.append(Variant(label, "", _zip(records)))
    return variants


def test_the_pickle_record_is_the_one_torch_reads(ckpt_file, copy_dir, tmp_path):
    path = copy_dir(ckpt_file, "model.ckpt")
    results = sweep("gemma_pytorch pickle record (round 2)", path, decoy_variants(read_bytes(path)), str(tmp_path))
    assert not results["ok"]
    for v, msg in results["error"]:  # refused from the archive's layout, before torch opens it
        assert "not a readable PyTorch checkpoint (zip archive: " in msg, (v.label, msg)


def _zip_end(entries: int = 0, cd_size: int = 0, cd_offset: int = 0) -> bytes:
    return b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, entries, entries, cd_size, cd_offset, 0)


def legacy_variants(obj: dict) -> list[Variant]:
    """Legacy (non-zip) pickles with zip records appended: torch reads them as legacy files (their first bytes
    are no zip local header), so their pickles are what is checked."""
    legacy = _saved(obj, legacy=True)
    tiny_zip = _saved({"model_state_dict": {}})
    bomb = b"\x80\x02]" + b"]a" * 1_100_000 + b"."
    return [
        Variant("a legacy pickle bomb with an empty zip end record appended", "", bomb + _zip_end()),
        Variant("a legacy pickle bomb with a whole zip archive appended", "", bomb + tiny_zip),
        Variant("a legacy pickle bomb after the magic number, zip end appended", "",
                legacy[:legacy.index(b".") + 1] + bomb + _zip_end()),
        Variant("a legacy checkpoint with an empty zip end record appended", "", legacy + _zip_end(),
                must_fail=False),
    ]


def test_zip_or_legacy_as_torch_decides(ckpt_file, copy_dir, tmp_path):
    path = copy_dir(ckpt_file, "model.ckpt")
    obj = torch.load(path, weights_only=True)
    results = sweep("gemma_pytorch zip or legacy (round 2)", path, legacy_variants(obj), str(tmp_path))
    for v, msg in results["error"]:
        assert "opcodes" in msg, (v.label, msg)
    assert [v.label for v, _ in results["ok"]] == ["a legacy checkpoint with an empty zip end record appended"]


@pytest.mark.parametrize("case", ["decoy", "legacy + zip end"])
def test_opcode_limit_bypasses_are_refused_fast_and_small(ckpt_file, baseline, tmp_path, case):
    """The issue's two bypasses of the opcode limit (1.7 GB and 76 s before)."""
    path = str(tmp_path / "evil.ckpt")
    with open(path, "wb") as f:
        if case == "decoy":
            recs = _records(read_bytes(ckpt_file))
            prefix = recs[0][0].split("/", 1)[0]
            pkl = dict(recs)[f"{prefix}/data.pkl"]
            f.write(_zip([(f"{prefix}/decoy/data.pkl", pkl), (f"{prefix}/data.pkl", EMPTY_LISTS),
                          *[r for r in recs if r[0] != f"{prefix}/data.pkl"]]))
        else:
            f.write(EMPTY_LISTS + _zip_end())
    msg = "a second pickle record" if case == "decoy" else "the pickle has more than 1000000 opcodes"
    refused(["summary", path], str(tmp_path), msg, baseline)


# ----------------------------------------------------------------------------- dict keys (item 6)
COLLIDING = [i * (2**61 - 1) + 7 for i in range(100_000)]  # hash(k) == 7 for every one: quadratic insertion


def _long1(v: int) -> bytes:
    b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(b)]) + b


def _dict_pickle(keys: list[bytes], value: bytes = b"N", setitem: bool = False) -> bytes:
    if setitem:
        return b"\x80\x02}" + b"".join(k + value + b"s" for k in keys) + b"."
    return b"\x80\x02}(" + b"".join(k + value for k in keys) + b"u."


def _unicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def key_variants(data: bytes) -> list[Variant]:
    recs = _records(data)
    prefix = recs[0][0].split("/", 1)[0]
    rest = [r for r in recs if r[0] != f"{prefix}/data.pkl"]
    cases = {
        "100,000 integer keys colliding in Python's hash": _dict_pickle([_long1(k) for k in COLLIDING]),
        "one integer key": _dict_pickle([_long1(7)]),
        "an integer key by SETITEM": _dict_pickle([b"K\x07"], setitem=True),
        "a tuple key": _dict_pickle([b"K\x01K\x02\x86"]),
        "a float key": _dict_pickle([b"G" + struct.pack(">d", 1.5)]),
        "a None key": _dict_pickle([b"N"]),
        "a bool key": _dict_pickle([b"\x88"]),
        "integer keys in a nested dict": b"\x80\x02}(" + _unicode("model_state_dict") + _dict_pickle(
            [_long1(k) for k in COLLIDING[:1000]])[2:-1] + b"u.",
        "integer keys in an OrderedDict": b"\x80\x02ccollections\nOrderedDict\n)R(" + b"".join(
            _long1(k) + b"N" for k in COLLIDING[:1000]) + b"u.",
        "100,001 string keys": _dict_pickle([_unicode(f"k{i}") for i in range(100_001)]),
    }
    out = []
    for label, pkl in cases.items():
        out.append(Variant(f"zip: {label}", "", _zip([(f"{prefix}/data.pkl", pkl), *rest])))
        out.append(Variant(f"legacy: {label}", "", pkl))
    return out


def test_dict_keys_are_checked_before_unpickling(ckpt_file, copy_dir, tmp_path):
    path = copy_dir(ckpt_file, "model.ckpt")
    results = sweep("gemma_pytorch dict keys (round 2)", path, key_variants(read_bytes(path)), str(tmp_path))
    assert not results["ok"]
    for v, msg in results["error"]:
        assert ("not a string" in msg) or ("a dict of more than 100000 items" in msg), (v.label, msg)


def test_colliding_integer_keys_are_refused_fast(baseline, tmp_path):
    """100,000 integer keys with one hash: 150 s of CPU in 1.3 MB before."""
    path = str(tmp_path / "keys.ckpt")
    with open(path, "wb") as f:
        f.write(_dict_pickle([_long1(k) for k in COLLIDING]))
    assert os.path.getsize(path) < 2 * MB
    refused(["summary", path], str(tmp_path), "a dict key is 7, not a string", baseline, seconds=10)


# ----------------------------------------------------------------------------- the central directory (item 6)
def _central_directory_bomb(path: str, entries: int, claimed: int) -> None:
    """A zip archive whose central directory holds `entries` records but whose end record says `claimed`."""
    name = b"archive/data.pkl"
    pkl = pickle.dumps({"model_state_dict": {}}, protocol=2)
    local = b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, 0, 0, 0, 0, 0, len(pkl), len(pkl), len(name), 0) + name

    def entry(n: bytes, off: int, size: int) -> bytes:
        return b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 20, 20, 0, 0, 0, 0, 0, size, size, len(n), 0, 0, 0, 0,
                                            0, off) + n

    with open(path, "wb") as f:
        f.write(local + pkl)
        cd_offset = f.tell()
        f.write(entry(name, 0, len(pkl)))
        junk = b"".join(entry(b"archive/%07d" % i, 0, 0) for i in range(entries - 1))
        f.write(junk)
        cd_size = f.tell() - cd_offset
        f.write(_zip_end(claimed, cd_size, cd_offset))


def directory_variants(scratch: str) -> list[Variant]:
    out = []
    for entries, claimed, label in ((20_000, 10, "under-counts"), (10, 20_000, "over-counts"),
                                    (10, 0, "counts no records"), (200_001, 65_000, "under-counts (200,001)")):
        p = os.path.join(scratch, "cd.zip")
        _central_directory_bomb(p, entries, claimed)
        out.append(Variant(f"an end record that {label} a central directory of {entries}", "", read_bytes(p)))
    return out


def test_central_directory_must_match_its_end_record(ckpt_file, copy_dir, tmp_path):
    path = copy_dir(ckpt_file, "model.ckpt")
    scratch = str(tmp_path / "scratch")
    os.mkdir(scratch)
    results = sweep("gemma_pytorch zip directory (round 2)", path, directory_variants(scratch), str(tmp_path))
    assert not results["ok"]
    for v, msg in results["error"]:
        assert "(zip archive: the end record counts" in msg, (v.label, msg)


def test_under_counted_central_directory_is_refused_small(baseline, tmp_path):
    """1,000,000 records behind an end record that says 10: 719 MB before."""
    path = str(tmp_path / "cd.ckpt")
    _central_directory_bomb(path, 1_000_000, 10)
    refused(["summary", path], str(tmp_path), "a zip central directory of", baseline, seconds=10)


# ----------------------------------------------------------------------------- storages beyond the file (item 13)
class _Storage:
    pass


def _legacy_with_storage(numel: int, little_endian: bool = True) -> bytes:
    """A legacy torch.save file whose one tensor lives in a storage declaring `numel` floats."""

    class Tensor:
        def __reduce_ex__(self, protocol):
            return (torch._utils._rebuild_tensor_v2, (_Storage(), 0, (4,), (1,), False, collections.OrderedDict()))

    class P(pickle.Pickler):
        def persistent_id(self, o):
            return ("storage", torch.FloatStorage, "0", "cpu", numel, None) if isinstance(o, _Storage) else None

    buf = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": little_endian,
                                                "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(obj, buf, protocol=2)
    P(buf, protocol=2).dump({"model_state_dict": {EMBED: Tensor()}})
    pickle.dump(["0"], buf, protocol=2)
    data = np.arange(4, dtype=np.float32)
    buf.write(struct.pack("<q", 4) + (data.byteswap() if not little_endian else data).tobytes())
    return buf.getvalue()


def test_legacy_storage_larger_than_the_file(baseline, tmp_path):
    """A legacy .ckpt declaring a 16 GiB storage: torch reserves it (17 GB of virtual memory) before failing."""
    path = str(tmp_path / "legacy.ckpt")
    with open(path, "wb") as f:
        f.write(_legacy_with_storage(4 << 30))
    r = refused(["summary", path], str(tmp_path), "its storages declare 17179869184 bytes", baseline)
    assert r.vm < 4 << 30


def test_storages_declared_beyond_the_file_are_refused(ckpt_file, copy_dir, tmp_path):
    path = copy_dir(ckpt_file, "model.ckpt")
    variants = [Variant(f"legacy storage of {n} floats", "", _legacy_with_storage(n)) for n in (2**20, 2**32, 2**61)]
    results = sweep("gemma_pytorch storage sizes (round 2)", path, variants, str(tmp_path))
    for v, msg in results["error"]:
        assert "its storages declare" in msg, (v.label, msg)


# ----------------------------------------------------------------------------- byte order (item 4)
def _big_endian_zip(data: bytes) -> bytes:
    """The same archive as written on a big-endian machine: `byteorder` says big, every storage swapped."""
    out = []
    prefix = _records(data)[0][0].split("/", 1)[0]
    sizes = _record_itemsizes(data)
    for name, rec in _records(data):
        if name == f"{prefix}/byteorder":
            rec = b"big"
        elif name.startswith(f"{prefix}/data/"):
            size = sizes[name.rsplit("/", 1)[1]]
            rec = np.frombuffer(rec, dtype=f"<u{size}").byteswap().tobytes() if size > 1 else rec
        out.append((name, rec))
    return _zip(out)


def _record_itemsizes(data: bytes) -> dict[str, int]:
    """Storage key -> element size, from the persistent ids in data.pkl."""
    recs = dict(_records(data))
    prefix = next(iter(recs)).split("/", 1)[0]
    sizes: dict[str, int] = {}

    class U(pickle.Unpickler):
        def find_class(self, module, name):
            if name.endswith("Storage"):
                return name
            return lambda *a, **k: None

        def persistent_load(self, pid):
            sizes[pid[2]] = {"FloatStorage": 4, "BFloat16Storage": 2, "HalfStorage": 2}.get(pid[1], 1)
            return None

    U(io.BytesIO(recs[f"{prefix}/data.pkl"])).load()
    return sizes


def test_byte_order_of_pickles(ckpt_file, copy_dir, tmp_path):
    """torch swaps a zip archive written on a big-endian machine (its `byteorder` record) and reads the same
    values; a legacy file records its byte order in sys_info, which torch ignores: refused."""
    from gemma_inspect.formats import load

    if sys.byteorder != "little":
        pytest.skip("the archive is made big-endian by swapping a little-endian machine's bytes")
    path = copy_dir(ckpt_file, "model.ckpt")
    want = {n: r.load() for n, r in load(path).tensors.items()}
    big = str(tmp_path / "big.ckpt")
    with open(big, "wb") as f:
        f.write(_big_endian_zip(read_bytes(path)))
    got = load(big)
    for n, r in got.tensors.items():
        np.testing.assert_array_equal(r.load(), want[n])
    variants = [Variant("a legacy file from a big-endian machine", "", _legacy_with_storage(4, little_endian=False)),
                Variant("the same from a little-endian machine", "", _legacy_with_storage(4), must_fail=True)]
    results = sweep("gemma_pytorch byte order (round 2)", path, variants, str(tmp_path))
    msgs = {v.label: m for v, m in results["error"]}
    assert "written on a big-endian machine" in msgs["a legacy file from a big-endian machine"]
    assert "written on a" not in msgs["the same from a little-endian machine"]
