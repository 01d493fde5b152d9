"""Interrupted conversions: `python -m gemma_inspect convert` killed with SIGKILL at several points, interrupted with
SIGINT and SIGTERM, and writing into a file size limit (RLIMIT_FSIZE) or a full filesystem. A DEST either does
not exist or is complete (it matches its manifest); Ctrl-C exits 130 with one `Error: interrupted` line and
removes its temporary sibling; a full disk gives one `Error:` line and leaves nothing behind. The temporary
sibling a SIGKILL leaves is removed by the next conversion to the same DEST.
"""

from __future__ import annotations

import glob
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gemma_inspect.manifest import check

ENV = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3")


@pytest.fixture(scope="module")
def big_hf(tmp_path_factory) -> str:
    """A 103 MB float32 HF checkpoint (a 400,000-token vocabulary on the tiny Gemma 2), written directly: about
    1.2 s of conversion to a Q8_0 GGUF, long enough to be killed at chosen moments."""
    from gemma_inspect import tiny
    from gemma_inspect.checkpoint import expected_tensors
    from gemma_inspect.formats.hf import config_dict, from_canonical
    from gemma_inspect.formats.safetensors_io import SafetensorsWriter

    spec = tiny.tiny_spec("gemma2", vocab_size=400_000)
    out = str(tmp_path_factory.mktemp("big") / "hf")
    os.makedirs(out)
    rng = np.random.default_rng(0)
    layout = [(from_canonical(n, spec.family), "float32", s) for n, s in expected_tensors(spec).items()]
    with SafetensorsWriter(os.path.join(out, "model.safetensors"), layout, {"format": "pt"}) as w:
        for name, _, shape in layout:
            w.add(name, [rng.standard_normal(shape, dtype=np.float32).tobytes()])
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config_dict(spec), f)
    return out


def start(src: str, dest: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gemma_inspect", "convert", src, dest, *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def partials(dest: str) -> list[str]:
    return glob.glob(os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.partial-*"))


def written(dest: str, inner: str) -> int:
    """Bytes of the output file `inner` (relative to the output) inside DEST's temporary sibling so far."""
    for p in partials(dest):
        path = os.path.join(p, os.path.basename(dest), inner) if inner else os.path.join(p, os.path.basename(dest))
        if os.path.exists(path):
            return os.path.getsize(path)
    return 0


def wait_for(proc: subprocess.Popen, condition, timeout: float = 60) -> bool:
    """Poll `condition` every millisecond until it holds (True) or the process ends first (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    raise AssertionError("timed out")


def assert_no_dest_or_complete(dest: str) -> str:
    if not os.path.lexists(dest):
        return "no DEST"
    result = check(dest)  # a DEST that exists is complete: every file and tensor as its manifest says
    assert result["identical"], result
    return "complete DEST"


# ----------------------------------------------------------------------------- SIGKILL
def kill_points(final: int, inner: str, dest: str, seconds: float) -> dict[str, object]:
    return {
        "as soon as the temporary sibling exists": lambda: bool(partials(dest)),
        "after 10% of the data": lambda: written(dest, inner) >= final // 10,
        "after 60% of the data": lambda: written(dest, inner) >= 6 * final // 10,
        "after all the data (hashing, renaming)": lambda: written(dest, inner) >= final or os.path.exists(dest),
        f"{seconds / 2:.2f} s after the start (half the run)": seconds / 2,
    }


@pytest.mark.parametrize("to,args,inner", [
    ("gguf", ("--dtype", "q8_0"), ""),
    ("keras", ("--dtype", "bfloat16"), "model.weights.h5"),
])
def test_sigkill_at_several_points_leaves_no_dest_and_the_next_run_cleans_up(big_hf, tmp_path, to, args, inner):
    ext = ".gguf" if to == "gguf" else ""
    reference = str(tmp_path / f"reference{ext}")
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "gemma_inspect", "convert", big_hf, reference, "--to", to, *args],
                   env=ENV, check=True, capture_output=True)
    seconds = time.monotonic() - began
    final = os.path.getsize(os.path.join(reference, inner) if inner else reference)
    dest = str(tmp_path / f"out{ext}")
    outcomes = {}
    for label, when in kill_points(final, inner, dest, seconds).items():
        proc = start(big_hf, dest, "--to", to, *args)
        if isinstance(when, float):
            time.sleep(when)
            reached = proc.poll() is None
        else:
            reached = wait_for(proc, when)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
        # SIGKILL runs no cleanup: this run's temporary sibling stays; those of the runs killed before it were
        # removed when this run started (their processes are gone).
        outcomes[label] = (reached, assert_no_dest_or_complete(dest), len(partials(dest)))
        if os.path.lexists(dest):  # killed after the rename: start the next point from nothing again
            shutil.rmtree(dest) if os.path.isdir(dest) else os.remove(dest)
            if os.path.exists(dest + ".manifest.json"):
                os.remove(dest + ".manifest.json")
    # Every kill left no DEST or a complete one (assert_no_dest_or_complete). The kills by bytes written land
    # while writing: no DEST, and this run's sibling. The kill by time lands while writing unless this run went
    # faster than the reference run and had renamed its output already (a complete DEST): not a kill while writing.
    timed = {k for k, w in kill_points(final, inner, dest, seconds).items() if isinstance(w, float)}
    reached_while_writing = {k: o for k, o in outcomes.items()
                             if o[0] and "after all" not in k and (k not in timed or o[1] == "no DEST")}
    assert len(reached_while_writing) >= 3, outcomes
    assert all(o[1:] == ("no DEST", 1) for o in reached_while_writing.values()), outcomes
    # The next conversion to the same DEST removes what the last kill left.
    r = subprocess.run([sys.executable, "-m", "gemma_inspect", "convert", big_hf, dest, "--to", to, *args],
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert partials(dest) == []
    assert check(dest)["identical"]


def test_a_partial_sibling_of_a_live_or_foreign_process_is_left_alone(tiny_models, tmp_path):
    from gemma_inspect.convert import convert, host_tag, remove_stale_partials

    dest = str(tmp_path / "out.gguf")
    here = host_tag()
    names = {"live": f".out.gguf.partial-{here}-{os.getpid()}-abc",
             "dead": f".out.gguf.partial-{here}-{2**22 + 7}-abc",  # above the default pid_max
             "foreign": ".out.gguf.partial-0badc0de-12345-abc",  # another machine sharing the directory
             "unknown": ".out.gguf.partial-xyz"}  # not named by this version
    for name in names.values():
        (tmp_path / name).mkdir()
    assert remove_stale_partials(dest) == [str(tmp_path / names["dead"])]
    convert(tiny_models.get("gemma2"), dest, "gguf")
    assert sorted(os.path.basename(p) for p in partials(dest)) == sorted(
        names[k] for k in ("live", "foreign", "unknown"))


# ----------------------------------------------------------------------------- SIGINT, SIGTERM
@pytest.mark.parametrize("to,args,inner", [
    ("hf", ("--dtype", "float16"), "model.safetensors"),
    ("keras", (), "model.weights.h5"),
    ("gguf", ("--dtype", "q8_0"), ""),
    ("gemma-pytorch", (), ""),
])
def test_ctrl_c_while_writing_exits_130_and_removes_its_temporary_sibling(big_hf, tmp_path, to, args, inner):
    ext = {"gguf": ".gguf", "gemma-pytorch": ".ckpt"}.get(to, "")
    dest = str(tmp_path / f"out{ext}")
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = start(big_hf, dest, "--to", to, *args)
        assert wait_for(proc, lambda: written(dest, inner) > 0), "finished before it could be interrupted"
        proc.send_signal(sig)
        err = proc.communicate(timeout=60)[1].decode()
        assert (proc.returncode, err) == (130, "Error: interrupted\n"), (sig, proc.returncode, err[-2000:])
        assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


# ----------------------------------------------------------------------------- a disk that fills up
def _limited(nbytes: int):
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


def _file_size_limit(src: str, tmp_path, to: str, limits: tuple[int, ...], io: str = "auto") -> None:
    ext = {"gguf": ".gguf", "gemma-pytorch": ".ckpt"}.get(to, "")
    out = tmp_path / "out"
    out.mkdir()
    dest = str(out / f"model{ext}")
    for limit in limits:
        p = subprocess.run([sys.executable, "-m", "gemma_inspect", "convert", src, dest, "--to", to, "--io", io],
                           env=ENV, capture_output=True, text=True, preexec_fn=_limited(limit))
        assert p.returncode == 2, (limit, p.returncode, p.stderr[-2000:])
        assert p.stderr.count("\n") == 1 and p.stderr.startswith(f"Error: {dest}"), p.stderr
        assert "cannot write" in p.stderr and "File too large" in p.stderr, p.stderr
        assert os.listdir(out) == [], (limit, os.listdir(out))


WRITES = [("hf", "auto"), ("keras", "auto"), ("gguf", "auto"), ("gemma-pytorch", "auto"),
          ("hf", "direct"), ("keras", "direct")]  # --io direct: O_DIRECT writes and the staging buffer fail too


@pytest.mark.parametrize("to,io", WRITES)
def test_file_size_limit_mid_write_gives_one_error_line_and_no_dest(tiny_models, tmp_path, to, io):
    _file_size_limit(tiny_models.get("gemma2"), tmp_path, to, (1000, 150_000), io)  # in the header, in the tensors


@pytest.mark.slow
@pytest.mark.parametrize("to", ["hf", "keras", "gguf", "gemma-pytorch"])
def test_file_size_limit_near_the_end(tiny_models, tmp_path, to):
    _file_size_limit(tiny_models.get("gemma2"), tmp_path, to, (400_000, 560_000, 590_000))


@pytest.fixture
def small_filesystem(tmp_path):
    """A 300 KB tmpfs, where the test may mount one (root in a container that allows it); skipped elsewhere."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield str(mnt)
    subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("to,io", WRITES)
def test_full_filesystem_gives_one_error_line_and_no_dest(tiny_models, small_filesystem, to, io):
    ext = {"gguf": ".gguf", "gemma-pytorch": ".ckpt"}.get(to, "")
    dest = os.path.join(small_filesystem, f"model{ext}")
    p = subprocess.run([sys.executable, "-m", "gemma_inspect", "convert", tiny_models.get("gemma2"), dest, "--to", to,
                        "--io", io], env=ENV, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr[-2000:]
    assert p.stderr.startswith(f"Error: {dest}") and "No space left on device" in p.stderr, p.stderr
    assert os.listdir(small_filesystem) == []
