"""Hostile gemma_pytorch checkpoints: the zip container (truncated, flipped in its headers, its pickle and its
tensor data), state dicts with tensors of the wrong kind (dtype, layout, device, shape), names missing,
extra or duplicated across shards, hand-made pickles whose calls are allowed by torch's weights_only
unpickler but given absurd arguments, and sharded indexes. Every variant is read and used through the
library. (Pickles that try to run code are in tests/test_gemma_pytorch.py.)"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import zipfile

import torch

from files import read_bytes

from .conftest import sweep
from .variants import Variant, flips, json_variants, tree_variants, truncations

N = 24
QKV = "model.layers.1.self_attn.qkv_proj.weight"
NORM = "model.layers.0.input_layernorm.weight"


def _saved(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def zip_regions(data: bytes) -> tuple[list[int], list[int]]:
    """(byte offsets of the zip structure and the pickle, byte offsets of tensor records) of a torch .ckpt."""
    records, structure = [], set(range(len(data)))
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
            if "/data/" in info.filename:
                records += range(start, start + info.compress_size)
                structure -= set(range(start, start + info.compress_size))
    return sorted(structure), records


def state_variants(obj: dict) -> list[tuple[str, dict, bool]]:
    """(label, a changed copy of the loaded checkpoint, must_fail)."""
    out = []

    def changed(label: str, edit, must_fail: bool = True) -> None:
        o = {k: (dict(v) if isinstance(v, dict) else v) for k, v in obj.items()}
        edit(o["model_state_dict"], o)
        out.append((label, o, must_fail))

    for name in ("embedder.weight", QKV, NORM):
        t = obj["model_state_dict"][name]
        for dt in (torch.int64, torch.int32, torch.uint8, torch.bool, torch.float64, torch.complex64, torch.int8,
                   torch.float8_e4m3fn):
            changed(f"{name} as {dt}", lambda sd, o, dt=dt, n=name, t=t: sd.update({n: t.to(dt)}))
        changed(f"{name} transposed", lambda sd, o, n=name, t=t: sd.update({n: t.mT.contiguous() if t.dim() > 1
                                                                            else t}), t.dim() > 1)
        changed(f"{name} flattened", lambda sd, o, n=name, t=t: sd.update({n: t.reshape(-1)}), t.dim() > 1)
        changed(f"{name} with an extra axis", lambda sd, o, n=name, t=t: sd.update({n: t[None]}))
        changed(f"{name} empty", lambda sd, o, n=name: sd.update({n: torch.zeros(0)}))
        changed(f"{name} a non-contiguous view", lambda sd, o, n=name, t=t: sd.update(
            {n: t.T.contiguous().T if t.dim() > 1 else t[::1]}), False)
        changed(f"{name} sparse", lambda sd, o, n=name, t=t: sd.update({n: t.to_sparse()}))
        changed(f"{name} on the meta device", lambda sd, o, n=name, t=t: sd.update({n: t.to("meta")}))
        changed(f"{name} quantized qint8", lambda sd, o, n=name, t=t: _quiet() or sd.update(
            {n: torch.quantize_per_tensor(t.float(), 0.1, 0, torch.qint8)}))
        changed(f"{name} a Parameter", lambda sd, o, n=name, t=t: sd.update({n: torch.nn.Parameter(t)}), False)
        changed(f"{name} removed", lambda sd, o, n=name: sd.pop(n))
        for bad in (None, 3, "x", [1.0], {"a": t}):
            changed(f"{name} = {type(bad).__name__}", lambda sd, o, n=name, b=bad: sd.update({n: b}))
    qkv = obj["model_state_dict"][QKV]
    changed("qkv with one row less", lambda sd, o: sd.update({QKV: qkv[:-1]}))
    changed("qkv with an odd k+v row count", lambda sd, o: sd.update({QKV: torch.cat([qkv, qkv[:1]])}))
    changed("an extra tensor", lambda sd, o: sd.update({"model.layers.9.mlp.up_proj.weight": qkv}))
    changed("an unknown name", lambda sd, o: sd.update({"lm_head.weight": qkv}))
    changed("int8 without a weight_scaler", lambda sd, o: sd.update({QKV: qkv.to(torch.int8)}))
    changed("a weight_scaler of the wrong shape", lambda sd, o: sd.update(
        {QKV: qkv.to(torch.int8), QKV.replace(".weight", ".weight_scaler"): torch.ones(3)}))
    changed("an integer key", lambda sd, o: sd.update({7: qkv}))
    for index in ("9" * 5000, "999999"):
        changed(f"a layer index of {len(index)} digits", lambda sd, o, x=index: sd.update(
            {QKV.replace(".1.", f".{x}."): sd.pop(QKV)}))
    changed("state dict is a list", lambda sd, o: o.update(model_state_dict=list(sd.values())))
    changed("gemma_inspect is a list", lambda sd, o: o.update(gemma_inspect=[1]))
    changed("gemma_inspect config is a string", lambda sd, o: o.update(gemma_inspect={"config": "x"}), False)
    changed("gemma_inspect config says llama", lambda sd, o: o.update(
        gemma_inspect={**o["gemma_inspect"], "config": {**o["gemma_inspect"]["config"], "model_type": "llama"}}))
    changed("gemma_inspect config with 10**9 layers", lambda sd, o: o.update(
        gemma_inspect={**o["gemma_inspect"], "config": {**o["gemma_inspect"]["config"], "num_hidden_layers": 10**9}}))
    changed("tokenizer.model is not a SentencePiece model", lambda sd, o: o.update(
        gemma_inspect={**o["gemma_inspect"], "tokenizer.model": b"\x0a\x05hello"}))
    changed("tokenizer.model is a string", lambda sd, o: o.update(
        gemma_inspect={**o["gemma_inspect"], "tokenizer.model": "abc"}), False)
    changed("a second layer index gap", lambda sd, o: [sd.update({k.replace("layers.3.", "layers.7."): sd.pop(k)})
                                                       for k in [k for k in sd if "layers.3." in k]])
    return out


def _quiet() -> None:
    import warnings

    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")


def crafted_pickles() -> list[tuple[str, bytes]]:
    """Pickles made by hand: calls torch's weights_only unpickler allows, with absurd arguments."""
    import collections

    def rebuild(shape: tuple, stride: tuple, offset: int, numel: int) -> bytes:
        """A zip .ckpt whose one tensor is `_rebuild_tensor_v2(storage of numel floats, offset, shape, stride)`."""
        class Storage:
            pass

        class Stub:
            def __reduce_ex__(self, protocol):
                return (torch._utils._rebuild_tensor_v2,
                        (Storage(), offset, shape, stride, False, collections.OrderedDict()))

        class P(pickle.Pickler):
            def persistent_id(self, o):
                return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(o, Storage) else None

        buf = io.BytesIO()
        P(buf, protocol=2).dump({"model_state_dict": {"embedder.weight": Stub()}})
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
            z.writestr("archive/data.pkl", buf.getvalue())
            z.writestr("archive/byteorder", "little")
            z.writestr("archive/data/0", b"\0" * 4 * min(numel, 1024))
            z.writestr("archive/version", "3\n")
        return out.getvalue()

    return [
        ("a tensor larger than its storage", rebuild((2**20, 2**20), (2**20, 1), 0, 16)),
        ("a negative size", rebuild((-4, 4), (4, 1), 0, 16)),
        ("a storage offset beyond the storage", rebuild((4,), (1,), 2**40, 16)),
        ("a negative stride", rebuild((4, 4), (-4, 1), 0, 16)),
        ("a storage that claims 2**50 floats", rebuild((4,), (1,), 0, 2**50)),
        ("a record shorter than its storage", rebuild((2048, 2048), (2048, 1), 0, 2048 * 2048)),
    ]


def single_variants(path: str, scratch: str, n: int, seed: int) -> list[Variant]:
    rng = random.Random(seed)
    data = read_bytes(path)
    structure, records = zip_regions(data)
    out = truncations("", data, rng, n, [4, 30, structure[-1] - 22, len(data) - 22])
    for _ in range(2 * n):
        pos, x = rng.choice(structure), rng.randrange(1, 256)
        b = bytearray(data)
        b[pos] ^= x
        out.append(Variant(f"zip structure or pickle byte {pos} ^= {x:#04x}", "", bytes(b), must_fail=False))
    out += flips("", data, rng, max(2, n // 4), records[0], records[-1], what="tensor data ")
    obj = torch.load(path, weights_only=True)
    for label, o, must_fail in state_variants(obj):
        out.append(Variant(label, "", _saved(o), must_fail=must_fail))
    for label, raw in crafted_pickles():
        out.append(Variant(label, "", raw))
    legacy = io.BytesIO()
    torch.save(obj, legacy, _use_new_zipfile_serialization=False)
    out += [Variant("legacy (non-zip) pickle" + v.label, "", v.data)
            for v in truncations("", legacy.getvalue(), rng, max(4, n // 2))]
    return out


def test_ckpt(ckpt_file, copy_dir, tmp_path):
    path = copy_dir(ckpt_file, "model.ckpt")
    sweep("gemma_pytorch .ckpt", path, single_variants(path, str(tmp_path), N, 31), str(tmp_path))


def sharded_variants(root: str, n: int, seed: int) -> list[Variant]:
    rng = random.Random(seed)
    index_name = "pytorch_model.bin.index.json"
    index = json.loads(read_bytes(os.path.join(root, index_name)))
    shards = sorted(set(index["weight_map"].values()))
    out = []
    for shard in shards:
        out += truncations(shard, read_bytes(os.path.join(root, shard)), rng, max(3, n // 4))
        out += tree_variants(shard, os.path.join(os.path.dirname(root), "outside"))
    out += json_variants(index_name, read_bytes(os.path.join(root, index_name)), rng, n, values_per_key=5, depth=1)
    first = next(iter(index["weight_map"]))
    for target in ("/etc/passwd", "../" + shards[0], "", index_name, ".", "\x00", "missing.bin"):
        ix = json.loads(json.dumps(index))
        ix["weight_map"][first] = target
        out.append(Variant(f"{index_name}: {first} -> {target!r}", index_name, json.dumps(ix).encode()))
    # The same tensor in two shards.
    sd0 = torch.load(os.path.join(root, shards[0]), weights_only=True)
    sd1 = torch.load(os.path.join(root, shards[1]), weights_only=True)
    out.append(Variant(f"{shards[1]}: also holds {next(iter(sd0))}", shards[1], _saved({**sd1, **dict([next(iter(
        sd0.items()))])})))
    out.append(Variant(f"{shards[1]}: a model_state_dict wrapper", shards[1], _saved({"model_state_dict": sd1}),
                       must_fail=False))
    return out


def test_sharded(ckpt_file, tmp_path):
    root = str(tmp_path / "sharded")
    os.mkdir(root)
    sd = torch.load(ckpt_file, weights_only=True)["model_state_dict"]
    names = list(sd)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: sd[k] for k in part}, os.path.join(root, fname))
        weight_map.update({k: fname for k in part})
    with open(os.path.join(root, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    # A Google-style sharded checkpoint has no embedded config: head_dim must come from a side config.
    with open(os.path.join(root, "gemma_inspect.json"), "w") as f:
        json.dump({"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 6}, f)
    sweep("gemma_pytorch sharded + index", root, sharded_variants(root, N, 32), str(tmp_path))
