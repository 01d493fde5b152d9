"""Run one command as a child process; print its wall time and peak RSS as JSON on the last line.

Usage: python benchmarks/_measure.py -- CMD ARGS...
The peak RSS is the child's own (RUSAGE_CHILDREN with a single child), in bytes.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main() -> int:
    argv = sys.argv[1:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: kilobytes
    print(json.dumps({"rc": proc.returncode, "seconds": wall, "peak_rss_bytes": peak_kb * 1024,
                      "stderr_tail": proc.stderr[-2000:] if proc.returncode else ""}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
