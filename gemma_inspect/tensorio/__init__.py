"""Tensor IO: the layer below every format's writer and reader of tensor bytes, above nothing but `errors`,
`dtypes` and `arrays`.

    pipeline   one tensor's bytes streamed through reused buffers: read, cast, re-laid-out, written
    shards     shard plans, shard file names and the index of a sharded output
    output     output files written from our buffers, past the page cache where allowed, hashed as written
    hashing    the output files' hashes (BLAKE3 or SHA-256), of files written by other libraries too
    options    WriteOptions, what a writer is asked to do
    stages     seconds per stage of the conversion in progress

The dtype tables are `gemma_inspect.dtypes` (re-exported here), a module of their own so that `spec` and
`checkpoint` read them without importing numpy. Each name below is imported from its submodule when first
asked for (`from gemma_inspect.tensorio import WriteOptions`): the hash names and WriteOptions stay as light to
import as the CLI's option lists need, and numpy comes with the pipeline only.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "..dtypes": ("CAST_DTYPES", "CONVERT_DTYPES", "DTYPE_BYTES", "FLOAT_DTYPES", "KEEP", "QUANT_DTYPES",
                 "numpy_dtype"),
    ".hashing": ("DEFAULT_HASH", "HASH_NAMES", "HASHES", "Follower", "hash_files", "hash_of", "new_hash"),
    ".options": ("IO_MODES", "WriteOptions"),
    ".output": ("OutputFile", "OutputSession", "open_output", "output_session"),
    ".pipeline": ("CHUNK_BYTES", "BufferPool", "Buffers", "Piece", "Pooled", "Progress", "Span", "cast_array",
                  "iter_bytes", "prefetched", "target_nbytes", "tensor_pieces", "write_pieces"),
    ".shards": ("ShardedOutput", "plan_shards"),
    ".stages": ("STAGES", "add_stage", "reset_stages", "stage_times"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
