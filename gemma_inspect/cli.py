"""The `gemma-inspect` command line: each command parses, calls one library function, renders.

Library errors become one `Error: ...` line on stderr and an exit code here, in one place:
0 success, 1 a check failed, 2 unusable input or usage, 130 interrupted. `--debug` shows tracebacks.
Heavy libraries (torch, keras, tensorflow) are imported only inside the commands that need them.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable

import click

from . import __version__
from .errors import GemmaInspectError
from .formats import FORMATS
from .manifest import DEFAULT_HASH, HASHES, MANIFEST_NAME, SIBLING_SUFFIX
from .runtimes import DEVICES, DTYPES as RUN_DTYPES, RUNTIMES
from .spec import CARD_NAMES
from .tensorio.options import IO_MODES
from .terminal import printable

# Every choice list, default and name list below is read from the library (formats, runtimes, manifest, spec,
# convert), never restated here. Modules that `--help` must not import (convert.py pulls in numpy; the format
# writers hold their shard sizes) are read by `_LateOption` when a command is used or its help shown.


def _default(func: Callable[..., Any], name: str) -> Any:
    """The library function's own default for its parameter `name`: the CLI's default is the library's."""
    return inspect.signature(func).parameters[name].default


def _auto_runtime() -> str:
    """What `auto` picks: each format's native runtime (its FormatInfo; the format modules are read late)."""
    from .formats import infos

    native = ", ".join(f"{i.native_runtime} for {fmt}" for fmt, i in infos().items() if i.native_runtime)
    return f"auto picks {native}, reference for every other format"


class _LateOption(click.Option):
    """An option whose choices, default or help come from a module too heavy to import when the CLI starts:
    `late()` returns them (a dict of `choices`, `default`, `help`), and `_Command` settles them before it parses
    its arguments or shows its help."""

    def __init__(self, *decls: Any, late: Callable[[], dict[str, Any]], case_sensitive: bool = True,
                 **attrs: Any) -> None:
        super().__init__(*decls, **attrs)
        self.late: Callable[[], dict[str, Any]] | None = late
        self.choices_case_sensitive = case_sensitive

    def settle(self) -> None:
        if self.late is None:
            return
        late, self.late = self.late, None
        for key, value in late().items():
            if key == "choices":
                self.type = click.Choice(tuple(value), case_sensitive=self.choices_case_sensitive)
            else:
                setattr(self, key, value)


class _Command(click.Command):
    """Settles its `_LateOption`s before anything reads them: parsing, `--help`, `get_help`, `to_info_dict`."""

    def settle(self) -> None:
        for param in self.params:
            if isinstance(param, _LateOption):
                param.settle()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        self.settle()
        return super().parse_args(ctx, args)

    def get_help(self, ctx: click.Context) -> str:
        self.settle()
        return super().get_help(ctx)

    def to_info_dict(self, ctx: click.Context) -> dict[str, Any]:
        self.settle()
        return super().to_info_dict(ctx)


class _Group(click.Group):
    """Turns library exceptions into `Error:` lines and exit codes."""

    command_class = _Command

    def invoke(self, ctx: click.Context) -> Any:
        debug = "--debug" in sys.argv[1:] or bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except GemmaInspectError as e:
            if debug:
                raise
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            if debug:
                raise
            _fail("interrupted", 130)
        except MemoryError:
            _fail("out of memory", 2)
        except Exception as e:  # a bug of ours: still one line, the traceback behind --debug
            if debug:
                raise
            _fail(f"internal error: {e.__class__.__name__}: {e} (run with --debug for the traceback)", 2)


def _fail(message: str, code: int) -> None:
    # Names in a message come from the input: a newline or an escape sequence in one must not reach the terminal.
    click.echo(f"Error: {printable(message)}", err=True)
    sys.exit(code)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _store_revision(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    ctx.meta["gemma_inspect.revision"] = value


# SOURCE may be a hub id (org/name), hf:// or kaggle:// handle or KerasHub preset name (hub.py); --revision
# pins the Hugging Face revision of those ids. `need`: "headers" reads a hub model's headers only.
_revision_option = click.option("--revision", default=None, metavar="REV", expose_value=False,
                                callback=_store_revision, is_eager=False,
                                help="Branch, tag or commit of Hugging Face hub ids in SOURCE (default: main).")


def _open(source: str, need: str = "full", command: str | None = None) -> Any:
    """Open SOURCE; with `command`, refuse a family whose row says the command does not support it yet."""
    from .hub import open_source

    revision = click.get_current_context().meta.get("gemma_inspect.revision")
    ckpt = open_source(source, need=need, revision=revision)
    if command is not None:
        ckpt.require(command)  # before anything is loaded or written (the library functions check it too)
    return ckpt


_MAIN_HELP = f"""Inspect, convert and verify Gemma checkpoints ({", ".join(FORMATS)}).

    SOURCE is a checkpoint path, a built-in card name ({", ".join(CARD_NAMES)}), a Hugging Face hub id
    (google/gemma-3-270m, hf://org/name[@rev][/file.gguf]), a Kaggle handle
    (kaggle://owner/model/framework/variation/version) or a KerasHub preset name (gemma3_instruct_1b). A local
    path wins over a hub id of the same spelling.

    Exit codes: 0 ok, 1 a check failed, 2 unusable input or usage error.
    """


@click.group(cls=_Group, help=_MAIN_HELP,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show Python tracebacks instead of one-line errors.")
@click.version_option(__version__, prog_name="gemma-inspect")
def main(debug: bool) -> None:
    # The group's help is _MAIN_HELP (not a docstring): it names the formats and cards the library knows.
    pass


@main.command()
@click.argument("source")
@click.option("--scan", is_flag=True,
              help="Also read every tensor's values and warn about NaN or infinite ones (no longer headers only).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@_revision_option
def summary(source: str, scan: bool, as_json: bool) -> None:
    """Architecture and parameter breakdown of SOURCE, from headers alone.

    \b
    Example:
      gemma-inspect summary ./gemma-2b-keras
      gemma-inspect summary gemma-7b --json
      gemma-inspect summary ./finetune-hf --scan     # also look for NaN/inf weights
      gemma-inspect summary google/gemma-3-270m      # a hub id: config.json + safetensors headers only
    """
    from .summary import summarize

    ckpt = _open(source, "full" if scan else "headers")
    result = summarize(ckpt)
    if scan:
        from .render import count_progress
        from .scan import describe, nonfinite

        with count_progress(_console(stderr=True), "scanning values", len(ckpt.tensors)) as step:
            found = nonfinite(ckpt, progress=lambda _name: step(1))
        result["nonfinite"] = found
        if found:
            click.echo(f"Warning: {printable(describe(found, source))}", err=True)
    if as_json:
        from .render import print_json

        print_json(result)
    else:
        from .render import render_summary

        render_summary(_console(), result)


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@_revision_option
def compare(sources: tuple[str, ...], as_json: bool) -> None:
    """Side-by-side architecture table of two or more checkpoints or cards.

    \b
    Example:
      gemma-inspect compare gemma-7b llama2-7b olmo-7b
      gemma-inspect compare ./my-finetune-hf gemma-2b --json
    """
    if len(sources) < 2:
        raise click.UsageError("compare needs at least two sources")
    from .summary import compare as compare_models

    result = compare_models([_open(s, "headers") for s in sources])
    if as_json:
        from .render import print_json

        print_json(result)
    else:
        from .render import render_compare

        render_compare(_console(), result)


@main.command(name="parity")
@click.argument("a")
@click.argument("b")
@click.option("--runtime-a", cls=_LateOption, show_default=True, type=click.Choice(RUNTIMES),
              late=lambda: {"help": f"Runtime for A ({_auto_runtime()}).",
                            "default": _default(_parity_module().parity, "runtime_a")})
@click.option("--runtime-b", cls=_LateOption, late=lambda: {"default": _default(_parity_module().parity, "runtime_b")},
              show_default=True, type=click.Choice(RUNTIMES), help="Runtime for B.")
@click.option("--device", cls=_LateOption, late=lambda: {"default": _default(_parity_module().parity, "device")},
              show_default=True, type=click.Choice(DEVICES), help="auto: cuda when torch sees a GPU.")
@click.option("--dtype", cls=_LateOption, late=lambda: {"default": _default(_parity_module().parity, "dtype")},
              show_default=True, type=click.Choice(RUN_DTYPES),
              help="float32 is judged against the measured float32 noise floor (a float64 oracle run); bfloat16 "
                   "by top-1 agreement and KL divergence. A side stored in lower precision than the other is "
                   "judged by that precision's tolerance.")
@click.option("--prompt", default=None, metavar="TEXT", help="Text to run, tokenized with A's tokenizer (BOS first).")
@click.option("--tokens", default=None, metavar="IDS", help="Comma-separated token ids, e.g. 2,651,1234.")
@click.option("--atol", cls=_LateOption, default=None, type=float, late=lambda: {"help": _atol_help()})
@click.option("--plot", "plot_path", default=None, metavar="FILE.png",
              help="Write a PNG of max|A-B| per layer and for the logits (log scale, with each bound). The "
                   "directory must exist; it is checked before the run.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@_revision_option
def parity_cmd(a: str, b: str, runtime_a: str, runtime_b: str, device: str, dtype: str, prompt: str | None,
               tokens: str | None, atol: float | None, plot_path: str | None, as_json: bool) -> None:
    """Run A and B on the same tokens and compare logits and every layer's hidden state.

    Reports the logits' max/mean difference, KL divergence, top-1 agreement and top-5 overlap, the
    difference after the embedding, after each decoder block and after the final norm, the first layer
    that exceeds the tolerance, and whether the tokenizers agree. Default tokens: a fixed sequence
    longer than any sliding window of the model. Exit 0 when they agree, 1 when they do not.

    \b
    Example:
      gemma-inspect parity ./gemma-2b-keras ./gemma-2b-hf
      gemma-inspect parity ./base-hf ./finetune-hf --dtype bfloat16 --prompt "Why is the sky blue?"
      gemma-inspect parity ./gemma2-hf ./gemma2.gguf --runtime-a reference --plot layers.png --json
    """
    if prompt is not None and tokens is not None:
        raise click.UsageError("give --prompt or --tokens, not both")
    from .parity import parse_tokens, parity, plot_layers

    ids = parse_tokens(tokens) if tokens is not None else None
    ca, cb = _open(a, command="parity"), _open(b, command="parity")
    if plot_path:
        _check_output_file(plot_path, "--plot", (ca, cb))  # before minutes of forward passes, not after
    from .render import StepProgress

    with StepProgress(_console(stderr=True), "parity") as say:
        result = parity(ca, cb, runtime_a, runtime_b, device, dtype, tokens=ids, prompt=prompt, atol=atol,
                        progress=say)
    plot_error = None
    if plot_path:
        try:
            plot_layers(result, plot_path)
        except Exception as e:  # the report below is printed whatever happens to the plot
            plot_error = f"{plot_path}: could not write the plot: {e.__class__.__name__}: {e}"
    if as_json:
        from .render import print_json

        print_json(result)
    else:
        from .render import render_parity

        console = _console()
        render_parity(console, result)
        if plot_path and plot_error is None:
            console.print(f"plot: {plot_path}", markup=False)
    if plot_error is not None:
        _fail(plot_error, 2)
    if not result["passed"]:
        sys.exit(1)


def _check_output_file(path: str, option: str, inputs: Any) -> None:
    """An output file named by an option must be writable where it is: its directory exists and is a directory,
    and the path itself is not a directory; and it must not be (or lie inside) one of the opened `inputs`
    (convert.check_output). Checked before any work (exit 2 with one line)."""
    import os

    from .convert import check_output
    from .errors import InputError

    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InputError(path, f"{option} names a directory; give a file name such as {os.path.join(path, 'parity.png')}")
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise InputError(path, f"cannot write {option} here: {parent} {what}")
    if not os.access(parent, os.W_OK):
        raise InputError(path, f"cannot write {option} here: {parent} is not writable")
    check_output(path, inputs, option)  # never over an input


@main.command(name="verify")
@click.argument("source")
@click.option("--runtime", cls=_LateOption, show_default=True, type=click.Choice(RUNTIMES),
              late=lambda: {"default": _default(_verify_fn(), "runtime"),
                            "help": f"Runtime whose real modules are traced ({_auto_runtime()})."})
@click.option("--device", cls=_LateOption, late=lambda: {"default": _default(_verify_fn(), "device")},
              show_default=True, type=click.Choice(DEVICES), help="auto: cuda when torch sees a GPU.")
@click.option("--graph", is_flag=True, help="Also show the recorded layer graph of decoder block 0 as a tree "
                                            "(with --json: a \"graph\" key).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@_revision_option
def verify_cmd(source: str, runtime: str, device: str, graph: bool, as_json: bool) -> None:
    """Confirm Gemma's architecture from a traced forward pass of SOURCE, and lint its config.

    Hooks the runtime's real modules and observes, rather than reads from the config: where the norms
    sit (pre or pre+post), whether they apply (1 + w), the embedding scale and its rounding, whether the
    output projection is the embedding, which GELU the FFN runs, how many K/V heads exist, the soft caps,
    QK-norm, the sliding window of each layer and the query scale. Then `lint:` rules check the config,
    tokenizer and tensors (exact gelu, an untied lm_head under a tie flag, norm weights stored as 1 + w,
    missing soft caps, ...). Exit 0 when no check fails (warnings allowed), 1 otherwise.

    \b
    Example:
      gemma-inspect verify ./gemma-2b-hf
      gemma-inspect verify ./gemma2-keras --runtime reference --json
      gemma-inspect verify ./gemma3.gguf --graph
    """
    from .verify import verify

    ckpt = _open(source, command="verify")
    from .render import StepProgress

    with StepProgress(_console(stderr=True), "verify") as say:
        result = verify(ckpt, runtime, device, graph=graph, progress=say)
    if as_json:
        from .render import print_json

        print_json(result)
    else:
        from .render import render_graph, render_verify

        console = _console()
        render_verify(console, result)
        if graph:
            console.print()
            render_graph(console, result["graph"])
    if not result["passed"]:
        sys.exit(1)


@main.command()
@click.argument("source")
@click.argument("dest")
@click.option("--to", "to", required=True, type=click.Choice(FORMATS, case_sensitive=False),
              help="Target format (any case, as card names are).")
@click.option("--dtype", cls=_LateOption, late=lambda: _convert_dtype(), case_sensitive=False, show_default=True)
@click.option("--max-shard-size", cls=_LateOption, late=lambda: {"help": _shard_help()}, default=None,
              metavar="SIZE")
@click.option("--force", is_flag=True, help="Replace DEST if it exists; convert what the target can only approximate.")
@click.option("--verify", "verify_after", is_flag=True,
              help="Run parity between SOURCE and DEST afterwards; exit 1 (DEST kept) if they disagree.")
@click.option("--no-manifest", "no_manifest", is_flag=True,
              help="Do not write the manifest (every output file's size and hash, and every tensor).")
@click.option("--hash", "hash_name", default=DEFAULT_HASH, show_default=True, type=click.Choice(HASHES),
              help="The manifest's hash. BLAKE3 runs at several GB/s on any CPU; SHA-256 is what the Hugging Face "
                   "hub publishes (to compare with it), at 250-290 MB/s on CPUs without SHA extensions.")
@click.option("--io", "io_mode", default="auto", show_default=True, type=click.Choice(IO_MODES),
              help="How output files are written. auto: files of 16 MB and more past the page cache (O_DIRECT), "
                   "from reused buffers, where the filesystem allows it (little CPU; the write waits for the disk); "
                   "direct: every file so; buffered: through the page cache (returns before the disk has the data).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the conversion report).")
@_revision_option
def convert(source: str, dest: str, to: str, dtype: str, max_shard_size: str | None, force: bool,
            verify_after: bool, no_manifest: bool, hash_name: str, io_mode: str, as_json: bool) -> None:
    """Convert SOURCE into DEST in another format, streaming one tensor at a time.

    The output is written into a temporary sibling of DEST and renamed at the end: a failure or an
    interruption never leaves a partial DEST behind.

    \b
    Example:
      gemma-inspect convert ./gemma-2b-keras ./gemma-2b-hf --to hf
      gemma-inspect convert ./gemma2-hf ./gemma2-keras --to keras --dtype bfloat16
      gemma-inspect convert ./gemma-7b-hf ./gemma-7b.gguf --to gguf --dtype q8_0
      gemma-inspect convert kaggle://keras/gemma3/keras/gemma3_instruct_1b/3 ./gemma3-1b-hf --to hf
    """
    import time

    if "numpy" not in sys.modules:  # no linear algebra in numpy here: OpenBLAS's idle workers would only spin
        import os

        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from .convert import WriteOptions, convert as run_convert, parse_size
    from .formats import load

    ckpt = _open(source, command="convert")  # DEST stays a local path
    ckpt.require_writer(to)  # before the writer plans its tensors
    options = WriteOptions(dtype=dtype, max_shard_size=parse_size(max_shard_size), force=force,
                           manifest=not no_manifest, hash=hash_name, io=io_mode)
    from .render import byte_progress

    start = time.perf_counter()
    with byte_progress(_console(stderr=True), f"{ckpt.format} -> {to}", _planned_bytes(ckpt, options, to)) as advance:
        report = run_convert(ckpt, dest, to, options, advance)
    report["seconds"] = round(time.perf_counter() - start, 3)
    failed = False
    if verify_after:
        from .parity import parity

        from .render import StepProgress

        with StepProgress(_console(stderr=True), "parity") as say:
            result = parity(ckpt, load(dest), "auto", "auto", "auto", "float32", progress=say)
        report["parity"] = result
        failed = not result["passed"]
    if as_json:
        from .render import print_json

        print_json(report)
    else:
        from .render import render_convert

        render_convert(_console(), report)
    if failed:
        sys.exit(1)


def _parity_module() -> Any:
    """parity.py, imported when the parity command is used or its help shown (not for every command)."""
    from . import parity

    return parity


def _atol_help() -> str:
    p = _parity_module()
    return ("A fixed tolerance on max|A-B| / max|A| of each hidden state instead of the measured noise floor "
            "(float32: the logits too); bfloat16, stored-lower-precision and quantized: the per-layer bound "
            f"(default {p.TOLERANCES['bfloat16']['atol']:g}, {p.QUANTIZED['atol']:g} quantized).")


def _verify_fn() -> Callable[..., Any]:
    from .verify import verify

    return verify


def _convert_dtype() -> dict[str, Any]:
    """convert --dtype: convert.DTYPES; the default is WriteOptions' (bit-exact); a dtype that is not a float
    (a quantization) is for the formats whose FormatInfo says they store quantization."""
    from .checkpoint import FLOAT_DTYPES
    from .convert import DTYPES, WriteOptions
    from .formats import infos

    keep = WriteOptions().dtype
    quantized = [d for d in DTYPES if d != keep and d not in FLOAT_DTYPES]
    stores = [f for f, i in infos().items() if i.stores_quantization]
    note = f" ({', '.join(quantized)}: {', '.join(stores)} only)" if quantized else ""
    return {"choices": DTYPES, "default": keep,
            "help": f"{keep} = bit-exact; anything else casts every tensor explicitly{note}."}


def _shard_help() -> str:
    """convert --max-shard-size: each sharding format's own default (its writer's DEFAULT_MAX_SHARD)."""
    from .formats import module

    defaults = [(fmt, getattr(module(fmt), "DEFAULT_MAX_SHARD", None)) for fmt in FORMATS]
    sizes = ", ".join(f"{_size(n)} ({fmt})" for fmt, n in defaults if n)
    return f"Split weights into shards of at most SIZE (e.g. 5GB, 500MB). Default: {sizes}."


def _size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def _planned_bytes(ckpt: Any, options: Any, to: str = "hf") -> int:
    """What the writer's progress will count, in the same unit: the bytes of the tensors as written (a Q8_0 GGUF
    is about a quarter of its float32 source), so that the bar ends at 100%. A writer that plans its own tensor
    types (GGUF: quantization, norms in float32) says what it will write (`planned_nbytes`); the others write each
    tensor in its float dtype."""
    from .convert import target_nbytes
    from .formats import module

    planned = getattr(module(to), "planned_nbytes", None)
    if planned is not None:
        return planned(ckpt, options)
    return sum(target_nbytes(ref, options.float_dtype(ref)) for ref in ckpt.tensors.values())


@main.command(name="diff")
@click.argument("a")
@click.argument("b", required=False)
@click.option("--atol", default=0.0, show_default=True, type=float,
              help="Tensors whose max absolute difference is at most this are 'close' (and pass).")
@click.option("--manifest", "manifest", is_flag=False, flag_value="", default=None, metavar="[FILE]",
              help=f"Check A against the manifest convert wrote (A/{MANIFEST_NAME}, or A{SIBLING_SUFFIX} beside a "
                   "single file), or against FILE: every file's size and hash (the algorithm the manifest names), "
                   "every tensor.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@_revision_option
def diff_cmd(a: str, b: str | None, atol: float, manifest: str | None, as_json: bool) -> None:
    """Compare two checkpoints tensor by tensor, in any formats (canonical names and layout); or check a
    conversion's output against its manifest.

    Exit 0 when identical (or every tensor within --atol and the specs equal), 1 otherwise. Tensors that hold
    NaN or infinite values are named in a warning.

    \b
    Example:
      gemma-inspect diff ./gemma-2b-keras ./gemma-2b-hf
      gemma-inspect diff ./orig-hf ./roundtrip-hf --atol 1e-6 --json
      gemma-inspect diff ./gemma-2b-hf --manifest
      gemma-inspect diff ./gemma-2b.gguf ./gemma-2b.gguf.manifest.json
    """
    from .manifest import is_manifest

    if manifest is None and b is not None and is_manifest(b):
        manifest = b
    elif manifest is not None and b is not None:
        raise click.UsageError("give B or --manifest, not both")
    if manifest is not None:
        from .manifest import check
        from .render import render_manifest_check

        result = check(a, manifest or None)
        if as_json:
            from .render import print_json

            print_json(result)
        else:
            render_manifest_check(_console(), result)
        if not result["identical"]:
            sys.exit(1)
        return
    if b is None:
        raise click.UsageError("diff needs A and B, or A and --manifest")
    from .diff import diff

    ca, cb = _open(a, command="diff"), _open(b, command="diff")
    from .render import count_progress

    total = len(ca.tensors.keys() | cb.tensors.keys())  # diff walks the tensors of either side
    with count_progress(_console(stderr=True), "comparing tensors", total) as step:
        result = diff(ca, cb, atol, progress=lambda _name: step(1))
    for warning in result["warnings"]:
        click.echo(f"Warning: {printable(warning)}", err=True)
    if as_json:
        from .render import print_json

        print_json(result)
    else:
        from .render import render_diff

        render_diff(_console(), result)
    if not result["identical"]:
        sys.exit(1)


@main.command()
@click.argument("directory", required=False)
def demo(directory: str | None) -> None:
    """Build tiny seeded Gemma 1/2/3/4 checkpoints (Keras and HF, with a tokenizer) and run every
    command on them.

    \b
    Example:
      gemma-inspect demo            # into ./gemma-inspect-demo-<timestamp>
      gemma-inspect demo /tmp/gd
    """
    from .demo import run_demo

    run_demo(directory, _console())


if __name__ == "__main__":  # pragma: no cover
    main()
