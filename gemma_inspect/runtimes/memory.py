"""What a forward pass will cost in memory, estimated from the spec before anything is loaded, and the refusal of
one that will not fit.

A config is input like any other: `sliding_window: 20000` in a tiny config once made the default sequence 20,008
tokens, and eager attention over it (scores, probabilities and a mask of T x T per head) took 9.6 GB before the
process died. The estimate counts what a forward pass certainly holds at its peak - the weights in the run
dtype, the logits (the runtime's and the float32 copy kept for comparison), every layer's hidden state, one
layer's attention scores, probabilities and mask, one layer's FFN activations - and `check_fits` refuses, naming
the config value behind the largest term, when that is more than the memory available.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import InputError

F32 = 4


def forward_bytes(spec: Any, n_tokens: int, dtype: str, logits_copies: int = 3) -> dict[str, int]:
    """The bytes of each part of one forward pass over `n_tokens` tokens (batch 1) of a model of `spec`."""
    t, v, d = n_tokens, spec.vocab_size, spec.hidden_size
    item = 2 if dtype == "bfloat16" else F32
    return {
        "weights": spec.num_parameters * item,
        "logits": logits_copies * t * v * F32,
        "hidden states": (spec.num_layers + 2) * t * d * F32,
        "attention": (3 * spec.num_attention_heads + 1) * t * t * F32,
        "feedforward": 3 * t * spec.intermediate_size * F32,
    }


def available_bytes(device: str) -> int | None:
    """Memory free for a forward pass: the GPU's free memory on cuda, the host's available memory otherwise
    (MemAvailable: free plus reclaimable caches). None when it cannot be told."""
    if device == "cuda":
        try:
            import torch

            return int(torch.cuda.mem_get_info()[0])
        except Exception:  # noqa: BLE001 - no estimate is better than a failure here
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def config_file(ckpt: Any) -> str:
    """The file a checkpoint's architecture was read from: config.json in a directory, else the file itself."""
    source = str(ckpt.source)
    if os.path.isdir(source):
        config = os.path.join(source, "config.json")
        return config if os.path.isfile(config) else source
    return source


def _cause(spec: Any, part: str, n_tokens: int, window_driven: bool) -> str:
    """The config value behind the largest part of the estimate."""
    if window_driven and part in ("attention", "logits", "hidden states", "feedforward"):
        return f"sliding_window {spec.sliding_window} (the default sequence is the window + 8 tokens, {n_tokens:,})"
    if part == "logits":
        return f"vocab_size {spec.vocab_size:,} x {n_tokens:,} tokens"
    if part == "attention":
        return f"num_attention_heads {spec.num_attention_heads} x {n_tokens:,}^2 tokens"
    if part == "hidden states":
        return f"num_hidden_layers {spec.num_layers} x hidden_size {spec.hidden_size} x {n_tokens:,} tokens"
    if part == "feedforward":
        return f"intermediate_size {spec.intermediate_size:,} x {n_tokens:,} tokens"
    return f"{spec.num_parameters:,} parameters"


def check_fits(ckpt: Any, n_tokens: int, dtype: str, device: str, window_driven: bool = False,
               logits_copies: int = 3, available: int | None = None) -> int:
    """Refuse (an InputError naming the config file and value) a forward pass of `ckpt` over `n_tokens` tokens
    whose estimate exceeds the memory available on `device`; returns the estimate in bytes. `window_driven`
    says the length is the default one, set by the config's sliding window."""
    parts = forward_bytes(ckpt.spec, n_tokens, dtype, logits_copies)
    need = sum(parts.values())
    free = available_bytes(device) if available is None else available
    if free is None or need <= free:
        return need
    from ..spec import format_bytes

    largest = max(parts, key=parts.__getitem__)
    raise InputError(config_file(ckpt), f"{_cause(ckpt.spec, largest, n_tokens, window_driven)}: a forward pass "
                                        f"needs about {format_bytes(need)} ({largest} {format_bytes(parts[largest])}), "
                                        f"more than the {format_bytes(free)} available on {device}")
