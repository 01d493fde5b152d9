"""CUDA parity of a Gemma-2B-shaped random checkpoint: a Keras preset (written by keras-hub) against its
HF conversion (written by gemma-inspect's converter), in float32 and bfloat16.

Prints the GPU, then per dtype the wall time of the parity run (both models loaded and run), the peak
GPU memory torch allocated, and the parity figures; a JSON line at the end. Without a CUDA GPU it says
so and exits 0.

    python benchmarks/gpu_parity.py                       # 6 layers, 1.18 B parameters, bf16 on disk
    python benchmarks/gpu_parity.py --layers 18           # the full Gemma 2B depth (2.5 B)
    python benchmarks/gpu_parity.py --device cpu --small  # a shrunk run on the CPU, to test this script
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def gemma_2b_shaped(layers: int, small: bool):
    from gemma_inspect.spec import card, make_spec

    if small:
        return make_spec("gemma", vocab_size=4096, hidden_size=256, num_layers=layers, num_attention_heads=8,
                         num_key_value_heads=1, head_dim=32, intermediate_size=1024, dtype="bfloat16")
    # Gemma 2B: MQA (8 query heads, 1 K/V head), head_dim 256, FFN 16384, 256000-token vocabulary.
    return card("gemma-2b", num_layers=layers, dtype="bfloat16")


def random_weights_fast(spec, device: str, seed: int = 0):
    """The distribution of gemma_inspect.tiny.random_weights (tiny.weight_std), drawn with torch on `device`:
    numpy's generator needs half a minute for 1.18 B numbers."""
    import torch

    from gemma_inspect.checkpoint import expected_tensors
    from gemma_inspect.tiny import weight_std

    gen = torch.Generator(device=device).manual_seed(seed)
    return {name: (torch.randn(shape, generator=gen, device=device) * weight_std(spec, name, shape)).cpu().numpy()
            for name, shape in expected_tensors(spec).items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=128, help="sequence length (BOS + random ids)")
    ap.add_argument("--workdir", default=None, help="where to write the checkpoints (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: the same run without a GPU (slow at full size; for testing this script)")
    ap.add_argument("--small", action="store_true", help="a shrunk model of the same layout (smoke test)")
    args = ap.parse_args()

    import torch

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("SKIP: benchmarks/gpu_parity.py needs a CUDA GPU and torch sees none "
              "(torch.cuda.is_available() is False). Nothing was measured.")
        return 0

    import numpy as np

    from gemma_inspect import load
    from gemma_inspect.parity import parity
    from gemma_inspect.tiny import write_keras

    spec = gemma_2b_shaped(args.layers, args.small)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (CPU run)"
    print(f"GPU: {gpu}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"model: Gemma-2B-shaped, {spec.num_layers} layers, {spec.num_parameters / 1e9:.3f} B parameters, "
          f"stored in {spec.dtype}")
    root = args.workdir or tempfile.mkdtemp(prefix="gemma-inspect-gpu-parity-")
    os.makedirs(root, exist_ok=True)
    keras_dir, hf_dir = os.path.join(root, "keras"), os.path.join(root, "hf")
    for d in (keras_dir, hf_dir):
        shutil.rmtree(d, ignore_errors=True)
    try:
        t = time.perf_counter()
        write_keras(spec, random_weights_fast(spec, device), keras_dir)  # keras-hub's own save_to_preset
        print(f"wrote the Keras preset in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        from gemma_inspect.convert import convert

        convert(keras_dir, hf_dir, "hf")
        print(f"wrote its HF conversion (gemma-inspect convert) in {time.perf_counter() - t:.1f} s")

        rng = np.random.default_rng(0)
        tokens = [2] + [int(i) for i in rng.integers(4, spec.vocab_size, size=args.tokens - 1)]
        results = []
        for dtype in ("float32", "bfloat16"):
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            r = parity(load(keras_dir), load(hf_dir), "keras", "transformers", device, dtype, tokens=tokens)
            wall = time.perf_counter() - t
            peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
            worst = max(r["layers"], key=lambda row: row["relative_diff"])
            lg = r["logits"]
            print(f"\n{dtype}: {'PASS' if r['passed'] else 'FAIL'} in {wall:.1f} s, peak GPU memory "
                  f"{peak / 2**30:.2f} GiB")
            print(f"  logits: max |A-B| {lg['max_abs_diff']:.3e}, mean {lg['mean_abs_diff']:.3e}, "
                  f"KL {lg['kl_divergence']:.3e}, top-1 {100 * lg['top1_agreement']:.1f}%"
                  + (f" ({100 * lg['top1_agreement_outside_ties']:.1f}% outside ties)"
                     if "top1_agreement_outside_ties" in lg else "")
                  + f", top-5 overlap {100 * lg['top5_overlap']:.1f}%")
            print(f"  largest layer difference: index {worst['index']}, relative {worst['relative_diff']:.3e}; "
                  f"first divergent layer: {r['first_divergent_layer']}")
            results.append({"dtype": dtype, "passed": r["passed"], "seconds": round(wall, 2),
                            "peak_gpu_bytes": peak, "logits": lg,
                            "max_layer_relative_diff": worst["relative_diff"],
                            "first_divergent_layer": r["first_divergent_layer"]})
        print(json.dumps({"gpu": gpu, "layers": spec.num_layers, "parameters": spec.num_parameters,
                          "tokens": len(tokens), "results": results}))
        return 0 if all(x["passed"] for x in results) else 1
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
