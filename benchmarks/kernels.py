"""Benchmark: the kernels a conversion spends its time in, candidates side by side on this machine.

  - the CPU (model, cores, the flags that matter: sha_ni, avx2, avx512*);
  - a [2048, 16384] bfloat16 FFN kernel transposed: OpenCV's `cv2.transpose` of the uint16 view into a reused
    buffer (what `convert` does, gemma_inspect.arrays) and into a fresh one, torch's `copy_` and
    `t().contiguous()`, numpy's strided copy;
  - what importing each kernel library costs (cv2, blake3, h5py, ml_dtypes, torch);
  - a cast bfloat16 -> float32 (numpy, into a reused buffer);
  - the manifest's hash candidates over 256 MB: SHA-256 (hashlib/OpenSSL), BLAKE2b, BLAKE3 on one thread and
    on all cores; a memcpy of the same bytes as the floor.

    python benchmarks/kernels.py [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

FLAGS = ("sha_ni", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "sha512", "neon", "sha2", "asimd")


def cpu_info() -> dict:
    """Model name, logical cores, and which of the flags that matter /proc/cpuinfo lists (Linux; elsewhere what
    platform says)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model", "hardware") and model in ("", platform.machine(),
                                                                                 platform.processor()):
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    shown = [f for f in FLAGS if f in flags] + sorted(f for f in flags if f.startswith("avx512") and f not in FLAGS)
    missing = [f for f in ("sha_ni", "avx2", "avx512f") if f not in flags] if platform.machine() in (
        "x86_64", "AMD64") else []
    return {"model": model, "cores": os.cpu_count(), "machine": platform.machine(), "flags": shown,
            "missing": missing}


def describe_cpu(info: dict) -> str:
    s = f"{info['model']} ({info['machine']}, {info['cores']} cores); flags: {' '.join(info['flags']) or 'none'}"
    if info["missing"]:
        s += f"; no {', '.join(info['missing'])}"
    return s


def _best(fn, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def transposes() -> list[tuple[str, float]]:
    import cv2
    import ml_dtypes
    import torch

    from gemma_inspect.arrays import transpose2d

    a = np.random.default_rng(0).standard_normal((2048, 16384), dtype=np.float32).astype(ml_dtypes.bfloat16)
    out = np.empty((16384, 2048), dtype=a.dtype)
    u, uo = a.view(np.uint16), out.view(np.uint16)
    ti, to = torch.from_numpy(a.view(np.int16)), torch.from_numpy(out.view(np.int16))
    f32 = np.empty(a.shape, dtype=np.float32)
    return [
        ("cv2.transpose of uint16, reused out (used)", _best(lambda: transpose2d(a, out))),
        ("cv2.transpose of uint16, fresh output", _best(lambda: cv2.transpose(u))),
        ("torch out.copy_(t()), reused out", _best(lambda: to.copy_(ti.t()))),
        ("torch t().contiguous(), fresh output", _best(lambda: ti.t().contiguous())),
        ("numpy np.copyto(out, a.T) of uint16, reused out", _best(lambda: np.copyto(uo, u.T))),
        ("numpy np.ascontiguousarray(a.T)", _best(lambda: np.ascontiguousarray(a.T))),
        ("cast bf16 -> f32, numpy, reused out (used)", _best(lambda: np.copyto(f32, a, casting="unsafe"))),
        ("memcpy of the same 64 MB", _best(lambda: np.copyto(uo.reshape(-1), u.reshape(-1)))),
    ]


def imports() -> list[tuple[str, float]]:
    """Seconds of `import X` in a fresh interpreter, numpy already imported (best of 3): what each kernel library
    costs a conversion before it does anything."""
    import subprocess

    code = "import time, numpy; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"
    rows = []
    for mod in ("cv2", "blake3", "h5py", "ml_dtypes", "torch"):
        times = []
        for _ in range(3):
            r = subprocess.run([sys.executable, "-c", code.format(mod)], capture_output=True, text=True)
            if r.returncode == 0:
                times.append(float(r.stdout.strip().splitlines()[-1]))
        rows.append((mod, min(times) if times else float("nan")))
    return rows


def hashes(mb: int = 256) -> list[tuple[str, float]]:
    import blake3

    data = memoryview(np.random.default_rng(1).integers(0, 256, size=mb << 20, dtype=np.uint8))
    rows = [
        ("SHA-256 (hashlib)", _best(lambda: hashlib.sha256(data).digest(), 3)),
        ("BLAKE2b (hashlib)", _best(lambda: hashlib.blake2b(data).digest(), 3)),
        ("BLAKE3, one thread (used)", _best(lambda: blake3.blake3(data).digest(), 3)),
        ("BLAKE3, all cores", _best(lambda: blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest(), 3)),
        ("memcpy", _best(lambda: bytearray(data), 3)),
    ]
    return [(name, (mb << 20) / t / 1e6) for name, t in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    info = cpu_info()
    print(f"CPU: {describe_cpu(info)}")
    tr = transposes()
    print("\n[2048, 16384] bfloat16 (64 MB), best of 5:")
    for name, t in tr:
        print(f"  {name:<48} {t * 1000:8.1f} ms")
    print("\nimport in a fresh interpreter (numpy already imported), best of 3:")
    im = imports()
    for name, t in im:
        print(f"  import {name:<41} {t * 1000:8.0f} ms")
    hs = hashes()
    print("\nhashing 256 MB, best of 3:")
    for name, rate in hs:
        print(f"  {name:<48} {rate:8.0f} MB/s")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"cpu": info, "transpose_seconds": dict(tr), "import_seconds": dict(im),
                       "hash_mb_per_s": dict(hs)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
