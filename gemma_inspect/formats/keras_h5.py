"""The low-level HDF5 reading of Keras weights files: walk a file's datasets and `vars` groups without h5py's
high-level objects, refuse what a weights file must not hold (links, virtual or external storage, chunks larger
than their dataset, nested filters, declared sizes the stored bytes cannot give), and read a dataset's bytes
(straight from the file at its offset when it is contiguous and uncompressed); find a preset's weights file or
its shards through the index.

Knows nothing of Gemma: formats/keras.py maps the datasets this finds to canonical tensors.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dtypes import DTYPE_BYTES
from ..errors import InputError
from .common import read_weight_map, safe_child
from ..tensorio.output import PAGE
from .safetensors_io import numpy_dtype, read_at

WEIGHTS = "model.weights.h5"
SHARD_INDEX = "model.weights.json"  # sharded: H5 group path -> shard file
MAX_EXPANSION = 1100  # deflate's ceiling is ~1032:1; HDF5's other filters stay below it
MAX_ATTRIBUTE_BYTES = 64 * 1024
ALIGN_THRESHOLD = 64 * 1024  # datasets at least this big start on a page (see create_h5)


@dataclass(frozen=True)
class H5Var:
    file: str
    path: str  # dataset path inside the file
    shape: tuple[int, ...]
    dtype: str
    offset: int | None  # byte offset of contiguous, uncompressed data; None = read through h5py
    nbytes: int

DEFAULT_MAX_SHARD = 10 * 10**9  # keras-hub's save_to_preset default (10 GB): one shard size for every backbone


def _h5_attr(oid: Any, key: str, file: str) -> Any:
    """Attribute `key` of a low-level h5py object, or None when absent; byte strings come back as str."""
    import h5py

    k = key.encode()
    if not h5py.h5a.exists(oid, k):
        return None
    aid = h5py.h5a.open(oid, k)
    size = math.prod(aid.shape) * aid.dtype.itemsize
    if size > MAX_ATTRIBUTE_BYTES:  # the attributes read here are short strings ('bfloat16', a layer name)
        raise InputError(file, f"attribute {key!r} of {h5py.h5i.get_name(oid).decode('utf-8', 'replace')} holds "
                               f"{size} bytes; expected a short string")
    value = np.empty(aid.shape, dtype=aid.dtype)
    aid.read(value)
    value = value[()] if value.ndim == 0 else value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _h5_dtype(dt: np.dtype, tag: Any, name: str, where: str) -> str:
    if dt.kind == "V" and dt.itemsize == 2:
        if tag == "bfloat16":
            return "bfloat16"
        raise InputError(where, f"dataset {name} is opaque 2-byte data without attrs['dtype']='bfloat16'")
    if dt.name in ("float32", "float16", "float64"):
        return dt.name
    raise InputError(where, f"dataset {name} has unsupported dtype {dt}")


def scan_h5(file: str, only: set[str] | None = None) -> tuple[dict[str, H5Var], dict[str, str]]:
    """All datasets under `layers/` and the `attrs['name']` of every `vars` group (path -> name).

    Walks the file with h5py's low-level API: the high-level `visititems` builds a Python object per group
    and dataset, which alone took 0.35 s on a 27B preset; this walk takes a fraction of that."""
    import h5py

    datasets: dict[str, H5Var] = {}
    names: dict[str, str] = {}
    try:
        size = os.path.getsize(file)
        with h5py.File(file, "r") as f:
            _refuse_links(f, file)  # before anything is opened by name: a path may run through a link
            if "layers" not in f:
                raise InputError(file, "no 'layers' group: not a Keras weights file")
            layers = h5py.h5g.open(f.id, b"layers")
            found: list[tuple[bytes, int]] = []
            h5py.h5o.visit(layers, lambda n, info: found.append((n, info.type)), info=True)
            for raw, kind in found:
                full = "layers/" + raw.decode("utf-8", "replace")
                if kind == h5py.h5o.TYPE_DATASET:
                    if only is not None and full.rsplit("/", 1)[0] not in only:
                        continue
                    ds = h5py.h5d.open(layers, raw)
                    dt = ds.dtype
                    dtype = _h5_dtype(dt, _h5_attr(ds, "dtype", file) if dt.kind == "V" else None, "/" + full, file)
                    shape = tuple(int(s) for s in ds.shape)
                    want = math.prod(shape) * DTYPE_BYTES[dtype]  # math.prod: 1000s of calls, no numpy (nor ml_dtypes)
                    offset = ds.get_offset()
                    nbytes = int(ds.get_storage_size())
                    dcpl = ds.get_create_plist()
                    # Virtual datasets and external storage keep their bytes in other files, which may lie
                    # anywhere: refused, like an index entry that points outside the checkpoint.
                    elsewhere = ("a virtual dataset" if dcpl.get_layout() == h5py.h5d.VIRTUAL
                                 else "external storage" if dcpl.get_external_count() else None)
                    if elsewhere:
                        raise InputError(file, f"dataset {full} keeps its data in another file ({elsewhere}); "
                                               f"a checkpoint must hold its own weights")
                    if dcpl.get_layout() == h5py.h5d.CHUNKED:
                        _check_chunks(dcpl, shape, full, file)
                    if dcpl.get_layout() != h5py.h5d.CONTIGUOUS or dcpl.get_nfilters():
                        offset = None  # chunked, compact or compressed: read through h5py
                        # Reading fills what is not stored (unwritten chunks) with zeros, and decompression can
                        # grow bytes ~1000x at most: a dataset that declares more than that has lost its chunks
                        # or is a decompression bomb, which would allocate its declared size from a tiny file.
                        stored_enough = nbytes >= want if not dcpl.get_nfilters() else nbytes * MAX_EXPANSION >= want
                        if want and not stored_enough:
                            raise InputError(file, f"dataset {full} declares {want} bytes but stores {nbytes}: "
                                                   f"chunks missing or compressed beyond belief")
                    elif offset is None or offset + want > size or nbytes != want:
                        raise InputError(file, f"dataset {full} claims {want} bytes at offset {offset}, beyond "
                                               f"the file's {size} bytes: truncated or corrupt")
                    if not dt.isnative:
                        # h5py hands back big-endian data (">f4") as such, and its dtype's name is "float32" all
                        # the same; the fast path reads the file's raw bytes as native ones. Such datasets are
                        # read through h5py and byte-swapped instead.
                        offset = None
                    datasets[full] = H5Var(file, full, shape, dtype, offset, want)
                elif kind == h5py.h5o.TYPE_GROUP and full.endswith("vars"):
                    n = _h5_attr(h5py.h5o.open(layers, raw), "name", file)
                    if n is not None:
                        names[full] = str(n)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(file, "missing") from None
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
        msg = str(e).splitlines()[0][:200] if str(e) else e.__class__.__name__
        raise InputError(file, f"not a readable HDF5 weights file ({msg})") from None
    return datasets, names


def _refuse_links(f: Any, file: str) -> None:
    """Every link in the file must be a hard link. A soft link makes two paths one dataset; an external link
    (or a user-defined one) opens another file - anywhere on the machine, or a FIFO that blocks forever - and
    HDF5 follows it as soon as a path through it is opened. H5Lvisit reads the links' descriptions without
    following any, so this walk runs before the file is read by name."""
    import h5py

    root = h5py.h5g.open(f.id, b"/")
    bad: list[tuple[bytes, int]] = []

    def visit(name: bytes, info: Any) -> int | None:
        if info.type != h5py.h5l.TYPE_HARD:
            bad.append((name, info.type))
            return 1  # stop at the first
        return None

    root.links.visit(visit, info=True)
    if not bad:
        return
    name, kind = bad[0]
    shown = "/" + name.decode("utf-8", "replace")
    if kind == h5py.h5l.TYPE_SOFT:
        target = root.links.get_val(name).decode("utf-8", "replace")
        raise InputError(file, f"{shown} is a soft link to {target}; a Keras weights file holds only hard links")
    if kind == h5py.h5l.TYPE_EXTERNAL:
        other, obj = (v.decode("utf-8", "replace") for v in root.links.get_val(name))
        raise InputError(file, f"{shown} is an external link to {obj} in {other}; a checkpoint must hold its own "
                               f"weights (not followed)")
    raise InputError(file, f"{shown} is a link of type {kind} (user-defined); a Keras weights file holds only "
                           f"hard links")


def _check_chunks(dcpl: Any, shape: tuple[int, ...], full: str, file: str) -> None:
    """A chunk is decompressed whole: one larger than its dataset, or run through the same filter twice, makes a
    few stored bytes inflate into gigabytes before HDF5 notices that they do not fit. Chunk dimensions must fit
    inside the dataset's (so a chunk holds at most the dataset's declared bytes) and each filter run once."""
    chunk = tuple(int(c) for c in dcpl.get_chunk())
    if len(chunk) != len(shape) or any(c > max(s, 1) for c, s in zip(chunk, shape)):
        raise InputError(file, f"dataset {full} is stored in chunks of {list(chunk)}, larger than its shape "
                               f"{list(shape)}")
    codes = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
    twice = next((c for c in codes if codes.count(c) > 1), None)
    if twice is not None:
        raise InputError(file, f"dataset {full} runs filter {twice} {codes.count(twice)} times over each chunk "
                               f"(nested compression)")


def read_var(var: H5Var, mapped: bool = False) -> np.ndarray:
    """The dataset as an array. `mapped`: a read-only memory map of the file instead of a copy, for a
    caller that re-lays it out at once (the transpose then reads straight from the page cache)."""
    dt = numpy_dtype(var.dtype)
    if var.offset is not None:
        count = var.nbytes // dt.itemsize
        if mapped and count and os.path.getsize(var.file) >= var.offset + var.nbytes:
            return np.memmap(var.file, dtype=dt, mode="r", offset=var.offset, shape=var.shape)
        return read_at(var.file, var.offset, var.nbytes, var.dtype, var.shape, f"dataset {var.path}")
    import h5py

    try:
        with h5py.File(var.file, "r") as f:
            raw = f[var.path][()]
    except (OSError, KeyError, ValueError) as e:
        raise InputError(var.file, f"cannot read dataset {var.path} ({e})") from None
    if var.dtype == "bfloat16":
        return raw.view(dt)
    if not raw.dtype.isnative:
        raw = raw.astype(raw.dtype.newbyteorder("="))
    return raw


def preset_vars(path: str) -> tuple[dict[str, H5Var], dict[str, str], list[str], str]:
    """Every dataset of a preset directory's weights file (or of its shards, each read for the groups the index
    gives it), the `vars` groups' layer names, the files read, and the file that errors name."""
    single = os.path.join(path, WEIGHTS)
    index_path = os.path.join(path, SHARD_INDEX)
    if os.path.exists(index_path):
        wm = read_weight_map(index_path, "Keras sharded weights index", "H5 group path")
        groups_by_file: dict[str, set[str]] = {}
        for group, fname in wm.items():
            if not isinstance(group, str):
                raise InputError(index_path, f"invalid group path {group!r}")
            full = safe_child(path, fname, index_path)
            if not os.path.isfile(full):
                raise InputError(index_path, f"names shard {fname!r}, which does not exist")
            groups_by_file.setdefault(full, set()).add(group.strip("/"))
        datasets: dict[str, H5Var] = {}
        names: dict[str, str] = {}
        for file, groups in sorted(groups_by_file.items()):
            d, nm = scan_h5(file, groups)
            for k in d:
                if k in datasets:
                    raise InputError(file, f"dataset {k} is also stored in {datasets[k].file}")
            datasets.update(d)
            names.update(nm)
        return datasets, names, sorted(groups_by_file), index_path
    if os.path.exists(single):
        d, nm = scan_h5(single)
        return d, nm, [single], single
    raise InputError(path, f"no {WEIGHTS} or {SHARD_INDEX} in this Keras preset")


def create_h5(file: str, entries: list[tuple[str, str, tuple[str, str] | None, tuple[int, ...], str, Any]],
              groups: dict[str, str] | None = None) -> dict[str, int]:
    """Create a Keras weights file with every dataset allocated (contiguous, early) but unwritten, and the layer
    names Keras writes; returns dataset path -> byte offset, where the bytes are then streamed without h5py.

    entries: (H5 path, layer name, the block's (vars group, name) or None, shape, dtype, source) - Keras loads
    weights by path alone; the names (`attrs['name']`) are written as Keras does, so that the file reads back
    through the same mapping. bfloat16 is stored opaque (|V2) and tagged, as Keras does. A scalar (Gemma 4's
    layer_scalar: HDF5 keeps it inside its header, at no offset) is written here from `source.load()` and has no
    offset. `groups`: group path -> name, named before the datasets (Gemma 3n's text model)."""
    import h5py

    offsets: dict[str, int] = {}
    # Datasets of 64 KiB and more start on a page: they are then written to the device straight from the
    # pipeline's buffers (tensorio.output); HDF5 leaves the few KB between them unused.
    with h5py.File(file, "w", alignment_threshold=ALIGN_THRESHOLD, alignment_interval=PAGE) as f:
        for group, name in (groups or {}).items():
            f.require_group(group).attrs["name"] = name
        for path, layer_name, block, shape, dtype, source in entries:
            h5dtype = np.dtype("V2") if dtype == "bfloat16" else np.dtype(dtype)
            if shape == ():
                value = np.asarray(source.load()).astype(numpy_dtype(dtype)).reshape(())
                ds = f.create_dataset(path, data=value.view(h5dtype) if dtype == "bfloat16" else value)
            else:
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
                ds = f.create_dataset(path, shape=shape, dtype=h5dtype, dcpl=dcpl)
            if dtype == "bfloat16":
                ds.attrs["dtype"] = "bfloat16"
            f[path.rsplit("/", 1)[0]].attrs["name"] = layer_name
            if block is not None:
                f.require_group(block[0]).attrs["name"] = block[1]
            if shape == ():
                continue
            offset = ds.id.get_offset()
            if offset is None:  # pragma: no cover - early allocation guarantees an offset
                raise RuntimeError(f"no storage allocated for {path}")
            offsets[path] = offset
    return offsets


def fill_h5(file: str, fname: str, jobs: list[tuple[str, Any, str, Any]], offsets: dict[str, int], out: Any,
            progress: Any) -> None:
    """Write each job's bytes at its dataset's offset in an H5 file whose metadata h5py has written and closed
    (through tensorio.output: past the page cache where it can, and hashed in file order, HDF5's metadata between
    the datasets read back into the hash, when the datasets lie at increasing offsets). A job is (name, source
    ref, target dtype, layout) and its H5 path; `out` records each dataset's group under the file name (the shard
    index)."""
    from ..tensorio import prefetched, target_nbytes, write_pieces
    from ..tensorio.output import open_output

    paths = {n: path for (n, _, _, _), path in jobs}
    planned = sum(target_nbytes(ref, dtype) for (_, ref, dtype, _), _ in jobs)
    with open_output(file, "r+b", size_hint=planned) as f:
        for n, pieces in prefetched([job for job, _ in jobs]):
            path = paths[n]
            f.seek(offsets[path])
            write_pieces(f, pieces, progress)
            out.record("/" + path.rsplit("/", 1)[0], fname)
