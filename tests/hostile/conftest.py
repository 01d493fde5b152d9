"""The hostile-input harness: run variants of a checkpoint through the library (every variant) and the
command line (a representative few), classify each outcome, and report the counts per format at the end.

A variant's outcome is clean when reading it and using every tensor and the tokenizer (what `diff` and
`convert` do) either works or raises a GemmaInspectError whose one-line message starts with a path inside the
checkpoint and names the problem itself (not the last-resort "cannot read as ..." wrapper in
`formats.load`). Anything else - another exception type, a traceback, a hang - is a finding.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator

import pytest

from .variants import Variant

# format -> [variants run, clean errors, accepted]; printed at the end of the session.
TALLY: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
HANG_SECONDS = 20


def pytest_terminal_summary(terminalreporter: Any, config: Any) -> None:
    tally = _merged_tally(config)
    if not tally:
        return
    terminalreporter.section("hostile variants")
    for fmt, (n, err, ok) in sorted(tally.items()):
        terminalreporter.write_line(f"{fmt:28s} {n:5d} variants: {err:5d} clean errors, {ok:4d} read fine "
                                    f"(harmless changes), {n - err - ok} findings")


class _Hang(BaseException):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang()


def use_checkpoint(ckpt: Any) -> None:
    """What diff and convert do with a checkpoint: every tensor's values (and raw chunks where offered), and
    the tokenizer (SentencePiece model bytes, an encode)."""
    for ref in ckpt.tensors.values():
        ref.load()
        if ref.chunks is not None:
            for _ in ref.chunks(1 << 20):
                pass
    tok = ckpt.tokenizer
    if tok is not None:
        if tok.has_spm:
            tok.spm_model_bytes()
        tok.encode("Hello, world! <start_of_turn>user")
        tok.token_to_id("<end_of_turn>")


def problem_with(e: BaseException, root: str) -> str | None:
    """Why an exception is not a clean error for a checkpoint at `root`, or None when it is."""
    from gemma_inspect.errors import GemmaInspectError

    if isinstance(e, _Hang):
        return f"hung for more than {HANG_SECONDS} s"
    if not isinstance(e, GemmaInspectError):
        return f"raised {e.__class__.__name__}: {str(e)[:300]}"
    msg = str(e)
    if "\n" in msg:
        return f"message of several lines: {msg[:300]!r}"
    if not msg.startswith(root) or ": " not in msg[len(root):]:
        return f"message does not start with a path inside {root}: {msg[:300]!r}"
    if " cannot read as " in msg and e.__cause__ is not None:
        return f"only the last-resort wrapper caught it: {msg[:300]!r}"
    return None


def outcome(root: str, source: str | None = None, use: Callable[[Any], None] = use_checkpoint) -> tuple[str, str]:
    """("error", message) or ("ok", ""); raises AssertionError naming the problem otherwise."""
    from gemma_inspect.formats import load

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        ckpt = load(source or root)
        use(ckpt)
        del ckpt
        return "ok", ""
    except BaseException as e:  # noqa: B036 - a hang (_Hang) is a finding too
        problem = problem_with(e, root)
        if problem is not None:
            raise AssertionError(problem) from e
        return "error", str(e)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _write(path: str, data: bytes) -> None:
    tmp = path + ".hostile-tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # a new inode: maps of the previous content stay valid


def apply(root: str, v: Variant, scratch: str) -> str:
    """Apply `v` to the checkpoint at `root`; returns the root to read (a fresh copy for tree edits)."""
    if v.data is not None:
        _write(os.path.join(root, v.file) if v.file else root, v.data)
        return root
    copy = os.path.join(scratch, "edited")
    if os.path.lexists(copy):
        shutil.rmtree(copy) if os.path.isdir(copy) and not os.path.islink(copy) else os.remove(copy)
    shutil.rmtree(os.path.join(scratch, "outside"), ignore_errors=True)
    (shutil.copytree if os.path.isdir(root) else shutil.copyfile)(root, copy)
    v.edit(copy)  # type: ignore[misc]
    return copy


@contextlib.contextmanager
def applied(root: str, v: Variant, scratch: str, originals: dict[str, bytes]) -> Iterator[str]:
    """`apply` for the duration of a with-block: yields the root to read, then restores the edited file (its
    original bytes are kept in `originals`, read once per file)."""
    target = os.path.join(root, v.file) if v.file else root
    if v.data is not None and target not in originals:
        with open(target, "rb") as f:
            originals[target] = f.read()
    where = apply(root, v, scratch)
    try:
        yield where
    finally:
        if v.data is not None:
            _write(target, originals[target])


def sweep(fmt: str, root: str, variants: Iterable[Variant], scratch: str,
          source_of: Callable[[str], str] | None = None,
          use: Callable[[Any], None] = use_checkpoint) -> dict[str, list[tuple[Variant, str]]]:
    """Run every variant against the checkpoint at `root` (a writable copy; restored after each variant).
    Returns {"error": [(variant, message)], "ok": [(variant, "")]}; fails listing every finding."""
    originals: dict[str, bytes] = {}
    results: dict[str, list[tuple[Variant, str]]] = {"error": [], "ok": []}
    findings = []
    for v in variants:
        with applied(root, v, scratch, originals) as where:
            try:
                kind, msg = outcome(where, source_of(where) if source_of else None, use)
                if kind == "ok" and v.must_fail:
                    findings.append(f"{v.label}: accepted, but must be refused")
                results[kind].append((v, msg))
            except AssertionError as e:
                findings.append(f"{v.label}: {e}")
    tally = TALLY[fmt]
    tally[0] += len(results["error"]) + len(results["ok"]) + len(findings)
    tally[1] += len(results["error"])
    tally[2] += len(results["ok"])
    assert not findings, f"{len(findings)} findings:\n" + "\n".join(findings[:40])
    return results


# With pytest-xdist the tallies live in the workers: each worker writes its own, the controller adds them up.
@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    node.workerinput["hostile_tally_dir"] = _tally_dir(node.config)


def _tally_dir(config: Any) -> str:
    if not hasattr(config, "_hostile_tally_dir"):
        import tempfile

        config._hostile_tally_dir = tempfile.mkdtemp(prefix="gemma-inspect-hostile-")
    return config._hostile_tally_dir


def pytest_sessionfinish(session: Any) -> None:
    workerinput = getattr(session.config, "workerinput", None)
    if workerinput is not None and TALLY:
        import json

        path = os.path.join(workerinput["hostile_tally_dir"], f"{workerinput['workerid']}.json")
        with open(path, "w") as f:
            json.dump(dict(TALLY), f)


def _merged_tally(config: Any) -> dict[str, list[int]]:
    import json

    merged: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for fmt, counts in TALLY.items():
        merged[fmt] = list(counts)
    directory = getattr(config, "_hostile_tally_dir", None)
    if directory and os.path.isdir(directory):
        for name in os.listdir(directory):
            with open(os.path.join(directory, name)) as f:
                for fmt, counts in json.load(f).items():
                    merged[fmt] = [a + b for a, b in zip(merged[fmt], counts)]
        shutil.rmtree(directory, ignore_errors=True)
    return merged


@pytest.fixture(scope="session")
def ckpt_file(tiny_models, tmp_path_factory):
    """A gemma_pytorch .ckpt of the tiny Gemma 2, written by our converter: the base of the pickle variants."""
    from gemma_inspect.convert import convert

    dest = str(tmp_path_factory.mktemp("hostile-ckpt") / "gemma2.ckpt")
    convert(tiny_models.get("gemma2"), dest, "gemma-pytorch")
    return dest
