"""The pieces every renderer shares: output trimmed of rich's padding, dtype spellings, plain JSON, number
formats. A leaf of the rendering modules (render.py, render_runs.py)."""

from __future__ import annotations

import json
import math
from typing import Any

from rich.console import Console


class Trimmed:
    """A renderable printed without the trailing spaces rich pads table rows with (a summary line in a log or
    a diff then ends where its text ends)."""

    def __init__(self, renderable: Any):
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: Any) -> Any:
        from rich.segment import Segment

        for line in console.render_lines(self.renderable, options, pad=False):
            while line and not line[-1].text.strip() and not line[-1].control:
                line.pop()
            if line:
                last = line[-1]
                line[-1] = Segment(last.text.rstrip(), last.style, last.control)
            yield from line
            yield Segment.line()


GGUF_FLOAT_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def dtype_name(t: str) -> str:
    """One spelling of float dtypes everywhere (GGUF's F32 is float32); quantized types keep their names."""
    return GGUF_FLOAT_NAMES.get(t, t)


def print_json(obj: Any) -> None:
    """One JSON object on stdout and nothing else there. Strict JSON (RFC 8259): a non-finite number - a NaN or
    an infinity met in weights or activations - is written as null; the status fields next to it say what
    happened."""
    import sys

    sys.stdout.write(json.dumps(plain(obj), indent=2, allow_nan=False) + "\n")


def plain(o: Any) -> Any:
    """`o` as plain JSON data: numpy/torch scalars as numbers, sets and tuples as lists, NaN/inf as None."""
    if isinstance(o, dict):
        return {str(k): plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set)):
        return [plain(v) for v in o]
    if isinstance(o, bool) or o is None or isinstance(o, (str, int)):
        return o
    if hasattr(o, "item") and not isinstance(o, float):
        return plain(o.item())
    if isinstance(o, float):
        return float(o) if math.isfinite(o) else None
    return str(o)


def num(x: float) -> str:
    return f"{x:g}"


def ranges(idx: list[int]) -> str:
    if len(idx) > 6:
        step = idx[1] - idx[0]
        if all(b - a == step for a, b in zip(idx, idx[1:])):
            return f"{idx[0]}, {idx[1]}, ... {idx[-1]} (every {step})"
    return ", ".join(map(str, idx))


def pct(x: float) -> str:
    """A share as a percentage with one decimal, never a non-zero share shown as 0.0% nor a partial one as
    100.0%."""
    p = 100 * x
    if 0 < p < 0.05:
        return "<0.1%"
    if 99.95 <= p < 100:
        return ">99.9%"
    return f"{p:.1f}%"


def fmt_float(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}e}" if abs(x) < 1e-2 or abs(x) >= 1e4 else f"{x:.{digits}f}"


__all__ = ["Trimmed", "GGUF_FLOAT_NAMES", "dtype_name", "print_json", "plain", "num", "ranges", "pct", "fmt_float"]
