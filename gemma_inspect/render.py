"""Rich rendering of library results (tables, trees) and JSON. The library never prints; the CLI calls this."""

from __future__ import annotations

import json
import math
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .spec import format_bytes, format_count
from .terminal import printable_tree

NORM_TEXT = {"rmsnorm": "RMSNorm", "layernorm_nonparametric": "LayerNorm (no weights, no bias)"}
ACT_TEXT = {"gelu_tanh": "GELU, tanh approximation", "gelu": "GELU, exact (erf)", "silu": "SiLU"}


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


def _num(x: float) -> str:
    return f"{x:g}"


def _rope(a: dict[str, Any]) -> str:
    g, l = a["rope_theta"], a["rope_local_theta"]
    s = f"base {_num(g)}" if g == l else f"base {_num(l)} local, {_num(g)} global"
    if a["rope_scaling_factor"] != 1:
        s += f", linear x{_num(a['rope_scaling_factor'])} on global layers"
    if a.get("rope_local_scaling_factor", 1) != 1:
        s += f", linear x{_num(a['rope_local_scaling_factor'])} on local layers"
    return s


def _sliding(a: dict[str, Any]) -> str:
    types = a["layer_types"]
    n_sliding = sum(1 for t in types if t == "sliding_attention")
    if not n_sliding:
        return "none (every layer global)"
    n = len(types)
    if n_sliding == n:
        pattern = "every layer"
    else:
        glob = [i for i, t in enumerate(types) if t == "full_attention"]
        pattern = f"{n_sliding}/{n} layers; global: {_ranges(glob)}"
    return f"{a['sliding_window']} tokens on {pattern}"


def _ranges(idx: list[int]) -> str:
    if len(idx) > 6:
        step = idx[1] - idx[0]
        if all(b - a == step for a, b in zip(idx, idx[1:])):
            return f"{idx[0]}, {idx[1]}, ... {idx[-1]} (every {step})"
    return ", ".join(map(str, idx))


def describe(m: dict[str, Any], compact: bool = False) -> list[tuple[str, str]]:
    """(label, value) rows shared by `summary` and `compare`, all computed from the summary object.
    `compact` gives the short cells of the side-by-side table."""
    rows = _describe_full(m)
    if not compact:
        return rows
    a, p = m["architecture"], m["parameters"]
    short = {
        "Parameters": _short_count(p["total"]),
        "  if output untied": _short_count(p["total_if_untied"]),
        "Attention": f"{a['attention']} {a['num_attention_heads']}q / {a['num_key_value_heads']}kv",
        "Head dim": str(a["head_dim"]) + ("" if a["head_dim"] * a["num_attention_heads"] == a["hidden_size"]
                                          else f" (H x D = {a['head_dim'] * a['num_attention_heads']})"),
        "Query scale": f"1/sqrt({_num(a['query_pre_attn_scalar'])})",
        "FFN": f"{a['ffn']} {a['intermediate_size']}",
        "Activation": {"gelu_tanh": "GELU (tanh)", "gelu": "GELU (erf)", "silu": "SiLU"}.get(a["activation"],
                                                                                              a["activation"]),
        "Norm": ("LayerNorm, no weights" if a["norm_kind"] != "rmsnorm"
                 else "RMSNorm (1 + w)" if a["norm_offset"] else "RMSNorm w"),
        "Norm placement": a["norm_placement"],
        "Embedding scale": "none" if a["embedding_scale_exact"] == 1.0
        else f"x{_num(a['embedding_scale'])} (sqrt {a['hidden_size']})",
        "Tied embeddings": "no LM head" if m.get("lm_head") == "none" else "yes" if a["tied_embeddings"] else "no",
        "Sliding window": _sliding(a).replace(" tokens on", ",").replace(" (every layer global)", ""),
        "KV cache / token": format_bytes(m["kv_cache_bytes_per_token"]),
        "Dtype": a["dtype"] if m.get("tensors_read") is False
        else ", ".join(dtype_name(t) for t in m["dtypes"]) or a["dtype"],
        "Size": format_bytes(m["size_bytes"]),
    }
    return [(label, short.get(label, value)) for label, value in rows]


def _short_count(n: int) -> str:
    """Compact parameter counts: 8.5B, 2.5B, 302.9M (M below a billion), 1.2K."""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else format_count(n)


def _describe_full(m: dict[str, Any]) -> list[tuple[str, str]]:
    a, p = m["architecture"], m["parameters"]
    h, k = a["num_attention_heads"], a["num_key_value_heads"]
    d = a["hidden_size"]
    norm = NORM_TEXT.get(a["norm_kind"], a["norm_kind"])
    if a["norm_kind"] == "rmsnorm":
        norm += ", applies (1 + w)" if a["norm_offset"] == 1 else ", applies w"
    placement = {"pre": "pre-norm only", "pre+post": "pre + post (sandwich)"}[a["norm_placement"]]
    if a["embedding_scale_exact"] == 1.0:
        emb = "none"
    else:
        emb = f"x sqrt({d}) = {a['embedding_scale_exact']:.4f}"
        if f"{a['embedding_scale']:.4f}" != f"{a['embedding_scale_exact']:.4f}":  # visible rounding only
            emb += f" -> {_num(a['embedding_scale'])} in {a['dtype']}"
    caps = []
    if a["attention_logit_softcap"]:
        caps.append(f"attention {_num(a['attention_logit_softcap'])}")
    if a["final_logit_softcap"]:
        caps.append(f"final {_num(a['final_logit_softcap'])}")
    qps = a["query_pre_attn_scalar"]
    rows = [
        ("Family", m.get("family_title") or m["family"]),
        ("Parameters", f"{format_count(p['total'])} ({p['total']:,})"
                       + (" tied" if a["tied_embeddings"] else "")),
        ("  if output untied", f"{format_count(p['total_if_untied'])} ({p['total_if_untied']:,})"),
        ("  embedding", f"{format_count(p['embedding'])} ({_pct(p['embedding'] / p['total'])})"),
        ("Layers", str(a["num_layers"])),
        ("Hidden size d", str(d)),
        ("Attention", f"{a['attention']}: {h} query heads, {k} K/V head{'s' if k != 1 else ''}"),
        ("Head dim", str(a["head_dim"]) + ("" if a["head_dim"] * h == d else f" (H x D = {h * a['head_dim']} != d)")),
        ("Query scale", f"1/sqrt({_num(qps)})"
                        + (" = 1/sqrt(head_dim)" if qps == a["head_dim"] else
                           f" (not head_dim {a['head_dim']}; d/H = {d // h})")),
        ("FFN", f"{a['ffn']}, width {a['intermediate_size']} per branch"),
        ("Activation", ACT_TEXT.get(a["activation"], a["activation"])),
        ("Norm", norm),
        ("Norm placement", placement),
        ("QK-norm", "yes" if a["qk_norm"] else "no"),
        ("Embedding scale", emb),
        ("Tied embeddings", "no LM head: a base model, neither stored nor tied" if m.get("lm_head") == "none"
         else "yes (logits = h @ E^T)" if a["tied_embeddings"] else "no (separate output matrix)"),
        ("Vocabulary", f"{a['vocab_size']:,}"),
        ("Soft caps", ", ".join(caps) if caps else "none"),
        ("Sliding window", _sliding(a)),
        ("RoPE", _rope(a)),
        ("Context length", f"{a['max_position_embeddings']:,}"),
        ("KV cache / token", format_bytes(m["kv_cache_bytes_per_token"]) + f" ({a['dtype']})"),
        ("Dtype", ", ".join(f"{dtype_name(k)} x{v}" for k, v in m["dtypes"].items()) or a["dtype"]),
        ("Size", format_bytes(m["size_bytes"]) + ("" if m.get("tensors_read", True) else " (published dtype)")),
    ]
    return rows


def render_summary(console: Console, m: dict[str, Any]) -> None:
    m = printable_tree(m)  # names and notes come from the input: no control characters reach the terminal
    # Paths, notes and values are text, not markup: a directory named "run[/b]" must print as it is.
    title = f"{escape(m['source'])}  [dim]({'built-in card' if m['format'] == 'card' else m['format']})[/dim]"
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    # (the title wraps with the table; Trimmed drops the spaces rich leaves where it breaks a line)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for label, value in describe(m):
        table.add_row(label, escape(value))
    console.print(Trimmed(table))
    console.print()
    p = m["parameters"]
    pt = Table(title="Parameters", title_justify="left")
    pt.add_column("role")
    pt.add_column("count", justify="right")
    pt.add_column("share", justify="right")
    for role in ("embedding", "attention", "feedforward", "norms", "output"):
        if role == "output" and not p["output"]:
            continue
        pt.add_row(role, f"{p[role]:,}", _pct(p[role] / p['total']))
    pt.add_row("per decoder layer", f"{p['per_layer']:,}", "")
    pt.add_row(Text("total (tied counted once)", style="bold"), Text(f"{p['total']:,}", style="bold"), "100%")
    pt.add_row("total if the output were untied", f"{p['total_if_untied']:,}",
               f"+{_pct((p['total_if_untied'] - p['total']) / p['total'])}")
    console.print(Trimmed(pt))
    if m.get("quantization"):
        render_quantization(console, m["quantization"])
    if m.get("tokenizer"):
        files = ", ".join(m["tokenizer"]["files"]) or "embedded in the checkpoint"
        console.print(f"[bold]Tokenizer[/bold]: {m['tokenizer']['backend']} ({escape(files)})")
    if "nonfinite" in m:
        bad = m["nonfinite"]
        if bad:
            from .scan import findings

            console.print("[bold red]Values[/bold red]: " + escape(findings(bad, limit=5)))
        else:
            console.print(f"[bold]Values[/bold]: all {m['num_tensors']} tensors read, no NaN or infinite values")
    for note in m.get("notes", []):
        console.print(f"[yellow]note[/yellow]: {escape(note)}")


def render_quantization(console: Console, q: dict[str, Any]) -> None:
    """GGUF storage per tensor group: types (with tensor counts), size and bits per weight."""
    title = "Quantization" + (f" ({q['file_type']})" if q.get("file_type") else "")
    qt = Table(title=title, title_justify="left")
    qt.add_column("group")
    qt.add_column("types")
    qt.add_column("size", justify="right")
    qt.add_column("bits/weight", justify="right")
    for g in q["groups"]:
        types = ", ".join(f"{dtype_name(t)} x{n}" for t, n in g["types"].items())
        qt.add_row(g["group"], types, format_bytes(g["bytes"]), f"{g['bits_per_weight']:.2f}")
    if q.get("bits_per_weight") is not None:
        qt.add_row(Text("all weights", style="bold"), "", Text(format_bytes(sum(g["bytes"] for g in q["groups"])),
                   style="bold"), Text(f"{q['bits_per_weight']:.2f}", style="bold"))
    console.print(Trimmed(qt))


def _short_source(source: str, width: int = 24) -> str:
    """A column header for a checkpoint: its last path component, shortened in the middle when long."""
    import os

    name = os.path.basename(source.rstrip("/\\")) or source
    return name if len(name) <= width else name[: width // 2 - 1] + "..." + name[-(width // 2 - 2):]


def _longest_word(text: str) -> int:
    return max((len(w) for w in text.split()), default=0)


def render_compare(console: Console, result: dict[str, Any]) -> None:
    """Side by side: one column per model, headed by its card name or its path's last component (the full
    paths follow the table). No cell breaks inside a word or a number: each column is at least as wide as its
    longest word, and a cell wraps only between words."""
    result = printable_tree(result)
    models = result["models"]
    described = [dict(describe(m, compact=True)) for m in models]
    labels = [label for label, _ in describe(models[0], compact=True)]
    headers = [m["card"] or _short_source(m["source"]) for m in models]
    table = Table(title="Side by side (rows that differ are highlighted)", title_justify="left")
    table.add_column("", style="bold cyan", no_wrap=True)
    for header, d in zip(headers, described):
        widest = max([_longest_word(header)] + [_longest_word(v) for v in d.values()])
        table.add_column(escape(header), min_width=widest)
    for label in labels:
        values = [d[label] for d in described]
        differs = len(set(values)) > 1
        table.add_row(label, *[Text(v, style="bold yellow" if differs else "") for v in values])
    console.print(Trimmed(table))
    for header, m in zip(headers, models):
        if not m["card"] and header != m["source"]:
            console.print(f"{escape(header)}: {escape(m['source'])}")
    notes = [(h, n) for h, m in zip(headers, models) for n in m.get("notes", [])]
    for who, note in notes:
        console.print(f"[yellow]note[/yellow] ({escape(who)}): {escape(note)}")


def _pct(x: float) -> str:
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


# ----------------------------------------------------------------------------- progress
class _Progress:
    """A rich progress bar on stderr that only appears when the work takes longer than a moment."""

    def __init__(self, console: Console, label: str, total: int, unit: str):
        from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)

        columns = [TextColumn("[bold]{task.description}"), BarColumn()]
        if unit == "bytes":
            columns += [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
        else:
            columns += [MofNCompleteColumn(), TimeRemainingColumn()]
        self.progress = Progress(*columns, console=console, transient=True,
                                 disable=not console.is_terminal)
        self.task = self.progress.add_task(label, total=total or None)

    def __enter__(self) -> Any:
        self.progress.start()
        return lambda n: self.progress.advance(self.task, n)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


class StepProgress:
    """The steps of a long command on stderr, with the time elapsed: on a terminal one spinner line
    ("[2/4] running B with keras on cpu  0:00:12"); in a pipe or a CI log, where a spinner shows nothing, one
    line per step as it starts, with the seconds elapsed so far, and one line at the end. Used as
    `with StepProgress(console, "parity") as say: say("[1/4] running A ...")`."""

    def __init__(self, console: Console, label: str, lines: bool = False):
        self.console, self.label, self.lines = console, label, lines  # lines: one line per step, always
        self.progress: Any = None
        self.start = 0.0

    def __enter__(self) -> Any:
        import time

        self.start = time.perf_counter()
        if self.console.is_terminal and not self.lines:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                     console=self.console, transient=True)
            self.task = self.progress.add_task(self.label, total=None)
            self.progress.start()
        return self.update

    def elapsed(self) -> float:
        import time

        return time.perf_counter() - self.start

    def update(self, message: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=f"{self.label}: {message}")
        else:
            self.console.print(f"{self.label} {self.elapsed():6.1f} s  {message}", markup=False, highlight=False)

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
        elif exc_type is None:
            self.console.print(f"{self.label} {self.elapsed():6.1f} s  done", markup=False, highlight=False)


def byte_progress(console: Console, label: str, total: int) -> _Progress:
    return _Progress(console, label, total, "bytes")


def count_progress(console: Console, label: str, total: int) -> _Progress:
    return _Progress(console, label, total, "count")


# ----------------------------------------------------------------------------- convert / diff
def render_convert(console: Console, report: dict[str, Any]) -> None:
    parity = report.get("parity")  # render_parity escapes its own (and shows tokenizer texts with repr)
    report = printable_tree(report)
    console.print(f"[green]Converted[/green] {escape(report['source'])} ({report['source_format']}) -> "
                  f"[bold]{escape(report['dest'])}[/bold] ({report['format']}): {report['tensors']} tensors, "
                  f"{format_bytes(report['bytes_written'])}"
                  + ("" if report["dtype"] == "keep" else f", cast to {report['dtype']}")
                  + f", in {report['seconds']:.2f} s of conversion (reading the source's headers, start-up and "
                    f"imports not counted)")
    for note in report.get("source_notes", []):
        console.print(f"[yellow]note[/yellow] (source): {escape(note)}")
    for note in report["notes"]:
        console.print(f"[yellow]note[/yellow]: {escape(note)}")
    if parity is not None:
        render_parity(console, parity)


def render_diff(console: Console, result: dict[str, Any]) -> None:
    result = printable_tree(result)
    c = result["counts"]
    console.print(f"A: {escape(result['a']['source'])} ({result['a']['format']})")
    console.print(f"B: {escape(result['b']['source'])} ({result['b']['format']})")
    if result["spec_differences"]:
        st = Table(title="Architecture differences", title_justify="left")
        st.add_column("field")
        st.add_column("A")
        st.add_column("B")
        for d in result["spec_differences"]:
            st.add_row(d["field"], str(d["a"]), str(d["b"]))
        console.print(st)
    bad = [r for r in result["tensors"] if r["status"] not in ("equal", "close")]
    close = sorted((r for r in result["tensors"] if r["status"] == "close"), key=lambda r: -r["max_abs_diff"])
    shown = bad[:200] + close[:10]
    if shown:
        tt = Table(title=f"Tensors that are not equal ({len(bad) + len(close)} of {len(result['tensors'])}"
                         + (f"; the {min(10, len(close))} largest 'close' ones" if close else "") + ")",
                   title_justify="left")
        tt.add_column("tensor (canonical name)", no_wrap=True)
        tt.add_column("status", no_wrap=True)
        tt.add_column("max |A-B|", justify="right", no_wrap=True)
        sides = any(r["shape_a"] != r["shape_b"] for r in shown)
        if sides:
            tt.add_column("A")
            tt.add_column("B")
        style = {"close": "yellow", "different": "red", "missing_a": "red", "missing_b": "red",
                 "shape_mismatch": "red"}
        for r in shown:
            cells = [r["name"], Text(r["status"], style=style.get(r["status"], "")), fmt_float(r["max_abs_diff"])]
            if sides:
                cells += [f"{r['dtype_a'] or '-'} {r['shape_a'] or ''}", f"{r['dtype_b'] or '-'} {r['shape_b'] or ''}"]
            tt.add_row(*cells)
        hidden = len(bad) - len(bad[:200]) + len(close) - len(close[:10])
        if hidden:
            tt.add_row(f"... {hidden} more (see --json)", *[""] * (len(tt.columns) - 1))
        console.print(tt)
    for r in result["tensors"]:
        if "shared_rows" in r:
            console.print(f"{escape(r['name'])}: A has {r['shape_a'][0]:,} rows, B {r['shape_b'][0]:,}; the "
                          f"{r['shared_rows']:,} rows both have: max |A-B| {fmt_float(r['shared_rows_max_abs_diff'])}")
    pairs = sorted({(r["dtype_a"], r["dtype_b"]) for r in result["tensors"]
                    if r["dtype_a"] and r["dtype_b"] and r["dtype_a"] != r["dtype_b"]})
    for da, db in pairs:
        n = sum(1 for r in result["tensors"] if (r["dtype_a"], r["dtype_b"]) == (da, db))
        console.print(f"dtypes: {n} tensors are {da} in A and {db} in B")
    dtype_only = sum(1 for r in result["tensors"] if r["status"] == "equal" and not r.get("bit_identical", True))
    summary = ", ".join(f"{n} {s}" for s, n in c.items() if n)
    if dtype_only:
        summary += f" ({dtype_only} equal in value but stored in different dtypes)"
    verdict = "[green]identical[/green]" if result["identical"] else "[red]different[/red]"
    if result["spec_differences"]:
        verdict += " (architecture: " + ", ".join(d["field"] for d in result["spec_differences"]) + ")"
    atol = f" (atol {result['atol']:g})" if result["atol"] else ""
    console.print(f"{summary}: {verdict}{atol}")


def render_manifest_check(console: Console, result: dict[str, Any]) -> None:
    """`diff DEST --manifest`: the files and tensors that do not match, then the verdict."""
    result = printable_tree(result)
    console.print(Text(f"A: {result['a']['source']} ({result['a']['format']})"))
    console.print(Text(f"manifest: {result['manifest']}"))
    style = {"different": "red", "missing_a": "red", "missing_b": "red", "shape_mismatch": "red"}
    bad = [f for f in result["files"] if f["status"] != "equal"]
    if bad:
        ft = Table(title=f"Files that do not match ({len(bad)} of {len(result['files'])})", title_justify="left")
        for col in ("file", "status", "size", "expected size"):
            ft.add_column(col, no_wrap=col != "file")
        for f in bad:
            ft.add_row(Text(f["name"]), Text(f["status"], style=style.get(f["status"], "")),
                       "-" if f["size"] is None else f"{f['size']:,}",
                       "-" if f["expected_size"] is None else f"{f['expected_size']:,}")
        console.print(ft)
    bad_t = [t for t in result["tensors"] if t["status"] != "equal"]
    if bad_t:
        tt = Table(title=f"Tensors that do not match ({len(bad_t)} of {len(result['tensors'])})", title_justify="left")
        for col in ("tensor (canonical name)", "status", "A", "manifest"):
            tt.add_column(col)
        for t in bad_t[:200]:
            tt.add_row(Text(t["name"]), Text(t["status"], style=style.get(t["status"], "")),
                       f"{t['dtype_a'] or '-'} {t['shape_a'] or ''}", f"{t['dtype_b'] or '-'} {t['shape_b'] or ''}")
        console.print(tt)
    if result["error"]:
        console.print(Text(f"A does not read: {result['error']}", style="red"))
    c = result["counts"]
    files = ", ".join(f"{n} {s}" for s, n in c.items() if n)
    verdict = Text("matches its manifest", style="green") if result["identical"] else Text("does not match",
                                                                                            style="red")
    console.print(Text(f"files: {files}; tensors: {len(result['tensors'])}: ").append(verdict))


# ----------------------------------------------------------------------------- parity
def _hanging(console: Console, label: str, text: str) -> None:
    """`label text`, the text wrapped to the console's width under itself (a hanging indent), whole words only."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")  # a word longer than the line (a path) is folded, never cut short
    grid.add_row(label, Text(text))
    console.print(Trimmed(grid))


def render_parity(console: Console, result: dict[str, Any]) -> None:
    """Per-layer differences (ok / mismatch), the logits metrics, the tolerance, the tokenizer, a verdict."""
    texts = [m["text"] for m in (result.get("tokenizer") or {}).get("mismatches", [])]  # shown with repr()
    result = printable_tree(result)
    a, b, tol = result["a"], result["b"], result["tolerance"]
    layers = result["layers"]
    n = len(layers) - 2
    console.print(f"A: {escape(a['source'])}  [dim]({a['runtime']})[/dim]")
    console.print(f"B: {escape(b['source'])}  [dim]({b['runtime']})[/dim]")
    console.print(f"{len(result['tokens'])} tokens on {result['device']} in {result['dtype']}")
    noise_mode = tol.get("mode") == "noise floor"
    title = ("Hidden states (max|A-B| against the measured float32 noise floor)" if noise_mode
             else "Hidden states (max|A-B| / max|A| per layer)")
    table = Table(title=title, title_justify="left")
    table.add_column("layer", no_wrap=True)
    table.add_column("max |A-B|", justify="right", no_wrap=True)
    table.add_column("relative", justify="right", no_wrap=True)
    if noise_mode:
        table.add_column("noise", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    first = result["first_divergent_layer"]
    for r in layers:
        i = r["index"]
        label = r["name"]  # parity.layer_label's
        ok = r["status"] == "ok"
        style = "" if ok else ("bold red" if i == first else "red")
        cells = [Text(label, style=style), fmt_float(r["max_abs_diff"]), fmt_float(r["relative_diff"])]
        if noise_mode:
            cells.append(fmt_float(r.get("noise_floor")))
        cells.append(Text(r["status"] + (" <- first divergent" if i == first else ""), style="green" if ok else style))
        table.add_row(*cells)
    console.print(Trimmed(table))
    lg = result["logits"]
    line = (f"[bold]Logits[/bold]: max |A-B| {fmt_float(lg['max_abs_diff'])}, mean {fmt_float(lg['mean_abs_diff'])}, "
            f"KL(A||B) {fmt_float(lg['kl_divergence'])}, top-1 agreement {_pct(lg['top1_agreement'])}")
    if "top1_agreement_outside_ties" in lg:
        line += f" ({_pct(lg['top1_agreement_outside_ties'])} outside ties)"
    console.print(line + f", top-5 overlap {_pct(lg['top5_overlap'])}")
    if "vocab_compared" in lg:
        voc = result["vocab"]
        console.print(f"[bold]Vocabulary[/bold]: A has {voc['a']:,} rows, B {voc['b']:,}: differences and KL over "
                      f"the {voc['compared']:,} both have; probability on the rows only one side has: at most "
                      f"{fmt_float(max(lg['excluded_mass_a'], lg['excluded_mass_b']))} "
                      f"(limit {tol.get('max_excluded_mass', 0):g})")
    mode = tol.get("mode", result["dtype"])
    if mode == "noise floor":
        console.print(f"[bold]Tolerance[/bold] (measured noise floor): max|A-B| <= {tol['noise_factor']:g} x noise + "
                      f"{tol['floor_relative']:.2g} x max|O| at every layer and for the logits (logits: noise "
                      f"{fmt_float(lg.get('noise_floor'))}, bound {fmt_float(tol.get('logits_max_abs_diff'))}); "
                      f"noise = min(max|A-O|, max|B-O|), O = the reference runtime in float64 on A's weights")
    elif mode in ("fixed", "float32"):
        console.print(f"[bold]Tolerance[/bold] (fixed): max|A-B| <= {tol['atol']:g} x max|A| for every hidden state "
                      f"and the logits (logits: {fmt_float(tol.get('logits_max_abs_diff'))})")
    else:
        label = "quantized weights" if mode == "quantized" else mode
        console.print(f"[bold]Tolerance[/bold] ({label}): top-1 agreement outside ties >= "
                      f"{100 * tol['min_top1_agreement']:.0f}% (ties: within {fmt_float(tol.get('top1_tie_logits'))} "
                      f"logits), KL <= {tol['max_kl_divergence']:g}; hidden states <= {tol['atol']:g} x max|A|, "
                      f"embedding output <= {tol['embedding_atol']:.3g} x max|A|")
    if tol.get("reason"):
        _hanging(console, "  why:", tol["reason"])
    tok = result["tokenizer"]
    if tok is None:
        console.print("[bold]Tokenizer[/bold]: not compared (a side has no tokenizer)")
    elif tok["passed"]:
        console.print(f"[bold]Tokenizer[/bold]: [green]identical[/green] ids on {tok['texts']} texts "
                      f"and special tokens")
    else:
        console.print(f"[bold]Tokenizer[/bold]: [red]{len(tok['mismatches'])} of {tok['texts']} texts differ[/red]"
                      + (f", vocabulary {tok['vocab_size']['a']} vs {tok['vocab_size']['b']}"
                         if tok["vocab_size"]["a"] != tok["vocab_size"]["b"] else ""))
        for text, m in zip(texts, tok["mismatches"]):
            k = m["first_difference"]
            console.print(f"  {text!r}: first difference at id #{k}: A {m['a'][k:k + 4]} vs B {m['b'][k:k + 4]}",
                          markup=False)
        for m in tok["special_token_mismatches"]:
            console.print(f"  {m['token']}: A {m['a']} vs B {m['b']}", markup=False)
    if tok is not None and tok.get("native"):
        _hanging(console, " ", f"tokenized by A: {tok['native']['a']}; B: {tok['native']['b']}"
                 + (f"; {len(tok['skipped'])} text(s) spelling control tokens skipped (only one side reads "
                    f"them as tokens)" if tok.get("skipped") else ""))
    if result["passed"]:
        console.print("[bold green]PASS[/bold green]: A and B compute the same thing within tolerance")
    else:
        if first is None:
            where = "the tokenizers differ"
        else:
            what = ("embedding output" if first == -1 else "final norm / logits" if first == n
                    else f"decoder block {first}")
            where = f"first divergent layer {first} ({what})"
        console.print(f"[bold red]FAIL[/bold red]: {where}")
        for hint in result.get("advice", []):
            if hint.startswith("gemma-inspect diff ") and " says " in hint:
                command, _, rest = hint.partition(" says ")
                # a command to copy: on a line of its own, never wrapped or cut however long its paths are
                console.print(Text(f"  try: {command}"), soft_wrap=True)
                _hanging(console, " ", f"says {rest}")
            else:
                _hanging(console, "  try:" if hint.startswith("a fixed") else " ", hint)


# ----------------------------------------------------------------------------- verify
STATUS_STYLE = {"pass": "green", "fail": "bold red", "warn": "yellow", "skip": "dim"}


def _value(v: Any) -> str:
    """A check's expected/observed value in a table cell."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return _num(v)
    if isinstance(v, dict) and set(v) == {"window", "sliding_layers", "global_layers"}:
        if not v["sliding_layers"]:
            return "none (every layer global)"
        return f"{v['window']} on layers {_ranges(v['sliding_layers'])}; global: {_ranges(v['global_layers'])}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_value(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_value(x) for x in v)
    return str(v)


WIDE_VERIFY = 120  # below this width, `verify` prints each check as a block instead of a table row


def render_verify(console: Console, result: dict[str, Any]) -> None:
    """Each check: name, status (coloured), expected, observed, evidence; then a verdict. A table on a wide
    terminal; below WIDE_VERIFY columns (a pipe, a CI log, an 80-column terminal) one block per check - the
    status and name on one line, expected and observed on the next, the evidence wrapped under them - so that
    no word is split and each check reads as a sentence."""
    result = printable_tree(result)
    console.print(Trimmed(Text.from_markup(f"{escape(result['source'])}  [dim]({result['runtime']})[/dim]")))
    title = "Architecture observed in a traced forward pass, and config lint"
    if console.width >= WIDE_VERIFY:
        table = Table(title=title, title_justify="left")
        table.add_column("check", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("expected", max_width=26)
        table.add_column("observed", max_width=26)
        table.add_column("evidence", ratio=1)
        for c in result["checks"]:
            style = STATUS_STYLE.get(c["status"], "")
            table.add_row(Text(c["name"], style="bold" if c["status"] == "fail" else ""),
                          Text(c["status"], style=style), Text(_value(c["expected"])),
                          Text(_value(c["observed"]), style=style if c["status"] != "pass" else ""),
                          Text(c["evidence"]))
        console.print(Trimmed(table))
    else:
        console.print(f"[bold]{title}[/bold]")
        for c in result["checks"]:
            style = STATUS_STYLE.get(c["status"], "")
            grid = Table.grid(padding=(0, 1))
            grid.add_column(no_wrap=True, width=4)
            grid.add_column()
            grid.add_row(Text(c["status"], style=style), Text(c["name"], style="bold"))
            grid.add_row("", Text.assemble(("expected ", "dim"), _value(c["expected"]), ("; observed ", "dim"),
                                           (_value(c["observed"]), style if c["status"] != "pass" else "")))
            if c["evidence"]:
                grid.add_row("", Text(c["evidence"], style="dim"))
            console.print(Trimmed(grid))
    counts = {s: sum(1 for c in result["checks"] if c["status"] == s) for s in ("pass", "fail", "warn", "skip")}
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if result["passed"]:
        console.print(f"[bold green]PASS[/bold green]: {tally}")
    else:
        failed = ", ".join(c["name"] for c in result["checks"] if c["status"] == "fail")
        console.print(f"[bold red]FAIL[/bold red]: {failed} ({tally})")


def render_graph(console: Console, graph: dict[str, Any]) -> None:
    """The recorded layer graph of one decoder block as a tree: its modules and its own arithmetic in call
    order, each with the tensor it was fed (`<- ...`) and its output shape; residual additions in bold."""
    from rich.tree import Tree

    graph = printable_tree(graph)

    def shape(s: Any) -> str:
        return f" [dim]{escape(str(list(s)))}[/dim]" if s else ""

    tree = Tree(f"[bold]{escape(graph['block'])}[/bold] ({escape(graph['class'])})  input "
                f"{escape(graph['input'])}{shape(graph['shape'])}")

    def add(parent: Any, node: dict[str, Any], top: bool) -> None:
        if node["kind"] == "residual":
            parent.add(f"[bold magenta]+ residual[/bold magenta]  {escape(node['stream'])} + "
                       f"{escape(node['branch'])}  -> [bold]{escape(node['output'])}[/bold]{shape(node['shape'])}")
            return
        if node["kind"] == "op":
            fed = f"  <- {escape(', '.join(node['inputs']))}" if node.get("inputs") else ""
            parent.add(f"[italic]{escape(node['name'])}[/italic]{fed}{shape(node['shape'])}")
            return
        role = node.get("role")
        style = "cyan" if role == "norm" else ("bold" if role in ("attention", "mlp") else "")
        label = escape(node["name"] if top else node["name"].rsplit(".", 1)[-1])
        name = f"[{style}]{label}[/{style}]" if style else label
        fed = f"  <- {escape(node['input'])}" if "input" in node else ""
        branch = parent.add(f"{name}  [dim]{escape(node['class'])}[/dim]{fed}{shape(node.get('shape'))}")
        for child in node.get("children", []):
            add(branch, child, False)

    for node in graph["nodes"]:
        add(tree, node, True)
    tree.add(f"output: [bold]{escape(str(graph['output']))}[/bold]")
    console.print(tree)
