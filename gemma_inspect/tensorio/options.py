"""`WriteOptions`: what a format's `write(ckpt, dest, options, progress)` is asked to do. Here, below every writer,
so that a format module types its options without importing `convert`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..dtypes import CAST_DTYPES, KEEP
from .hashing import DEFAULT_HASH

IO_MODES = ("auto", "direct", "buffered")  # how output files are written: see tensorio.output

if TYPE_CHECKING:  # pragma: no cover
    from ..checkpoint import TensorRef


@dataclass
class WriteOptions:
    dtype: str = KEEP  # keep = bit-exact; otherwise every floating tensor is cast explicitly (dtypes.CONVERT_DTYPES)
    max_shard_size: int | None = None  # bytes; None = the target format's default
    force: bool = False  # convert even what the target can only approximate (with a warning note)
    notes: list[str] = field(default_factory=list)  # writers append what the user should know
    manifest: bool = True  # write the output's manifest (file sizes and hashes, tensors); see manifest.py
    hash: str = DEFAULT_HASH  # the manifest's hash: blake3 (fast everywhere) or sha256 (what the HF hub publishes)
    # how output files are written (tensorio.output.IO_MODES): auto = past the page cache (O_DIRECT) for files of
    # 16 MB and more where the filesystem allows it; direct = wherever it allows it; buffered = through the page cache
    io: str = "auto"

    def target_dtype(self, ref: TensorRef) -> str:
        return ref.dtype if self.dtype == KEEP else self.dtype

    def float_dtype(self, ref: TensorRef) -> str:
        """The dtype a format that stores floats only (FormatInfo.stores_quantization False) writes `ref` in: the
        cast asked for, or its own float dtype; a quantized tensor's dequantized values are stored exactly in
        float32 unless cast."""
        want = self.target_dtype(ref)
        return want if want in CAST_DTYPES else "float32"
