"""Rendering of the commands that run models: `parity` (per-layer differences, logits, tolerance, tokenizer,
verdict), `verify` (the check records, a table or one block per check) and its recorded layer graph (a tree)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .render_base import Trimmed, fmt_float
from .render_base import num as _num
from .render_base import pct as _pct
from .render_base import ranges as _ranges
from .terminal import printable_tree


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
    lg = result["logits"] or {}
    emb = result.get("embedding")
    if emb is not None:  # an embedding model: no logits; its pooled, projected, normalised output instead
        console.print(f"[bold]Embedding[/bold] (pooled, projected, normalised; {emb['dimension']} dimensions): "
                      f"cosine similarity {emb['cosine_similarity']:.9f} (at least {emb['min_cosine']:.9g}), "
                      f"max |A-B| {fmt_float(emb['max_abs_diff'])}; no logits (no LM head)")
    if result["logits"] is not None:
        line = (f"[bold]Logits[/bold]: max |A-B| {fmt_float(lg['max_abs_diff'])}, mean "
                f"{fmt_float(lg['mean_abs_diff'])}, KL(A||B) {fmt_float(lg['kl_divergence'])}, top-1 agreement "
                f"{_pct(lg['top1_agreement'])}")
        if "top1_agreement_outside_ties" in lg:
            line += f" ({_pct(lg['top1_agreement_outside_ties'])} outside ties)"
        console.print(line + f", top-5 overlap {_pct(lg['top5_overlap'])}")
    if "vocab_compared" in lg:
        voc = result["vocab"]
        console.print(f"[bold]Vocabulary[/bold]: A has {voc['a']:,} rows, B {voc['b']:,}: differences and KL over "
                      f"the {voc['compared']:,} both have; probability on the rows only one side has: at most "
                      f"{fmt_float(max(lg['excluded_mass_a'], lg['excluded_mass_b']))} "
                      f"(limit {tol.get('max_excluded_mass', 0):g})")
    moe = result.get("moe")
    if moe is not None:  # a mixture of experts: how often the two runs sent each token to the same experts
        line = (f"[bold]Experts[/bold]: top-{moe['top_k']} sets agree on {_pct(moe['agreement'])} of "
                f"{sum(r['tokens'] for r in moe['layers']):,} token-layers")
        if moe["flips"]:
            line += (f"; {moe['flips']} flip(s), {moe['near_tie_flips']} on near-ties (the swapped experts within "
                     f"{moe['tie']:g} of the k-th pick's probability: reported, judged by the hidden states)")
        console.print(line)
        for r in moe["layers"]:
            if r["flips"]:
                shown = ", ".join(f"token {e['token']} {e['a']} vs {e['b']} (gap {fmt_float(e['gap'])}"
                                  f"{', near-tie' if e['near_tie'] else ''})" for e in r["examples"][:2])
                _hanging(console, " ", f"block {r['index']}: {_pct(r['agreement'])} agree, {r['flips']} flip(s), "
                                       f"{r['near_tie_flips']} near-tie; {shown}")
    mode = tol.get("mode", result["dtype"])
    if mode == "noise floor":
        out = (f"and for the logits (logits: noise {fmt_float(lg.get('noise_floor'))}, bound "
               f"{fmt_float(tol.get('logits_max_abs_diff'))})" if emb is None
               else f"(the embedding: cosine similarity >= {emb['min_cosine']:.9g})")
        console.print(f"[bold]Tolerance[/bold] (measured noise floor): max|A-B| <= {tol['noise_factor']:g} x noise + "
                      f"{tol['floor_relative']:.2g} x max|O| at every layer {out}; "
                      f"noise = min(max|A-O|, max|B-O|), O = the reference runtime in float64 on A's weights")
    elif mode in ("fixed", "float32"):
        out = (f"and the logits (logits: {fmt_float(tol.get('logits_max_abs_diff'))})" if emb is None
               else f"(the embedding: cosine similarity >= {emb['min_cosine']:.9g})")
        console.print(f"[bold]Tolerance[/bold] (fixed): max|A-B| <= {tol['atol']:g} x max|A| for every hidden state "
                      f"{out}")
    else:
        label = "quantized weights" if mode == "quantized" else mode
        out = (f"the embedding's cosine similarity >= {emb['min_cosine']:.9g}" if emb is not None else
               f"top-1 agreement outside ties >= {100 * tol['min_top1_agreement']:.0f}% (ties: within "
               f"{fmt_float(tol.get('top1_tie_logits'))} logits), KL <= {tol['max_kl_divergence']:g}")
        console.print(f"[bold]Tolerance[/bold] ({label}): {out}; hidden states <= {tol['atol']:g} x max|A|, "
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


__all__ = ["render_parity", "render_verify", "render_graph", "STATUS_STYLE", "WIDE_VERIFY"]
