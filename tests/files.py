"""Small file helpers the tests share: read a file's bytes, edit a JSON file in place."""

from __future__ import annotations

import json
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
