"""Benchmark: Keras <-> HF conversion of a Gemma-2B-shaped, 6-layer, 1.18 B parameter bfloat16 checkpoint.

Prints the machine first (CPU model, cores, the flags that matter: sha_ni, avx2, avx512*; the transpose, import
and hash candidates of benchmarks/kernels.py measured here), then, in one run, wall time, CPU time (user + system)
and peak RSS of:
  - gemma-inspect convert Keras -> HF, and HF -> Keras (default: BLAKE3 manifest, output written past the page
    cache; also --hash sha256, --no-manifest and --io buffered), with each stage's seconds (read, transform,
    write, hash, import of the layout kernels'
    library; summed over the threads that overlap them, so they do not add up to the wall time);
  - with --before DIR, the default conversions of an earlier version's package (DIR), side by side;
  - keras-hub's own path: Backbone.from_preset(keras) + export_to_transformers;
  - keras-hub's own path: Backbone.from_preset(hf_dir) + save_to_preset;
  - a plain copy of the weights file (the floor: reading and writing the same bytes).
Every contender runs as its own process (imports included: what a user waits for), after the input
files have been read once so that all of them start from a warm page cache. Ours and cp run --repeat times
(default 3) and the fastest run is shown, with every run's wall time: on a machine shared with other work the
minimum is the least disturbed figure, and CPU seconds tell what the work itself cost.

    python benchmarks/convert.py [--workdir bench-data] [--layers 6] [--skip-keras-hub] [--repeat 3]
                                 [--before DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from _measure import Runner, warm  # noqa: E402
from kernels import cpu_info, describe_cpu, hashes, imports, transposes  # noqa: E402
from gemma_inspect.convert import STAGES  # noqa: E402
from gemma_inspect.spec import card  # noqa: E402
from gemma_inspect.tiny import weight_std  # noqa: E402


def bench_spec(layers: int):
    # Gemma 2B's shapes (V=256000, d=2048, MQA 8/1 heads of 256, F=16384) with fewer layers.
    return card("gemma-2b", num_layers=layers, dtype="bfloat16")


def build_hf(spec, out: str, seed: int = 0) -> None:
    """Write random bf16 weights as an HF directory, one tensor at a time (the data is built, not read)."""
    import ml_dtypes

    from gemma_inspect.checkpoint import expected_tensors
    from gemma_inspect.formats.hf import config_dict, from_canonical
    from gemma_inspect.formats.safetensors_io import SafetensorsWriter

    rng = np.random.default_rng(seed)
    shapes = expected_tensors(spec)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    layout = [(from_canonical(n, spec.family), "bfloat16", s) for n, s in shapes.items()]
    canonical_of = {from_canonical(n, spec.family): n for n in shapes}
    with SafetensorsWriter(os.path.join(tmp, "model.safetensors"), layout, {"format": "pt"}) as w:
        for (name, _, shape) in layout:
            std = np.float32(weight_std(spec, canonical_of[name], shape))
            arr = (rng.standard_normal(shape, dtype=np.float32) * std).astype(ml_dtypes.bfloat16)
            w.add(name, [memoryview(arr.reshape(-1).view(np.uint8))])
            del arr
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config_dict(spec), f, indent=2)
    os.replace(tmp, out)


KERAS_EXPORT = """
import os, sys
os.environ["KERAS_BACKEND"] = "torch"
import keras_hub
b = keras_hub.models.Backbone.from_preset(sys.argv[1])
b.export_to_transformers(sys.argv[2])
"""

KERAS_FROM_HF = """
import os, sys
os.environ["KERAS_BACKEND"] = "torch"
import keras_hub
b = keras_hub.models.Backbone.from_preset(sys.argv[1])
b.save_to_preset(sys.argv[2])
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="bench-data")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--skip-keras-hub", action="store_true", help="only our converter and the copy")
    ap.add_argument("--skip-kernels", action="store_true", help="do not time the transpose and hash candidates")
    ap.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each contender of ours and of cp; the fastest is shown (default 3; keras-hub: 1)")
    ap.add_argument("--before", metavar="DIR",
                    help="also run the default conversions with the gemma_inspect package of DIR (a checkout of "
                         "an earlier version: `git worktree add DIR REV`), side by side")
    args = ap.parse_args()

    cpu = cpu_info()
    print(f"CPU: {describe_cpu(cpu)}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    kernel_rows: dict = {}
    if not args.skip_kernels:
        tr, im, hs = transposes(), imports(), hashes()
        kernel_rows = {"transpose_seconds": dict(tr), "import_seconds": dict(im), "hash_mb_per_s": dict(hs)}
        print("  transpose [2048, 16384] bf16: " + "; ".join(f"{n} {t * 1000:.0f} ms" for n, t in tr[:6]))
        print("  import: " + "; ".join(f"{n} {t * 1000:.0f} ms" for n, t in im))
        print("  hash: " + "; ".join(f"{n} {r:.0f} MB/s" for n, r in hs), flush=True)
    spec = bench_spec(args.layers)
    os.makedirs(args.workdir, exist_ok=True)
    hf_src = os.path.join(args.workdir, f"gemma2b-{args.layers}l-hf")
    keras_src = os.path.join(args.workdir, f"gemma2b-{args.layers}l-keras")
    if not os.path.exists(hf_src):
        print(f"building {hf_src} ({spec.num_parameters:,} parameters, bfloat16) ...", flush=True)
        build_hf(spec, hf_src)
    if not os.path.exists(keras_src):
        print(f"building {keras_src} ...", flush=True)
        from gemma_inspect.convert import convert

        convert(hf_src, keras_src, "keras")
    out = os.path.join(args.workdir, "out")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    warm(hf_src)
    warm(keras_src)
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3")
    # -P: the package comes from PYTHONPATH (this checkout, or --before's), never from the current directory.
    cli = [sys.executable, "-P", "-m", "gemma_inspect"]
    ours_env = dict(env, PYTHONPATH=os.path.dirname(HERE))
    before_env = dict(env, PYTHONPATH=os.path.abspath(args.before)) if args.before else None
    reps = max(1, args.repeat)
    size = os.path.getsize(os.path.join(keras_src, "model.weights.h5"))
    runner = Runner(env)
    run = runner.run
    runner.width = 48

    print(f"\nGemma-2B-shaped, {args.layers} layers, {spec.num_parameters / 1e9:.2f} B parameters, bfloat16, "
          f"{size / 1e9:.2f} GB weights file")
    copy = run("cp model.weights.h5 (baseline: same bytes)",
               ["cp", os.path.join(keras_src, "model.weights.h5"), os.path.join(out, "copy.h5")],
               os.path.join(out, "copy.h5"), repeat=reps)

    def ours(label: str, src: str, name: str, to: str, *extra: str, env: dict | None = None) -> dict:
        dest = os.path.join(out, name)
        return run(label, [*cli, "convert", src, dest, "--to", to, "--json", *extra], dest, repeat=reps,
                   env=env or ours_env)

    k2h = ours("gemma-inspect convert Keras -> HF", keras_src, "ours-hf", "hf")
    k2h_sha = ours("  the same, --hash sha256", keras_src, "ours-hf-sha", "hf", "--hash", "sha256")
    k2h_nm = ours("  the same, --no-manifest", keras_src, "ours-hf-nm", "hf", "--no-manifest")
    k2h_buf = ours("  the same, --io buffered", keras_src, "ours-hf-buf", "hf", "--io", "buffered")
    h2k = ours("gemma-inspect convert HF -> Keras", hf_src, "ours-keras", "keras")
    h2k_sha = ours("  the same, --hash sha256", hf_src, "ours-keras-sha", "keras", "--hash", "sha256")
    h2k_nm = ours("  the same, --no-manifest", hf_src, "ours-keras-nm", "keras", "--no-manifest")
    h2k_buf = ours("  the same, --io buffered", hf_src, "ours-keras-buf", "keras", "--io", "buffered")
    b_k2h = b_h2k = None
    if before_env:
        b_k2h = ours(f"before ({args.before}): Keras -> HF", keras_src, "before-hf", "hf", env=before_env)
        b_h2k = ours(f"before ({args.before}): HF -> Keras", hf_src, "before-keras", "keras", env=before_env)
    kh_k2h = kh_h2k = None
    if not args.skip_keras_hub:
        kh_k2h = run("keras-hub from_preset + export_to_transformers",
                     [sys.executable, "-c", KERAS_EXPORT, keras_src, os.path.join(out, "kh-hf")],
                     os.path.join(out, "kh-hf"))
        kh_h2k = run("keras-hub from_preset(hf) + save_to_preset",
                     [sys.executable, "-c", KERAS_FROM_HF, hf_src, os.path.join(out, "kh-keras")],
                     os.path.join(out, "kh-keras"))

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Keras <-> HF conversion, measured {datetime.date.today()} on {cpu['model']}, "
                    f"{os.cpu_count()} cores, Python {platform.python_version()}")
    for col in ("path", "wall s", "CPU s", "peak RSS", "output", "vs keras-hub", "vs cp",
                "read / transform / write / hash / import s"):
        t.add_column(col, justify="left" if col == "path" else "right")

    def ratio(a: dict | None, b: dict | None) -> str:
        if not a or not b or a["rc"] or b["rc"]:
            return "-"
        return f"{b['seconds'] / a['seconds']:.1f}x faster"

    for r, base in ((k2h, kh_k2h), (k2h_sha, kh_k2h), (k2h_nm, kh_k2h), (k2h_buf, kh_k2h), (h2k, kh_h2k),
                    (h2k_sha, kh_h2k), (h2k_nm, kh_h2k), (h2k_buf, kh_h2k), (b_k2h, kh_k2h), (b_h2k, kh_h2k),
                    (kh_k2h, None), (kh_h2k, None), (copy, None)):
        if r is None:
            continue
        vs_cp = f"{r['seconds'] / copy['seconds']:.1f}x cp" if r is not copy and not r["rc"] else ""
        st = r.get("stages")
        stages = " / ".join(f"{st.get(k, 0):.2f}" for k in STAGES) if st else ""
        t.add_row(r["label"], f"{r['seconds']:.2f}" if not r["rc"] else "failed", f"{r['cpu_seconds']:.2f}",
                  f"{r['peak_rss_bytes'] / 1e9:.2f} GB",
                  f"{r['output_bytes'] / 1e9:.2f} GB" if r["output_bytes"] else "-", ratio(r, base), vs_cp, stages)
    Console(width=180).print(t)
    print(f"load average after the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"date": str(datetime.date.today()), "machine": platform.machine(), "cores": os.cpu_count(),
                       "cpu": cpu, "kernels": kernel_rows, "load_average": os.getloadavg(),
                       "parameters": spec.num_parameters, "weights_bytes": size, "results": runner.rows}, f, indent=2)
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
