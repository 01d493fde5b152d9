"""Benchmark: a quantized GGUF converted to a Hugging Face directory, ours against transformers' own GGUF loading.

Builds once (cached under --workdir) a Gemma-3-270M-shaped GGUF (V=262144, d=640, 18 layers, 4 query heads,
1 K/V head of 256, F=2048; 268 M parameters) with seeded random weights quantized to Q8_0 by the gguf
package's quantizer, and a full 262,144-token vocabulary (as every real Gemma 3 GGUF carries): about
290 MB. Then prints, in one run, wall time and peak RSS of:
  - gemma-inspect convert GGUF -> HF (weights dequantized to float32, config, tokenizer files);
  - transformers: AutoModelForCausalLM.from_pretrained(dir, gguf_file=...) + save_pretrained (weights, config);
  - cp of our output's model.safetensors: writing the output's bytes at all (the disk's floor);
  - gemma-inspect summary of the GGUF (headers only), for scale.
Every contender runs as its own process (imports included: what a user waits for), after the GGUF has been
read once so that all of them start from a warm page cache. The two HF outputs are compared tensor by tensor
on a sample, so the speed is not bought with a different result.

    python benchmarks/gguf.py [--workdir bench-data] [--quant Q8_0] [--layers 18]
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
# This file is called gguf.py: drop its own directory from the path, or `import gguf` would import it.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402


def _load_measure():
    """benchmarks/_measure.py, loaded by path: putting this directory back on sys.path would make this file
    shadow the gguf package again."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_measure", os.path.join(HERE, "_measure.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_measure = _load_measure()
Runner, warm = _measure.Runner, _measure.warm
from gemma_inspect.spec import card  # noqa: E402
from gemma_inspect.tiny import weight_std  # noqa: E402

VOCAB = 262144


def bench_spec(layers: int):
    # Gemma 3 270M's shapes; its published sliding window and context length.
    return card("gemma3-270m", num_layers=layers, dtype="float32")


def bench_vocabulary(workdir: str) -> bytes:
    """A valid 262,144-piece SentencePiece model: a small trained one, padded with distinct normal pieces."""
    from gemma_inspect.tiny import train_tokenizer
    from gemma_inspect.tokenizer import spm_from_pieces, spm_pieces

    small = spm_pieces(open(train_tokenizer(os.path.join(workdir, "small-tokenizer.model")), "rb").read())
    extra = VOCAB - len(small["pieces"])
    return spm_from_pieces(small["pieces"] + [f"\u2581w{i}" for i in range(extra)],
                           small["scores"] + [-1000.0 - i for i in range(extra)],
                           small["types"] + [1] * extra)


def build_gguf(spec, path: str, quant: str, workdir: str, seed: int = 0) -> None:
    """Write the GGUF with our streaming writer from tensors generated one at a time (never all in memory)."""
    from gemma_inspect.checkpoint import Checkpoint, TensorRef, expected_tensors
    from gemma_inspect.convert import WriteOptions, convert
    from gemma_inspect.tokenizer import Tokenizer

    def loader(i: int, name: str, shape: tuple[int, ...]):
        def make() -> np.ndarray:
            rng = np.random.default_rng([seed, i])
            return rng.standard_normal(shape, dtype=np.float32) * np.float32(weight_std(spec, name, shape))
        return make

    tensors = {name: TensorRef(name, shape, "float32", loader(i, name, shape), nbytes=4 * int(np.prod(shape)))
               for i, (name, shape) in enumerate(expected_tensors(spec).items())}
    ckpt = Checkpoint(spec=spec, tensors=tensors, source="gemma3-270m-shaped-random", format="generated",
                      tokenizer=Tokenizer("generated", spm_bytes=bench_vocabulary(workdir)))
    convert(ckpt, path, "gguf", WriteOptions(dtype=quant.lower()))


TRANSFORMERS = """
import os, sys
from transformers import AutoModelForCausalLM
path, out = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
# transformers 5 marks a GGUF-loaded model as quantized and refuses save_pretrained ("not serializable"). Without
# the `kernels` package the weights are dequantized float32 tensors by now: drop the marker to save them.
model.hf_quantizer = None
if getattr(model.config, "quantization_config", None) is not None:
    del model.config.quantization_config
model.save_pretrained(out)
"""


def compare_outputs(a: str, b: str, names: list[str]) -> float:
    """max |a - b| over a sample of tensors of two HF directories (transformers may shard its output)."""
    from safetensors import safe_open

    def find(d: str) -> dict[str, str]:
        where = {}
        for f in sorted(os.listdir(d)):
            if f.endswith(".safetensors"):
                with safe_open(os.path.join(d, f), "np") as h:
                    where.update({k: os.path.join(d, f) for k in h.keys()})
        return where

    wa, wb = find(a), find(b)
    worst = 0.0
    for n in names:
        with safe_open(wa[n], "np") as ha, safe_open(wb[n], "np") as hb:
            x, y = ha.get_tensor(n), hb.get_tensor(n)
        if x.shape != y.shape:
            return float("inf")
        worst = max(worst, float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()))
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="bench-data")
    ap.add_argument("--quant", default="Q8_0", choices=["Q8_0"], help="quantization of the matrices")
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    args = ap.parse_args()

    spec = bench_spec(args.layers)
    os.makedirs(args.workdir, exist_ok=True)
    src = os.path.abspath(os.path.join(args.workdir, f"gemma3-270m-shaped-{args.layers}l-{args.quant.lower()}.gguf"))
    if not os.path.exists(src):
        print(f"building {src} ({spec.num_parameters:,} parameters, {args.quant}) ...", flush=True)
        build_gguf(spec, src, args.quant, args.workdir)
    out = os.path.join(args.workdir, "out-gguf")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    warm(src)  # the page cache, for every contender alike
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    cli = [sys.executable, "-m", "gemma_inspect"]
    size = os.path.getsize(src)
    runner = Runner(env, width=58)
    run = runner.run

    print(f"\nGemma-3-270M-shaped, {args.layers} layers, {spec.num_parameters / 1e6:.0f} M parameters, "
          f"{args.quant}, {VOCAB:,}-token vocabulary, {size / 1e6:.0f} MB GGUF")
    ours = run("gemma-inspect convert GGUF -> HF", [*cli, "convert", src, os.path.join(out, "ours"), "--to", "hf"],
               os.path.join(out, "ours"), keep=True, repeat=3)  # kept: the two outputs are compared below
    # the floor: writing the output's bytes at all (this disk's write speed), whoever converts
    weights = os.path.join(out, "ours", "model.safetensors")
    copy = run("cp of the output's model.safetensors", ["cp", weights, os.path.join(out, "copy.safetensors")],
               os.path.join(out, "copy.safetensors"), repeat=3)
    theirs = run("transformers from_pretrained(gguf_file=) + save_pretrained",
                 [sys.executable, "-c", TRANSFORMERS, src, os.path.join(out, "transformers")],
                 os.path.join(out, "transformers"), keep=True)
    summ = run("gemma-inspect summary (headers only)", [*cli, "summary", src], None)

    diff = None
    if ours["rc"] == 0 and theirs["rc"] == 0:
        sample = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                  f"model.layers.{args.layers - 1}.mlp.down_proj.weight", "model.layers.3.post_attention_layernorm.weight",
                  "model.layers.5.self_attn.k_norm.weight", "model.norm.weight"]
        diff = compare_outputs(os.path.join(out, "ours"), os.path.join(out, "transformers"), sample)

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"GGUF ({args.quant}, {size / 1e6:.0f} MB) -> Hugging Face, measured {datetime.date.today()} on "
                    f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for col in ("path", "wall s", "peak RSS", "output", "time vs transformers", "memory vs transformers",
                "time vs cp"):
        t.add_column(col, justify="left" if col == "path" else "right")
    for r in (ours, copy, theirs, summ):
        ok = r["rc"] == 0 and theirs["rc"] == 0
        t.add_row(r["label"], f"{r['seconds']:.2f}" if not r["rc"] else "failed",
                  f"{r['peak_rss_bytes'] / 1e9:.2f} GB",
                  f"{r['output_bytes'] / 1e9:.2f} GB" if r["output_bytes"] else "-",
                  f"{theirs['seconds'] / r['seconds']:.1f}x faster" if ok and r not in (theirs, copy) else "",
                  f"{r['peak_rss_bytes'] / theirs['peak_rss_bytes']:.2f}x" if ok and r not in (theirs, copy) else "",
                  f"{r['seconds'] / copy['seconds']:.1f}x" if r in (ours, theirs) and copy["rc"] == 0 else "")
    Console(width=140).print(t)
    if diff is not None:
        print(f"max |ours - transformers| over {len(sample)} sampled tensors: {diff:g}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"date": str(datetime.date.today()), "machine": platform.machine(), "cores": os.cpu_count(),
                       "parameters": spec.num_parameters, "gguf_bytes": size, "quant": args.quant,
                       "max_abs_diff_sampled": diff, "results": runner.rows}, f, indent=2)
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
