"""Small file helpers the tests share: read a file's bytes, edit a JSON file in place, digest a tree."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def edit_json(path: str, edit: Callable[[Any], None]) -> None:
    """Load the JSON at `path`, let `edit(obj)` change it in place, write it back."""
    with open(path) as f:
        obj = json.load(f)
    edit(obj)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def tree_digest(root: str) -> dict[str, str]:
    """Every entry below `root` (not following symlinks) -> its kind and content hash or link target: equal
    before and after a command shows that the command left the tree untouched."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link:" + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = "dir"
            else:
                with open(p, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out
