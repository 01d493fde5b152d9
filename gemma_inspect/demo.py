"""`demo`: the whole flow on tiny seeded Gemma 1/2/3/4 checkpoints built on the spot by keras-hub and
transformers themselves, each step printed as the command a user would type."""

from __future__ import annotations

import datetime
import os
import shlex
from typing import Any

from .errors import OutputError


def _steps(d: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(what it shows, CLI arguments) for every step, in order."""
    return [
        ("What is in a checkpoint, from its headers alone", ["summary", d["gemma3-keras"]]),
        ("Gemma 7B side by side with Llama 2 7B and OLMo 7B (built-in cards)",
         ["compare", "gemma-7b", "llama2-7b", "olmo-7b"]),
        ("Convert a Keras preset to a Hugging Face directory, streaming",
         ["convert", d["gemma2-keras"], d["gemma2-hf"], "--to", "hf"]),
        ("Prove it is lossless: tensor by tensor, in canonical names and layout",
         ["diff", d["gemma2-keras"], d["gemma2-hf"]]),
        ("Prove it computes the same thing: keras-hub vs transformers, layer by layer",
         ["parity", d["gemma2-keras"], d["gemma2-hf"], "--plot", d["plot"]]),
        ("Convert an HF Gemma 1 (multi-query attention) to Keras and check it the same way",
         ["convert", d["gemma-hf"], d["gemma-keras"], "--to", "keras", "--verify"]),
        ("Verify the architecture from a running model, not from its config (keras-hub, Gemma 3)",
         ["verify", d["gemma3-keras"]]),
        ("Which norms run where: the recorded layer graph of a Gemma 1 block (transformers)",
         ["verify", d["gemma-hf"], "--graph"]),
        ("Ship it to llama.cpp: a Q8_0 GGUF (norms stored as 1 + w, tokenizer embedded)",
         ["convert", d["gemma3-keras"], d["gemma3-gguf"], "--to", "gguf", "--dtype", "q8_0"]),
        ("Quantization per tensor group, and what GGUF does not store",
         ["summary", d["gemma3-gguf"]]),
        ("The Q8_0 file against its source: judged by the next-token distribution",
         ["parity", d["gemma3-keras"], d["gemma3-gguf"]]),
        ("Gemma 4 (per-layer inputs, KV sharing, layer scalars): to keras-hub's Gemma4Backbone, run by both libraries",
         ["convert", d["gemma4-hf"], d["gemma4-keras"], "--to", "keras", "--verify"]),
        ("Gemma 4, observed running: norms apply w, layer scalars, per-layer inputs, KV sharing, RoPE fraction",
         ["verify", d["gemma4-hf"]]),
    ]


def build(root: str, progress: Any = None) -> dict[str, str]:
    """Write the tiny checkpoints into `root`; returns name -> path."""
    from . import tiny

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    paths = {"tokenizer": os.path.join(root, "tokenizer.model"), "plot": os.path.join(root, "parity-gemma2.png")}
    say("training a tiny SentencePiece tokenizer")
    tiny.train_tokenizer(paths["tokenizer"])
    plan = [("gemma3", "keras", 3), ("gemma2", "keras", 2), ("gemma", "hf", 1), ("gemma4", "hf", 4)]
    for family, fmt, seed in plan:
        spec = tiny.tiny_spec(family)
        weights = tiny.random_weights(spec, seed)
        out = os.path.join(root, f"{family}-{fmt}")
        say(f"writing a tiny {spec.title} checkpoint with {'keras-hub' if fmt == 'keras' else 'transformers'}")
        if fmt == "keras":
            tiny.write_keras(spec, weights, out, paths["tokenizer"])
        else:
            tiny.write_hf(spec, weights, out, paths["tokenizer"])
        paths[f"{family}-{fmt}"] = out
    for family, fmt in (("gemma2", "hf"), ("gemma", "keras"), ("gemma4", "keras")):
        paths[f"{family}-{fmt}"] = os.path.join(root, f"{family}-{fmt}")
    paths["gemma3-gguf"] = os.path.join(root, "gemma3-q8_0.gguf")
    return paths


def run_demo(directory: str | None, console: Any, cli: Any = None) -> None:
    """Build the tiny checkpoints in `directory` and run every step through `cli` (the gemma-inspect click group;
    by default the one whose `demo` command is running)."""
    group = _command_group(cli)
    # "./": a relative dir/name would also read as a hub id (org/name), and every step would say which it used
    root = directory or f"./gemma-inspect-demo-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    if os.path.exists(root) and os.listdir(root):
        raise OutputError(f"{root}: exists and is not empty; give the demo an empty or new directory")
    os.makedirs(root, exist_ok=True)
    console.rule("[bold]gemma-inspect demo")
    console.print(f"Building tiny seeded checkpoints in [bold]{root}[/bold] (real keras-hub and transformers "
                  f"files, random weights, non-trivial norm weights, a SentencePiece tokenizer)")
    from rich.console import Console

    from .render import StepProgress

    # Lines, not a spinner: the steps' own commands show their progress while a demo step runs.
    progress = StepProgress(Console(stderr=True, highlight=False, soft_wrap=True), "demo", lines=True)
    with progress as say:  # steps and elapsed time on stderr, in a terminal and in a pipe
        paths, failures = _run_steps(root, console, say, group)
    console.print()
    console.rule("[bold]next")
    console.print(
        "Try the same commands on your own checkpoints:\n"
        f"  gemma-inspect summary PATH            # any Keras preset, HF directory, .gguf or .ckpt\n"
        f"  gemma-inspect convert SRC DEST --to hf|keras|gguf|gemma-pytorch --verify\n"
        f"  gemma-inspect parity A B --json       # exit 1 on disagreement: use it in CI\n"
        f"  gemma-inspect verify PATH --graph     # the architecture, observed from a traced forward pass\n"
        f"The plot of the parity step is {paths['plot']}.")
    if failures:
        raise OutputError("demo steps failed: " + ", ".join(f"{cmd} (exit {code})" for cmd, code in failures))


def _command_group(cli: Any) -> Any:
    """The click group the steps run through: `cli`, or the group whose `demo` command is running (demo never
    imports the CLI module, which imports demo)."""
    if cli is not None:
        return cli
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        raise OutputError("the demo runs its steps through the gemma-inspect command group: call it from the CLI "
                          "(`gemma-inspect demo`) or pass cli=the group")
    return ctx.find_root().command


def _run_steps(root: str, console: Any, say: Any, main: Any) -> tuple[dict[str, str], list[tuple[str, int]]]:
    """Build the checkpoints, run every step through the click group `main`; returns build()'s paths and the failed
    steps (command, exit code)."""
    paths = build(root, progress=lambda m: say(f"[build] {m}"))
    failures = []
    steps = _steps(paths)
    for k, (title, args) in enumerate(steps, 1):
        say(f"[{k}/{len(steps)}] gemma-inspect {args[0]}")
        console.print()
        console.rule(f"[bold]{k}/{len(steps)} {title}")
        console.print(f"[bold green]$ gemma-inspect {' '.join(shlex.quote(a) for a in args)}[/bold green]")
        code = 0
        try:
            main.main(args=args, prog_name="gemma-inspect", standalone_mode=False)
        except SystemExit as e:
            code = int(e.code or 0)
        if code:
            failures.append((args[0], code))
    return paths, failures
