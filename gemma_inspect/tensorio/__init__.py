"""Tensor IO: the layer below every format's writer and reader of tensor bytes, above nothing but `errors`,
`dtypes` and `arrays`.

    pipeline   one tensor's bytes streamed through reused buffers: read, cast, re-laid-out, written
    shards     shard plans, shard file names and the index of a sharded output
    hashing    the output files' hashes, computed while they are written
    options    WriteOptions, what a writer is asked to do
    stages     seconds per stage of the conversion in progress

The dtype tables are `gemma_inspect.dtypes` (re-exported here), a module of their own so that `spec` and
`checkpoint` read them without importing numpy.
"""

from __future__ import annotations

from ..dtypes import (CAST_DTYPES, CONVERT_DTYPES, DTYPE_BYTES, FLOAT_DTYPES, KEEP, QUANT_DTYPES,  # noqa: F401
                      numpy_dtype)
from .hashing import DEFAULT_HASH, HASH_NAMES, HASHES, Follower, hash_files, hash_of, new_hash  # noqa: F401
from .options import WriteOptions  # noqa: F401
from .pipeline import (CHUNK_BYTES, BufferPool, Buffers, Piece, Pooled, Progress, Span, cast_array,  # noqa: F401
                       iter_bytes, prefetched, target_nbytes, tensor_pieces, write_pieces)
from .shards import ShardedOutput, plan_shards  # noqa: F401
from .stages import STAGES, add_stage, reset_stages, stage_times  # noqa: F401
