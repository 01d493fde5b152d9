"""The transformers runtime: Hugging Face's own Gemma implementation, hidden states collected with hooks.

An HF directory is loaded with `AutoModelForCausalLM.from_pretrained` (optionally spread over several
GPUs with accelerate's `device_map="auto"`); any other checkpoint is first described as an HF config and
its canonical tensors loaded into the model built from it, so the same implementation can judge a
GGUF or a Keras preset too.

Hidden states come from forward hooks on the embedding, on every decoder layer and on the final norm,
not from `output_hidden_states`: that tuple has L + 1 entries (the embedding and L layer outputs), and
transformers 5 overwrites its last entry with the final norm's output, so the last block's own output
is not in it. The hooks give all L + 2 points in every version.
(Named transformers_rt so that `import transformers` inside this package still means the library.)
"""

from __future__ import annotations

import time
from typing import Any

from ..checkpoint import Checkpoint
from ..errors import UnsupportedError
from . import RuntimeResult, to_cpu_float


def _torch_dtype(dtype: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def load_model(ckpt: Checkpoint, device: str, dtype: str, device_map: str | dict | None = None,
               attn_implementation: str | None = None) -> Any:
    """A transformers CausalLM holding `ckpt`'s weights, in eval mode, on `device` (or per device_map)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if ckpt.format == "hf":
        if device_map is not None:
            kwargs["device_map"] = device_map
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # the caller shows its own progress; no tqdm lines on stderr
        try:
            model = AutoModelForCausalLM.from_pretrained(ckpt.source, **kwargs)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        if device_map is None:
            model = model.to(device)
        return model.eval()
    if device_map is not None:
        raise UnsupportedError(f"{ckpt.source}: device_map needs a Hugging Face directory; this is {ckpt.format}")

    from ..formats.hf import config_dict, from_canonical

    cfg = config_dict(ckpt.spec)  # UnsupportedError when HF cannot express the architecture
    model_type = cfg.pop("model_type")
    for key in ("torch_dtype", "dtype", "architectures"):
        cfg.pop(key, None)
    config = AutoConfig.for_model(model_type, **cfg)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=_torch_dtype(dtype))
    from .reference import load_weights

    weights = load_weights(ckpt, device, _torch_dtype(dtype))
    state = {from_canonical(n, ckpt.spec.family): t for n, t in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and ckpt.spec.tied_embeddings)]
    if missing or unexpected:
        raise UnsupportedError(f"{ckpt.source}: tensors do not fit the transformers model "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


def text_model(model: Any) -> Any:
    """The decoder stack (the module holding embed_tokens, layers and norm), for plain and multimodal
    models alike (Gemma3ForConditionalGeneration keeps it at model.language_model)."""
    for module in model.modules():
        if all(hasattr(module, a) for a in ("embed_tokens", "layers", "norm")):
            return module
    raise UnsupportedError(f"{type(model).__name__}: no decoder stack with embed_tokens, layers and norm")


def run(ckpt: Checkpoint, token_ids: list[list[int]], device: str, dtype: str,
        device_map: str | dict | None = None, attn_implementation: str | None = None) -> RuntimeResult:
    import torch

    start = time.perf_counter()
    model = load_model(ckpt, device, dtype, device_map, attn_implementation)
    stack = text_model(model)
    captured: dict[str, Any] = {}

    def keep(key: str):
        def hook(_module: Any, _args: Any, output: Any) -> None:
            # Decoder layers return a tensor in transformers 5 and a tuple (hidden, ...) in 4.x.
            captured[key] = to_cpu_float(output[0] if isinstance(output, tuple) else output)
        return hook

    handles = [stack.embed_tokens.register_forward_hook(keep("embed"))]  # the scaled embedding
    handles += [layer.register_forward_hook(keep(f"layer{i}")) for i, layer in enumerate(stack.layers)]
    handles.append(stack.norm.register_forward_hook(keep("norm")))
    try:
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=stack.embed_tokens.weight.device)
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    n = len(stack.layers)
    hidden = [captured["embed"]] + [captured[f"layer{i}"] for i in range(n)] + [captured["norm"]]
    logits = to_cpu_float(out.logits)
    attn = getattr(model.config, "_attn_implementation", None)
    del model, stack, out
    if device == "cuda":
        torch.cuda.empty_cache()
    return RuntimeResult(logits=logits, hidden_states=hidden, runtime="transformers", device=device, dtype=dtype,
                         source=ckpt.source, seconds=time.perf_counter() - start,
                         notes=[f"attention implementation: {attn}"] if attn else [])
