"""`diff`: tensor-by-tensor comparison of two checkpoints in canonical names and layout, plus their specs.

One tensor pair is in memory at a time; when both sides can stream raw bytes of the same dtype, even
that pair is compared in chunks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from .checkpoint import Checkpoint, TensorRef
from .errors import InputError

VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")  # one row per token id
STATUSES = ("equal", "close", "different", "missing_a", "missing_b", "shape_mismatch")
COMPARE_CHUNK = 32 * 1024 * 1024
# Spec fields that describe the file, not the model.
_SPEC_IGNORE = {"name"}


def spec_differences(a: Checkpoint, b: Checkpoint) -> list[dict[str, Any]]:
    out = []
    for f in dataclasses.fields(a.spec):
        if f.name in _SPEC_IGNORE or f.name in a.assumed or f.name in b.assumed:
            continue
        va, vb = getattr(a.spec, f.name), getattr(b.spec, f.name)
        if va != vb:
            out.append({"field": f.name, "a": list(va) if isinstance(va, tuple) else va,
                        "b": list(vb) if isinstance(vb, tuple) else vb})
    ha, hb = _head_fields(a), _head_fields(b)
    if ha != hb:  # an embedding model's pooling, dense layers and normalisation (not where each format keeps them)
        out.append({"field": "embedding_head", "a": ha, "b": hb})
    return out


def _head_fields(ckpt: Checkpoint) -> dict[str, Any] | None:
    head = ckpt.embedding_head
    if head is None:
        return None
    return {"pooling": head.pooling, "include_prompt": head.include_prompt, "normalize": head.normalize,
            "dense": [[d.in_features, d.out_features, d.bias, d.activation] for d in head.dense]}


def _max_abs_diff_arrays(x: np.ndarray, y: np.ndarray) -> float:
    """max |x - y| in float64 per block; NaN in the same place counts as equal, elsewhere as inf."""
    x = x.reshape(-1)
    y = y.reshape(-1)
    worst = 0.0
    step = max(1, COMPARE_CHUNK // 8)
    # A signalling NaN raises "invalid" in the cast and the subtraction (a RuntimeWarning on stderr); it is a NaN
    # all the same, and NaNs are accounted for below.
    with np.errstate(invalid="ignore"):
        for i in range(0, x.size, step):
            xa = x[i:i + step].astype(np.float64)
            ya = y[i:i + step].astype(np.float64)
            both_nan = np.isnan(xa) & np.isnan(ya)
            d = np.abs(xa - ya)
            d[both_nan] = 0.0
            d[np.isnan(d)] = np.inf
            if d.size:
                worst = max(worst, float(d.max()))
    return worst


def compare_tensors(ra: TensorRef, rb: TensorRef, nonfinite: list[int] | None = None,
                    rows: int | None = None) -> tuple[bool, float]:
    """(bit-identical, max absolute difference) of two tensors of the same shape - or, with `rows`, of the first
    `rows` rows of two tensors that differ only in their row count (only those rows' bytes are read where the
    raw chunks allow). `nonfinite`, when given, gets [NaNs in A, infinities in A, NaNs in B, infinities in B]
    added, counted from the values read anyway."""
    from .scan import count_array, count_bits

    counts = nonfinite if nonfinite is not None else [0, 0, 0, 0]
    if ra.dtype == rb.dtype and ra.chunks is not None and rb.chunks is not None:
        from .formats.safetensors_io import numpy_dtype

        dt = numpy_dtype(ra.dtype)
        size = (COMPARE_CHUNK // dt.itemsize) * dt.itemsize
        left = None if rows is None else rows * int(np.prod(ra.shape[1:], dtype=np.int64)) * dt.itemsize
        identical, worst = True, 0.0
        for pa, pb in zip(ra.chunks(size), rb.chunks(size)):
            if left is not None:
                if left <= 0:
                    break
                pa, pb = pa[:left], pb[:left]
                left -= len(pa)
            na, ia = count_bits(pa, ra.dtype)
            nb, ib = (na, ia) if pa == pb else count_bits(pb, rb.dtype)
            counts[0] += na
            counts[1] += ia
            counts[2] += nb
            counts[3] += ib
            if pa != pb:
                identical = False
                worst = max(worst, _max_abs_diff_arrays(np.frombuffer(pa, dt), np.frombuffer(pb, dt)))
        return identical, worst
    xa, xb = ra.load()[:rows], rb.load()[:rows]
    for offset, arr in ((0, xa), (2, xb)):
        nan, inf = count_array(arr)
        counts[offset] += nan
        counts[offset + 1] += inf
    identical = xa.dtype == xb.dtype and xa.shape == xb.shape and _same_bytes(xa, xb)
    return identical, 0.0 if identical else _max_abs_diff_arrays(xa, xb)


def _same_bytes(x: np.ndarray, y: np.ndarray) -> bool:
    """Bit-identical, compared a block at a time (tobytes() would copy both tensors whole)."""
    bx = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    by = np.ascontiguousarray(y).reshape(-1).view(np.uint8)
    return all(np.array_equal(bx[i:i + COMPARE_CHUNK], by[i:i + COMPARE_CHUNK])
               for i in range(0, bx.size, COMPARE_CHUNK))


def diff(a: Checkpoint, b: Checkpoint, atol: float = 0.0,
         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The JSON object of `diff`: {"identical", "tensors": [...], "spec_differences": [...], ...}."""
    if a.is_card or b.is_card:
        raise InputError(a.source if a.is_card else b.source, "a built-in card has no tensors to compare")
    a.require("diff")
    b.require("diff")
    if atol < 0:
        raise InputError(None, f"--atol must be non-negative, got {atol}")
    # the transformer's tensors, then an embedding model's heads (head.dense.0.weight, ...): all in canonical names
    ta, tb = {**a.tensors, **a.head_tensors}, {**b.tensors, **b.head_tensors}
    names = list(ta) + [n for n in tb if n not in ta]
    rows = []
    for name in names:
        ra, rb = ta.get(name), tb.get(name)
        row: dict[str, Any] = {"name": name, "max_abs_diff": None,
                               "dtype_a": ra.dtype if ra else None, "dtype_b": rb.dtype if rb else None,
                               "shape_a": list(ra.shape) if ra else None, "shape_b": list(rb.shape) if rb else None}
        if ra is None:
            row["status"] = "missing_a"
        elif rb is None:
            row["status"] = "missing_b"
        elif tuple(ra.shape) != tuple(rb.shape):
            row["status"] = "shape_mismatch"
            if name in VOCAB_ROWS and len(ra.shape) == len(rb.shape) == 2 and ra.shape[1] == rb.shape[1]:
                # Vocabularies of different sizes (e.g. Gemma 3's 64 out-of-vocabulary rows, which llama.cpp
                # drops): say how the rows both sides have compare.
                row["shared_rows"] = min(ra.shape[0], rb.shape[0])
                row["shared_rows_max_abs_diff"] = compare_tensors(ra, rb, rows=row["shared_rows"])[1]
        else:
            counts4 = [0, 0, 0, 0]
            identical, worst = compare_tensors(ra, rb, counts4)
            row["max_abs_diff"] = worst
            row["bit_identical"] = identical
            row["status"] = "equal" if worst == 0.0 else ("close" if worst <= atol else "different")
            if any(counts4):  # NaN/inf values: not a difference when both sides hold them alike, but a warning
                row["nonfinite_a"] = {"nan": counts4[0], "inf": counts4[1]}
                row["nonfinite_b"] = {"nan": counts4[2], "inf": counts4[3]}
        rows.append(row)
        if progress is not None:
            progress(name)
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in STATUSES}
    warnings = []
    for side, ck in (("a", a), ("b", b)):
        found = [{"name": r["name"], **r[f"nonfinite_{side}"]} for r in rows
                 if r.get(f"nonfinite_{side}") and any(r[f"nonfinite_{side}"].values())]
        if found:
            from .scan import describe

            warnings.append(describe(found, f"{side.upper()} ({ck.source})"))
    spec_diff = spec_differences(a, b)
    identical = not spec_diff and counts["equal"] + counts["close"] == len(rows)
    return {
        "identical": identical,
        "a": {"source": a.source, "format": a.format},
        "b": {"source": b.source, "format": b.format},
        "atol": atol,
        "spec_differences": spec_diff,
        "counts": counts,
        "tensors": rows,
        "warnings": warnings,
    }
