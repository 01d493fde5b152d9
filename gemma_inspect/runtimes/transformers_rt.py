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

import os
import time
from typing import Any

from ..checkpoint import Checkpoint
from ..errors import InputError, UnsupportedError
from ..trace import main_output
from .types import HF_MODULE_LAYOUTS, HF_MODULE_ROLES, Anatomy, RuntimeResult, to_cpu_float, torch_dtype


def load_model(ckpt: Checkpoint, device: str, dtype: str, device_map: str | dict | None = None,
               attn_implementation: str | None = None) -> Any:
    """A transformers CausalLM holding `ckpt`'s weights, in eval mode, on `device` (or per device_map); for an
    embedding model (no LM head) the bare decoder stack AutoModel builds (Gemma3TextModel)."""
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModel if ckpt.embedding_head is not None else AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if ckpt.format == "hf":
        if device_map is not None:
            kwargs["device_map"] = device_map
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # the caller shows its own progress; no tqdm lines on stderr
        try:
            model = auto.from_pretrained(ckpt.source, **kwargs)
        except MemoryError:
            raise
        except Exception as e:  # transformers reads config.json itself, more strictly in places (1e9 for an int)
            msg = " ".join(str(e).split())[:240]
            raise InputError(os.path.join(ckpt.source, "config.json"),
                             f"transformers cannot load this checkpoint ({e.__class__.__name__}"
                             f"{': ' + msg if msg else ''})") from e
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        if device_map is None:
            model = model.to(device)
        return model.eval()
    if device_map is not None:
        raise UnsupportedError(f"{ckpt.source}: device_map needs a Hugging Face directory; this is {ckpt.format}")

    from .reference import load_weights

    weights = load_weights(ckpt, device, torch_dtype(dtype))
    return build_model(ckpt.spec, weights, device, dtype, attn_implementation, ckpt.source,
                       bare=ckpt.embedding_head is not None).eval()


def build_model(spec: Any, weights: dict[str, Any], device: str, dtype: str, attn_implementation: str | None = None,
                where: str | None = None, bare: bool = False) -> Any:
    """A transformers CausalLM built from `spec` (its HF config) holding `weights` ({canonical name: torch
    tensor}); an UnsupportedError (naming `where`) when HF cannot express the spec or the tensors do not fit."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from ..formats.hf import config_dict, from_canonical

    cfg = config_dict(spec)  # UnsupportedError when HF cannot express the architecture
    model_type = cfg.pop("model_type")
    for key in ("torch_dtype", "dtype", "architectures"):
        cfg.pop(key, None)
    config = AutoConfig.for_model(model_type, **cfg)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    with torch.device(device):
        model = (AutoModel if bare else AutoModelForCausalLM).from_config(config, dtype=torch_dtype(dtype))
    state = {from_canonical(n, spec.family): t for n, t in weights.items()}
    if bare:  # the decoder stack alone: its names lack the CausalLM's "model." (and there is no lm_head)
        state = {n.removeprefix("model."): t for n, t in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and spec.tied_embeddings)]
    if missing or unexpected:
        raise UnsupportedError(f"{where + ': ' if where else ''}tensors do not fit the transformers model "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model


def text_model(model: Any) -> Any:
    """The decoder stack (the module holding embed_tokens, layers and norm), for plain and multimodal
    models alike (Gemma3ForConditionalGeneration keeps it at model.language_model)."""
    for module in model.modules():
        if all(hasattr(module, a) for a in ("embed_tokens", "layers", "norm")):
            return module
    raise UnsupportedError(f"{type(model).__name__}: no decoder stack with embed_tokens, layers and norm")


class TransformersModel:
    """The transformers runtime's loaded model (a `runtimes.LoadedModel`)."""

    runtime = "transformers"

    def __init__(self, ckpt: Checkpoint, device: str, dtype: str, device_map: str | dict | None = None,
                 attn_implementation: str | None = None):
        start = time.perf_counter()
        self.source, self.device, self.dtype, self.spec = ckpt.source, device, dtype, ckpt.spec
        self.model = load_model(ckpt, device, dtype, device_map, attn_implementation)
        self.stack = text_model(self.model)
        self.load_seconds = time.perf_counter() - start

    def forward(self, token_ids: list[list[int]]) -> RuntimeResult:
        import torch

        start = time.perf_counter()
        stack = self.stack
        captured: dict[str, Any] = {}

        def keep(key: str):
            def hook(_module: Any, _args: Any, output: Any) -> None:
                # Decoder layers return a tensor in transformers 5 and a tuple (hidden, ...) in 4.x.
                captured[key] = to_cpu_float(main_output(output))
            return hook

        from .gemma3n import active_stream

        def keep_layer(key: str):
            def hook(_module: Any, _args: Any, output: Any) -> None:
                # Gemma 3n's layers return every AltUp stream [n, B, T, d]: the block's own is the active one
                captured[key] = to_cpu_float(active_stream(self.spec, main_output(output)))
            return hook

        handles = [stack.embed_tokens.register_forward_hook(keep("embed"))]  # the scaled embedding
        handles += [layer.register_forward_hook(keep_layer(f"layer{i}")) for i, layer in enumerate(stack.layers)]
        handles.append(stack.norm.register_forward_hook(keep("norm")))
        from .types import capture_routing, routing_of

        more, routed = capture_routing(stack.layers)  # experts' routing (Gemma 4), for parity
        handles += more
        try:
            ids = torch.as_tensor(token_ids, dtype=torch.long, device=stack.embed_tokens.weight.device)
            with torch.no_grad():
                out = self.model(input_ids=ids, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        n = len(stack.layers)
        hidden = [captured["embed"]] + [captured[f"layer{i}"] for i in range(n)] + [captured["norm"]]
        logits = to_cpu_float(out.logits) if getattr(out, "logits", None) is not None else None
        del out
        attn = getattr(self.model.config, "_attn_implementation", None)
        return RuntimeResult(logits=logits, hidden_states=hidden, runtime="transformers", device=self.device,
                             dtype=self.dtype, source=self.source,
                             seconds=self.load_seconds + time.perf_counter() - start,
                             notes=[f"attention implementation: {attn}"] if attn else [],
                             routing=routing_of(routed, n))

    def anatomy(self) -> Anatomy:
        stack = self.stack
        prefix = next(n for n, m in self.model.named_modules() if m is stack)
        head = self.model.get_output_embeddings()
        first = stack.layers[0].self_attn if len(stack.layers) else None
        return Anatomy(
            root=self.model, embedding=stack.embed_tokens, embedding_weight=stack.embed_tokens.weight,
            blocks=list(stack.layers), block_names=[f"{prefix}.layers.{i}" for i in range(len(stack.layers))],
            final_norm=stack.norm, output_weight=head.weight if head is not None else None,
            roles=HF_MODULE_ROLES, layouts=self._layouts(), head_dim=getattr(first, "head_dim", None))

    def _layouts(self) -> dict[str, str]:
        """HF's q/k/v layouts, with the q/k norms' as the family's transformers module sees them."""
        from ..families import FAMILY_TABLE

        row = FAMILY_TABLE.get(self.spec.family)
        qk = row.hf.qk_norm_layout if row is not None and row.hf is not None else "bhtd"
        return {**HF_MODULE_LAYOUTS, "q_norm": qk, "k_norm": qk}

    def close(self) -> None:
        device = self.device
        del self.model, self.stack
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()
