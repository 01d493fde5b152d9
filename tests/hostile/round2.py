"""Measuring one command in a fresh process (the hostile tests' bounds, both rounds): exit code, stderr, seconds,
peak resident memory (VmHWM) and peak virtual memory (VmPeak, which shows an allocation reserved but never
touched). The address space is capped at 8 GB so that a regression fails the test, not the machine."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

MB = 1024 * 1024
SLACK = 100 * MB  # what a refusal may cost above the same command on a normal tiny checkpoint

_CHILD = """
import os, resource, runpy, sys, time
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
out, sys.argv = sys.argv[1], ["gemma-inspect", *sys.argv[2:]]
start = time.perf_counter()
try:
    runpy.run_module("gemma_inspect", run_name="__main__")
finally:
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    with open(out, "w") as f:
        f.write(f"{status['VmHWM'].split()[0]} {status['VmPeak'].split()[0]} {time.perf_counter() - start}")
"""


@dataclass
class Run:
    code: int
    err: str
    seconds: float
    rss: int  # peak resident bytes
    vm: int  # peak virtual bytes


def run(args: list[str], cwd: str, timeout: float = 120) -> Run:
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3", TOKENIZERS_PARALLELISM="false")
    out = os.path.join(cwd, ".round2-status")
    p = subprocess.run([sys.executable, "-c", _CHILD, out, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=timeout)
    with open(out) as f:
        hwm, peak, secs = f.read().split()
    os.remove(out)
    return Run(p.returncode, p.stderr.decode(errors="replace"), float(secs), int(hwm) * 1024, int(peak) * 1024)


def refused(args: list[str], cwd: str, message: str, baseline: Run, seconds: float = 10.0,
            slack: int = SLACK) -> Run:
    """`args` must exit 2 with one `Error:` line holding `message`, in at most `seconds` more than `baseline`
    took, its peak memory within `slack` of `baseline`'s (resident and virtual)."""
    r = run(args, cwd)
    print(f"{' '.join(args[:1] + args[2:])}: exit {r.code}, {r.seconds:.1f} s (baseline {baseline.seconds:.1f} s), peak RSS "
          f"{r.rss / MB:.0f} MB (baseline {baseline.rss / MB:.0f} MB), peak virtual {r.vm / MB:.0f} MB (baseline "
          f"{baseline.vm / MB:.0f} MB)")
    assert r.code == 2, (r.code, r.err[-2000:])
    assert r.err.startswith("Error: ") and r.err.count("\n") == 1 and message in r.err, r.err[-2000:]
    # The machine may be shared: the allowance is on top of what the normal checkpoint took.
    assert r.seconds < baseline.seconds + seconds, f"took {r.seconds:.1f} s, baseline {baseline.seconds:.1f} s"
    assert r.rss < baseline.rss + slack, f"peak RSS {r.rss / MB:.0f} MB, baseline {baseline.rss / MB:.0f} MB"
    assert r.vm < baseline.vm + 4 * slack, f"peak virtual memory {r.vm / MB:.0f} MB, baseline {baseline.vm / MB:.0f} MB"
    return r
