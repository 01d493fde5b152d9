"""Sharded outputs: which tensors go into which file (`plan_shards`), the files' names and the index that maps each
tensor to its file, for the formats that split weights over several files (Hugging Face safetensors, KerasHub H5)."""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Iterator


def plan_shards(sizes: Iterable[tuple[str, int]], max_shard: int | None) -> list[list[str]]:
    """Greedy, in order: start a new shard when the next tensor would overflow the current one."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, n in sizes:
        if max_shard and shards[-1] and used + n > max_shard:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += n
    return shards


class ShardedOutput:
    """The plan of a sharded output: `sizes` (name, bytes) in writing order, cut into shards of at most `max_shard`
    bytes. A single shard is the file `single`; several are named by `pattern`, formatted with `index` (from 0),
    `number` (from 1) and `count` (e.g. "model-{number:05d}-of-{count:05d}.safetensors"). Iterating gives
    (file name, tensor names); `record` notes where each key was written, `index` is the index's JSON object."""

    def __init__(self, sizes: Iterable[tuple[str, int]], max_shard: int | None, single: str, pattern: str):
        sizes = list(sizes)
        self.total_size = sum(n for _, n in sizes)
        self.shards = plan_shards(sizes, max_shard)
        count = len(self.shards)
        self.files = [single] if count == 1 else [pattern.format(index=i, number=i + 1, count=count)
                                                  for i in range(count)]
        self.weight_map: dict[str, str] = {}

    @property
    def sharded(self) -> bool:
        return len(self.files) > 1

    def __iter__(self) -> Iterator[tuple[str, list[str]]]:
        return iter(zip(self.files, self.shards))

    def record(self, key: str, file: str) -> None:
        self.weight_map[key] = file

    def index(self, total_size: Any = None, sort: bool = False) -> dict[str, Any]:
        """{"metadata": {"total_size"}, "weight_map"}: what both formats' index files hold."""
        weight_map = dict(sorted(self.weight_map.items())) if sort else dict(self.weight_map)
        total = self.total_size if total_size is None else total_size
        return {"metadata": {"total_size": total}, "weight_map": weight_map}

    def write_index(self, directory: str, name: str, indent: int = 2, newline: bool = True, **index: Any) -> str:
        """Write `index(**index)` as `directory/name`; returns its path."""
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.index(**index), f, indent=indent)
            if newline:
                f.write("\n")
        return path
