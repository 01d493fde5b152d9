"""Benchmark: Keras <-> HF conversion of a Gemma-2B-shaped, 6-layer, 1.18 B parameter bfloat16 checkpoint.

Prints, in one run, wall time and peak RSS of:
  - gemma-inspect convert Keras -> HF, and HF -> Keras;
  - keras-hub's own path: Backbone.from_preset(keras) + export_to_transformers;
  - keras-hub's own path: Backbone.from_preset(hf_dir) + save_to_preset;
  - a plain copy of the weights file (the floor: reading and writing the same bytes).
Every contender runs as its own process (imports included: what a user waits for), after the input
files have been read once so that all of them start from a warm page cache.

    python benchmarks/convert.py [--workdir bench-data] [--layers 6] [--skip-keras-hub]
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
    ap.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    args = ap.parse_args()

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
    cli = [sys.executable, "-m", "gemma_inspect"]
    size = os.path.getsize(os.path.join(keras_src, "model.weights.h5"))
    runner = Runner(env)
    run = runner.run

    print(f"\nGemma-2B-shaped, {args.layers} layers, {spec.num_parameters / 1e9:.2f} B parameters, bfloat16, "
          f"{size / 1e9:.2f} GB weights file")
    copy = run("cp model.weights.h5 (baseline: same bytes)",
               ["cp", os.path.join(keras_src, "model.weights.h5"), os.path.join(out, "copy.h5")],
               os.path.join(out, "copy.h5"))
    k2h = run("gemma-inspect convert Keras -> HF", [*cli, "convert", keras_src, os.path.join(out, "ours-hf"),
                                                    "--to", "hf"], os.path.join(out, "ours-hf"))
    h2k = run("gemma-inspect convert HF -> Keras", [*cli, "convert", hf_src, os.path.join(out, "ours-keras"),
                                                    "--to", "keras"], os.path.join(out, "ours-keras"))
    # The manifest hashes every output byte (SHA-256); without SHA-256 CPU instructions that dominates.
    k2h_nm = run("  the same, --no-manifest", [*cli, "convert", keras_src, os.path.join(out, "ours-hf-nm"),
                                               "--to", "hf", "--no-manifest"], os.path.join(out, "ours-hf-nm"))
    h2k_nm = run("  the same, --no-manifest", [*cli, "convert", hf_src, os.path.join(out, "ours-keras-nm"),
                                               "--to", "keras", "--no-manifest"], os.path.join(out, "ours-keras-nm"))
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

    t = Table(title=f"Keras <-> HF conversion, measured {datetime.date.today()} on {platform.machine()}, "
                    f"{os.cpu_count()} cores, Python {platform.python_version()}")
    for col in ("path", "wall s", "peak RSS", "output", "vs keras-hub", "vs cp"):
        t.add_column(col, justify="left" if col == "path" else "right")

    def ratio(a: dict | None, b: dict | None) -> str:
        if not a or not b or a["rc"] or b["rc"]:
            return "-"
        return f"{b['seconds'] / a['seconds']:.1f}x faster"

    for r, base in ((k2h, kh_k2h), (k2h_nm, kh_k2h), (h2k, kh_h2k), (h2k_nm, kh_h2k), (kh_k2h, None),
                    (kh_h2k, None), (copy, None)):
        if r is None:
            continue
        vs_cp = f"{r['seconds'] / copy['seconds']:.1f}x cp" if r is not copy and not r["rc"] else ""
        t.add_row(r["label"], f"{r['seconds']:.2f}" if not r["rc"] else "failed",
                  f"{r['peak_rss_bytes'] / 1e9:.2f} GB",
                  f"{r['output_bytes'] / 1e9:.2f} GB" if r["output_bytes"] else "-", ratio(r, base), vs_cp)
    Console().print(t)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"date": str(datetime.date.today()), "machine": platform.machine(), "cores": os.cpu_count(),
                       "parameters": spec.num_parameters, "weights_bytes": size, "results": runner.rows}, f, indent=2)
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
