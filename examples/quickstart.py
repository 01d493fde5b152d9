"""Quickstart for the gemma-inspect library API (not the CLI), on a tiny Gemma 2 built on the spot.

    .venv/bin/python examples/quickstart.py [WORKDIR]

1. builds a tiny Gemma 2 Keras preset with keras-hub itself (random weights, a tiny tokenizer);
2. reads it (headers only) and prints what the spec says;
3. converts it to a Hugging Face directory, streaming;
4. compares the two tensor by tensor, then runs both (keras-hub vs transformers) on the same tokens.
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "torch")

from gemma_inspect import load, summarize  # noqa: E402
from gemma_inspect import tiny  # noqa: E402
from gemma_inspect.convert import WriteOptions, convert  # noqa: E402
from gemma_inspect.diff import diff  # noqa: E402
from gemma_inspect.parity import parity  # noqa: E402


def main(workdir: str) -> int:
    keras_dir = os.path.join(workdir, "gemma2-keras")
    hf_dir = os.path.join(workdir, "gemma2-hf")

    # 1. A tiny Gemma 2 written by keras-hub's own save_to_preset.
    spm = tiny.train_tokenizer(os.path.join(workdir, "tokenizer.model"))
    spec = tiny.tiny_spec("gemma2")
    tiny.write_keras(spec, tiny.random_weights(spec, seed=0), keras_dir, spm)

    # 2. Read it: only config.json and the H5 headers are touched.
    ckpt = load(keras_dir)
    s = ckpt.spec
    print(f"{s.title}: {s.num_layers} layers, {s.attention_kind} ({s.num_attention_heads} query / "
          f"{s.num_key_value_heads} K/V heads), norm placement {s.norm_placement}, soft caps "
          f"{s.attention_logit_softcap}/{s.final_logit_softcap}, sliding layers {list(s.sliding_layers)}")
    params = summarize(ckpt)["parameters"]
    print(f"parameters: {params['total']:,} (embedding {params['embedding']:,}, if untied {params['total_if_untied']:,})")

    # 3. Convert to Hugging Face, bit-exact.
    report = convert(ckpt, hf_dir, "hf", WriteOptions(dtype="keep"))
    print(f"converted {report['tensors']} tensors, {report['bytes_written']:,} bytes -> {hf_dir}")

    # 4. Same tensors? Same computation?
    d = diff(load(keras_dir), load(hf_dir))
    print(f"diff: identical={d['identical']} {d['counts']}")
    p = parity(keras_dir, hf_dir)  # keras-hub vs transformers, float32, on CPU
    print(f"parity ({p['a']['runtime']} vs {p['b']['runtime']}): passed={p['passed']}, "
          f"logits max |A-B| {p['logits']['max_abs_diff']:.2e}, top-1 agreement {p['logits']['top1_agreement']:.0%}, "
          f"first divergent layer {p['first_divergent_layer']}")
    return 0 if d["identical"] and p["passed"] else 1


if __name__ == "__main__":
    if len(sys.argv) > 1:
        os.makedirs(sys.argv[1], exist_ok=True)
        sys.exit(main(sys.argv[1]))
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(main(tmp))
