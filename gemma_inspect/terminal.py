"""Text from a checkpoint made safe for a terminal.

Tensor, shard, file and layer names, config values and paths come from the input. Printed raw, a newline in
one breaks the one-line `Error:` contract and a table row, and an escape sequence (clear the screen, move the
cursor, set the window title, print a fake `PASS:` line) reaches the terminal. `printable` writes every
control or invisible formatting character as an escape (`\\n`, `\\x1b`, `\\u202e`), the way Python's repr
does, and leaves everything else (accents, CJK, emoji, backslashes) as it is. It is applied where text is
printed: the CLI's error and warning lines and the renderers' tables and notes. JSON output needs none of it:
json.dumps escapes control characters itself.
"""

from __future__ import annotations

import unicodedata
from typing import Any

# Cc: C0/C1 controls and DEL; Cf: invisible formatting (bidirectional overrides, zero-width characters);
# Cs: lone surrogates (undecodable bytes of a file name); Zl/Zp: the Unicode line and paragraph separators.
_UNPRINTABLE = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    cp = ord(ch)
    return f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"


def printable(text: Any) -> str:
    """`text` (any object: str() of it) with every control or invisible formatting character escaped.
    Idempotent: the result holds no such character, so escaping it again changes nothing."""
    s = text if isinstance(text, str) else str(text)
    if s.isprintable() and s.isascii():  # the common case, at C speed
        return s
    return "".join(_escape(ch) if unicodedata.category(ch) in _UNPRINTABLE else ch for ch in s)


def printable_tree(obj: Any) -> Any:
    """`obj` (a result dict, lists, strings, numbers) with every string in it - keys too - made printable."""
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {printable_tree(k): printable_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [printable_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(printable_tree(v) for v in obj)
    return obj
