"""Benchmark plumbing: run a contender as its own process and record its wall time and peak RSS.

As a script: `python benchmarks/_measure.py -- CMD ARGS...` runs CMD as its only child and prints
{"rc", "seconds", "peak_rss_bytes", "cpu_seconds", "stderr_tail", "stdout_tail"} as JSON on the last line (RUSAGE_CHILDREN with a
single child is exactly that child's peak). As a module: `Runner` collects such results for a table.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _child(argv: list[str]) -> int:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kb = usage.ru_maxrss  # Linux: kilobytes
    print(json.dumps({"rc": proc.returncode, "seconds": wall, "peak_rss_bytes": peak_kb * 1024,
                      "cpu_seconds": usage.ru_utime + usage.ru_stime,
                      "stderr_tail": proc.stderr[-2000:] if proc.returncode else "",
                      "stdout_tail": proc.stdout[-100_000:]}))
    return 0


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run `cmd` through this script in a fresh process; its result dict (plus "error" when it failed)."""
    out = subprocess.run([sys.executable, os.path.join(HERE, "_measure.py"), "--", *cmd], capture_output=True,
                         text=True, env=env)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        res["error"] = res["stderr_tail"].strip().splitlines()[-1] if res["stderr_tail"].strip() else "failed"
    return res


def du(path: str) -> int:
    """Bytes of a file or of everything under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def warm(path: str) -> None:
    """Read a file or a tree once, so every contender starts from the same warm page cache."""
    files = [path] if os.path.isfile(path) else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    for name in files:
        with open(name, "rb") as fh:
            while fh.read(64 * 1024 * 1024):
                pass


class Runner:
    """Runs labelled contenders one after the other, printing a line each and keeping the results."""

    def __init__(self, env: dict[str, str], width: int = 46):
        self.env = env
        self.width = width
        self.rows: list[dict] = []

    def run(self, label: str, cmd: list[str], output: str | None, keep: bool = False, repeat: int = 1,
            env: dict[str, str] | None = None) -> dict:
        """Run `cmd` `repeat` times; the fastest run is the result (its "walls" lists every run's wall time): on
        a machine shared with other work, the minimum is the figure least disturbed by it."""
        runs = [self._once(cmd, output, keep and i == repeat - 1, env) for i in range(max(1, repeat))]
        ok = [r for r in runs if r["rc"] == 0] or runs
        res = min(ok, key=lambda r: r["seconds"])
        res["walls"] = [round(r["seconds"], 3) for r in runs]
        res["label"] = label
        self.rows.append(res)
        status = "ok" if res["rc"] == 0 else f"FAILED: {res.get('error')}"
        walls = f" (runs: {', '.join(f'{w:.2f}' for w in res['walls'])})" if len(runs) > 1 else ""
        print(f"  {label:<{self.width}} {res['seconds']:8.2f} s  {res['cpu_seconds']:6.2f} s CPU  "
              f"{res['peak_rss_bytes'] / 1e9:6.2f} GB  {status}{walls}", flush=True)
        return res

    def _once(self, cmd: list[str], output: str | None, keep: bool, env: dict[str, str] | None) -> dict:
        # Every contender starts with no dirty pages waiting to be written back (the previous one's output is
        # deleted and the rest synced), so none of them pays for another's writes.
        os.sync()
        res = measure(cmd, env or self.env)
        try:  # a contender that prints a JSON report (`convert --json`): its per-stage seconds, how it wrote
            report = json.loads(res.get("stdout_tail") or "null")
            res["stages"], res["io"] = report.get("stages"), report.get("io")
        except (ValueError, AttributeError):
            res["stages"] = res["io"] = None
        res.pop("stdout_tail", None)
        res["output_bytes"] = du(output) if output and os.path.exists(output) else None
        if output and os.path.exists(output) and not keep:
            import shutil

            shutil.rmtree(output) if os.path.isdir(output) else os.remove(output)
        return res


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(_child(args[1:] if args and args[0] == "--" else args))
