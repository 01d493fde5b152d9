"""Rich rendering of library results (tables, trees) and JSON. The library never prints; the CLI calls this.

This module: `summary`, `compare`, progress bars, `convert`, `diff`; the renderers of the commands that run models
(`parity`, `verify`) are in render_runs.py and the shared pieces in render_base.py, both re-exported here."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .render_base import GGUF_FLOAT_NAMES, Trimmed, dtype_name, fmt_float, plain, print_json  # noqa: F401
from .render_base import num as _num
from .render_base import pct as _pct
from .render_base import ranges as _ranges
from .render_runs import STATUS_STYLE, WIDE_VERIFY, _value, render_graph, render_parity, render_verify  # noqa: F401
from .spec import format_bytes, format_count
from .terminal import printable_tree

NORM_TEXT = {"rmsnorm": "RMSNorm", "layernorm_nonparametric": "LayerNorm (no weights, no bias)"}
ACT_TEXT = {"gelu_tanh": "GELU, tanh approximation", "gelu": "GELU, exact (erf)", "silu": "SiLU"}


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


def describe(m: dict[str, Any], compact: bool = False, layered: bool | None = None) -> list[tuple[str, str]]:
    """(label, value) rows shared by `summary` and `compare`, all computed from the summary object.
    `compact` gives the short cells of the side-by-side table; `layered` adds the Gemma 4 rows (per-layer
    geometry, K=V, KV sharing, experts, per-layer inputs, layer scalars; default: when the model has them)."""
    rows = _describe_full(m)
    if layered is None:
        layered = "attention_k_eq_v" in m["architecture"]
    if compact:
        rows = _compact(m, rows)
    if layered:
        from .render_layers import insert_layer_rows

        rows = insert_layer_rows(rows, m, compact)
    return rows


def _compact(m: dict[str, Any], rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
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
        "Attention mask": _mask(a).split(";")[0].split(" (")[0],
        "  dense heads": _short_count(p["heads"]) if "heads" in p else "",
        "  with heads": _short_count(p["total_with_heads"]) if "total_with_heads" in p else "",
        "Pooling": (m["embedding_head"]["pooling"] + "".join(f", {d['in_features']}->{d['out_features']}"
                                                             for d in m["embedding_head"]["dense"])
                    + (", L2" if m["embedding_head"]["normalize"] else "")) if m.get("embedding_head") else "",
        "Embedding": (f"{m['embedding_head']['output_dimension']}" + (", L2" if m["embedding_head"]["normalize"]
                                                                        else "")) if m.get("embedding_head") else "",
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
        ("Tied embeddings", "no LM head: an embedding model, its token states are pooled" if m.get("embedding_head")
         else "no LM head: a base model, neither stored nor tied" if m.get("lm_head") == "none"
         else "yes (logits = h @ E^T)" if a["tied_embeddings"] else "no (separate output matrix)"),
        ("Vocabulary", f"{a['vocab_size']:,}"),
        ("Soft caps", ", ".join(caps) if caps else "none"),
        ("Sliding window", _sliding(a)),
        ("Attention mask", _mask(a)),
        ("RoPE", _rope(a)),
        ("Context length", f"{a['max_position_embeddings']:,}"),
        ("KV cache / token", format_bytes(m["kv_cache_bytes_per_token"]) + f" ({a['dtype']})"),
        ("Dtype", ", ".join(f"{dtype_name(k)} x{v}" for k, v in m["dtypes"].items()) or a["dtype"]),
        ("Size", format_bytes(m["size_bytes"]) + ("" if m.get("tensors_read", True) else " (published dtype)")),
    ]
    head = m.get("embedding_head")
    if head:  # an embedding model: the transformer's count above, the heads' apart
        at = next(i for i, (label, _) in enumerate(rows) if label == "  embedding") + 1
        rows[1] = ("Parameters", f"{format_count(p['total'])} ({p['total']:,}) transformer")
        rows[at:at] = [("  dense heads", f"{format_count(p['heads'])} ({p['heads']:,})"),
                       ("  with heads", f"{format_count(p['total_with_heads'])} ({p['total_with_heads']:,})")]
        rows.append(("Pooling", _pooling(head)))
        rows.append(("Embedding", f"{head['output_dimension']}"
                                  + (", L2-normalised" if head["normalize"] else ", not normalised")))
    return rows


def _mask(a: dict[str, Any]) -> str:
    if a.get("attention_mask", "causal") == "causal":
        return "causal"
    s = "bidirectional (every token sees every position)"
    if a["sliding_window"] and "sliding_attention" in a["layer_types"]:
        # transformers turns the stored window w into |i - j| < w // 2 + 1 when attention is bidirectional
        s = f"bidirectional; sliding layers see |i - j| <= {a['sliding_window'] // 2}"
    return s


def _pooling(head: dict[str, Any]) -> str:
    steps = [f"{head['pooling']} over the tokens" + ("" if head["include_prompt"] else " (prompt excluded)")]
    for d in head["dense"]:
        steps.append(f"dense {d['in_features']} -> {d['out_features']} ({'bias' if d['bias'] else 'no bias'}, "
                     f"{d['activation']})")
    if head["normalize"]:
        steps.append("L2 normalise")
    return ", then ".join(steps)


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
    subgroups = {"embedding": (("per_layer_embedding", "  of which per-layer embedding table"),
                               ("per_layer_inputs", "  of which per-layer input projections")),
                 "attention": (("altup", "  of which AltUp (stream projections, router, coefficients)"),
                               ("laurel", "  of which LAuReL (low-rank residual)")),
                 "feedforward": (("experts", "  of which experts and router"),)}
    for role in ("embedding", "attention", "feedforward", "norms", "output"):
        if role == "output" and not p["output"]:
            continue
        pt.add_row(role, f"{p[role]:,}", _pct(p[role] / p['total']))
        for key, label in subgroups.get(role, ()):  # Gemma 4's finer counts, where the model has them
            if p.get(key):
                pt.add_row(label, f"{p[key]:,}", _pct(p[key] / p['total']))
    pt.add_row("per decoder layer" + (" (layer 0)" if "effective" in p or "experts" in p else ""),
               f"{p['per_layer']:,}", "")
    pt.add_row(Text("total (tied counted once)", style="bold"), Text(f"{p['total']:,}", style="bold"), "100%")
    pt.add_row("total if the output were untied", f"{p['total_if_untied']:,}",
               f"+{_pct((p['total_if_untied'] - p['total']) / p['total'])}")
    if "heads" in p:  # an embedding model's dense heads, apart from the transformer's total above
        pt.add_row("dense heads (after pooling)", f"{p['heads']:,}", f"+{_pct(p['heads'] / p['total'])}")
        pt.add_row(Text("total with the heads", style="bold"), Text(f"{p['total_with_heads']:,}", style="bold"), "")
    if "effective" in p:
        pt.add_row("effective (without the per-layer embedding table)", f"{p['effective']:,}",
                   _pct(p["effective"] / p["total"]))
    if "experts_active" in p:
        pt.add_row("active per token (top-k experts)", f"{p['experts_active']:,}",
                   _pct(p["experts_active"] / p["total"]))
    if p.get("buffers"):
        pt.add_row("buffers (layer scalars; not parameters)", f"{p['buffers']:,}", "")
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
    render_lint_findings(console, m.get("lint", []))
    for note in m.get("notes", []):
        console.print(f"[yellow]note[/yellow]: {escape(note)}")


def render_lint_findings(console: Console, records: list[dict[str, Any]]) -> None:
    """`summary`'s Lint section: the config lint's failures and warnings, one per line (status, rule, evidence
    wrapped under itself); nothing at all when every rule passed or was skipped."""
    found = [r for r in records if r["status"] in ("fail", "warn")]
    if not found:
        return
    counts = {s: sum(1 for r in found if r["status"] == s) for s in ("fail", "warn")}
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    style = "bold red" if counts["fail"] else "bold yellow"
    console.print(f"[{style}]Lint[/{style}]: {tally} of {len(records)} config rule{'s' if len(records) != 1 else ''}"
                  f" (verify runs every rule)")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for r in found:
        grid.add_row(Text(f"  {r['status']}", style=STATUS_STYLE.get(r["status"], "")), Text(r["name"]),
                     Text(r["evidence"]))
    console.print(Trimmed(grid))


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
    layered = any("attention_k_eq_v" in m["architecture"] for m in models)  # Gemma 4 rows for every column
    described = [dict(describe(m, compact=True, layered=layered)) for m in models]
    # every model's rows, in the order of the one that has the most (an embedding model adds its heads' rows)
    rows = sorted(described, key=len, reverse=True)
    labels = list(dict.fromkeys(label for r in rows for label in r))
    described = [{label: d.get(label, "-") for label in labels} for d in described]
    headers = [m["card"] or _short_source(m["source"]) for m in models]
    table = Table(title="Side by side (rows that differ are highlighted)", title_justify="left")
    table.add_column("", style="bold cyan", no_wrap=True)
    for header, d in zip(headers, described):
        widest = max([_longest_word(header)] + [_longest_word(v) for v in d.values()])
        table.add_column(escape(header), min_width=widest)
    for label in labels:
        values = [d.get(label, "-") for d in described]
        differs = len(set(values)) > 1
        table.add_row(label, *[Text(v, style="bold yellow" if differs else "") for v in values])
    console.print(Trimmed(table))
    for header, m in zip(headers, models):
        if not m["card"] and header != m["source"]:
            console.print(f"{escape(header)}: {escape(m['source'])}")
    notes = [(h, n) for h, m in zip(headers, models) for n in m.get("notes", [])]
    for who, note in notes:
        console.print(f"[yellow]note[/yellow] ({escape(who)}): {escape(note)}")


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
