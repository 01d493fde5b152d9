"""The keras runtime: keras-hub's GemmaBackbone / Gemma3Backbone / Gemma4Backbone on keras' torch backend.

A Keras preset is loaded with `keras_hub.models.Backbone.from_preset`; any other checkpoint is built into
the equivalent backbone from its spec and canonical tensors (when keras-hub can express it at all).
The hidden states are collected by calling the backbone's layers in the order its functional graph
calls them (keras_hub/src/models/gemma*/gemma*_backbone.py), which exposes every point the other
runtimes report:

    x = token_embedding(token_ids) * cast(sqrt(hidden_dim), x.dtype)   # hidden_states[0]
    x = decoder_block_i(x, padding_mask=ones)                          # hidden_states[1 + i]
    x = layer_norm(x)                                                  # hidden_states[L + 1]
    logits = token_embedding(x, reverse=True)   # x @ E^T, then the final soft cap (Gemma 2)

Gemma4Backbone's blocks also take their slice of the per-layer inputs and, on KV-shared layers, the K/V of the layer
they reuse (`_gemma4_states`); a Gemma 4 checkpoint in another format is built from formats/keras_gemma4.py's plan.
KERAS_BACKEND is set to torch here, before keras is first imported, and only on this code path.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

from ..checkpoint import Checkpoint
from ..errors import UnsupportedError
from ..quiet import native_stderr_silenced
from .types import Anatomy, RuntimeResult, to_cpu_float


def import_keras() -> Any:
    """keras and keras_hub on the torch backend (an error if keras was already imported on another)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    # keras_hub imports tensorflow (for its preprocessing layers) even on the torch backend: keep its
    # C++ log lines off stderr, and keep it away from the GPU, which belongs to torch here.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with native_stderr_silenced("tensorflow" not in sys.modules):
        import keras
        import keras_hub  # noqa: F401

    if "tensorflow" in sys.modules:
        try:
            sys.modules["tensorflow"].config.set_visible_devices([], "GPU")
        except Exception:  # already initialised, or a build without GPU support: nothing to hide
            pass
    if keras.config.backend() != "torch":
        raise UnsupportedError(f"the keras runtime needs keras' torch backend, but keras is running on "
                               f"{keras.config.backend()!r} (set KERAS_BACKEND=torch)")
    return keras


# The mapping modules (a family row's KerasIds.mapping) whose backbones this runtime drives, with the forward pass
# that walks them; a backbone of formats/keras.py's own table (Gemma 1-3) is walked by KerasModel.forward itself.
MAPPED_FORWARDS: dict[str, str] = {"keras_gemma4": "_gemma4_states"}


def runs(family: str) -> bool:
    """Whether this runtime drives the family's keras-hub backbone layer by layer: the backbones of formats/keras.py's
    own table and those of MAPPED_FORWARDS (Gemma4Backbone; Gemma3nBackbone it does not drive yet)."""
    from ..families import FAMILY_TABLE

    row = FAMILY_TABLE.get(family)
    return row is not None and row.keras is not None and (row.keras.mapping is None
                                                          or row.keras.mapping in MAPPED_FORWARDS)


def _mapping_of(family: str) -> Any:
    """The formats module that maps the family's backbone (None: formats/keras.py's own table)."""
    import importlib

    from ..families import FAMILY_TABLE

    keras = FAMILY_TABLE[family].keras
    assert keras is not None
    return importlib.import_module(f"gemma_inspect.formats.{keras.mapping}") if keras.mapping else None


def load_backbone(ckpt: Checkpoint, dtype: str) -> Any:
    import keras_hub

    if not runs(ckpt.spec.family):
        from ..families import FAMILY_TABLE

        row = FAMILY_TABLE.get(ckpt.spec.family)
        what = f"{row.title} (keras-hub's {row.keras.backbone})" if row and row.keras else ckpt.spec.family
        raise UnsupportedError(f"{ckpt.source}: the keras runtime does not run {what} yet; use --runtime "
                               f"reference or transformers")
    if ckpt.format == "keras":
        return keras_hub.models.Backbone.from_preset(ckpt.source, dtype=dtype)
    from ..formats.keras import keras_problems

    problems = keras_problems(ckpt.spec)
    if problems:
        raise UnsupportedError(f"{ckpt.source}: keras-hub cannot run this checkpoint: {'; '.join(problems)}")
    if _mapping_of(ckpt.spec.family) is not None:
        return build_mapped_backbone(ckpt.spec.replace(dtype=dtype), ckpt.tensors)
    return build_backbone(ckpt.spec.replace(dtype=dtype), {name: ref.load for name, ref in ckpt.tensors.items()})


def build_mapped_backbone(spec: Any, refs: dict[str, Any]) -> Any:
    """A keras-hub backbone with a name table of its own (Gemma4Backbone), built from the config our writer would
    write and each variable assigned from its canonical tensor in the writer's layout (the mapping module's plan)."""
    import numpy as np

    from ..formats.hf import config_dict as hf_config_dict

    import_keras()
    import keras_hub

    mapping = _mapping_of(spec.family)
    cfg = mapping.keras_config(hf_config_dict(spec), spec.dtype)
    cls = getattr(keras_hub.models, cfg["class_name"])
    backbone = cls(dtype=spec.dtype, **{k: v for k, v in cfg["config"].items()
                                        if k not in ("name", "trainable", "dtype")})
    for _key, path, layer_name, shape, ref, layout in mapping.plan(spec, dict(refs)):
        arr = ref.load()
        arr = (layout.apply(arr) if layout is not None else arr).reshape(shape)
        mapping.backbone_variable(backbone, path, layer_name).assign(arr.astype(np.float32))
    return backbone


def build_backbone(spec: Any, tensors: dict[str, Callable[[], Any]]) -> Any:
    """A keras-hub backbone of `spec` (keras-hub's own class, built from our Keras config) with canonical tensors
    assigned, each loaded (`tensors[name]()`) and converted to Keras' layout one at a time."""
    import numpy as np

    from ..checkpoint import parse_canonical
    from ..formats.keras import config_dict, from_canonical_array

    import_keras()  # keras-hub on the torch backend, tensorflow's start-up noise kept off stderr
    import keras_hub

    cfg = config_dict(spec)
    cls = getattr(keras_hub.models, cfg["class_name"])
    kwargs = {k: v for k, v in cfg["config"].items() if k not in ("name", "trainable", "dtype")}
    backbone = cls(dtype=spec.dtype, **kwargs)
    for name, load in tensors.items():
        role, layer = parse_canonical(name)  # type: ignore[misc]
        _variable(backbone, role, layer).assign(from_canonical_array(spec, role, load()).astype(np.float32))
    return backbone


def _variable(backbone: Any, role: str, layer: int | None) -> Any:
    """The keras-hub variable that holds a canonical role (the H5 path of formats/keras.py, walked as attributes)."""
    from ..formats.keras import VAR_BY_ROLE

    if role == "embed":
        return backbone.token_embedding.embeddings
    if role == "final_norm":
        return backbone.layer_norm.weights[0]
    obj = backbone.transformer_layers[layer]
    for attr in VAR_BY_ROLE[role].path.split("/vars/")[0].split("/"):
        obj = getattr(obj, attr)
    return obj.weights[0]


class KerasModel:
    """The keras runtime's loaded backbone (a `runtimes.LoadedModel`).

    `attn_implementation="eager"` keeps every attention layer off keras-hub's fused kernel
    (`ops.dot_product_attention`, chosen on GPUs for models without a soft cap), so that its scores pass
    through its Softmax layer where `verify` can see them; the arithmetic is the same.
    """

    runtime = "keras"

    def __init__(self, ckpt: Checkpoint, device: str, dtype: str, attn_implementation: str | None = None):
        if attn_implementation not in (None, "eager"):
            raise UnsupportedError(f"the keras runtime has no attention implementation {attn_implementation!r} "
                                   f"(only 'eager')")
        self.keras = import_keras()
        start = time.perf_counter()
        self.source, self.device, self.dtype = ckpt.source, device, dtype
        with self.keras.device(device):
            self.backbone = load_backbone(ckpt, dtype)
        if attn_implementation == "eager":
            for block in self.backbone.transformer_layers:
                block.attention._use_fused_attention_op = _never
        self.load_seconds = time.perf_counter() - start

    def forward(self, token_ids: list[list[int]]) -> RuntimeResult:
        import numpy as np
        import torch
        from keras import ops

        start = time.perf_counter()
        backbone = self.backbone
        walk = MAPPED_FORWARDS.get(getattr(_mapping_of_backbone(backbone), "__name__", "").rsplit(".", 1)[-1])
        if walk is not None:
            with self.keras.device(self.device), torch.no_grad():
                ids = ops.convert_to_tensor(np.asarray(token_ids, dtype="int32"))
                logits, hidden = globals()[walk](backbone, ids)
            return RuntimeResult(logits=logits, hidden_states=hidden, runtime="keras", device=self.device,
                                 dtype=self.dtype, source=self.source,
                                 seconds=self.load_seconds + time.perf_counter() - start)
        with self.keras.device(self.device):
            ids = ops.convert_to_tensor(np.asarray(token_ids, dtype="int32"))
            padding_mask = ops.ones_like(ids)  # one unpadded sequence per row
            gemma3 = type(backbone).__name__ == "Gemma3Backbone"
            with torch.no_grad():
                x = backbone.token_embedding(ids)
                # Gemma's scale, cast to the activation dtype first (45.25 for d = 2048 in bfloat16).
                x = x * ops.cast(ops.sqrt(backbone.hidden_dim), x.dtype)
                hidden = [to_cpu_float(x)]
                for block in backbone.transformer_layers:
                    if gemma3:  # text only: no vision mask
                        x = block(x, padding_mask=padding_mask, vision_mask=None)
                    else:
                        x = block(x, padding_mask=padding_mask)
                    hidden.append(to_cpu_float(x))
                x = backbone.layer_norm(x)
                hidden.append(to_cpu_float(x))
                logits = to_cpu_float(backbone.token_embedding(x, reverse=True))
        del x
        return RuntimeResult(logits=logits, hidden_states=hidden, runtime="keras", device=self.device,
                             dtype=self.dtype, source=self.source,
                             seconds=self.load_seconds + time.perf_counter() - start)

    def anatomy(self) -> Anatomy:
        bb = self.backbone
        emb = bb.token_embedding
        out = emb.embeddings if getattr(emb, "tie_weights", True) else emb.reverse_embeddings
        blocks = list(bb.transformer_layers)
        return Anatomy(
            root=bb, embedding=emb, embedding_weight=emb.embeddings.value, blocks=blocks,
            block_names=[b.name for b in blocks], final_norm=bb.layer_norm, output_weight=out.value,
            roles=KERAS_ROLES, layouts=KERAS_LAYOUTS, head_dim=getattr(bb, "head_dim", None))

    def close(self) -> None:
        device = self.device
        del self.backbone
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()


def _never() -> bool:
    return False


def _mapping_of_backbone(backbone: Any) -> Any:
    """The formats module that maps a built backbone's class (by the family rows' KerasIds), or None."""
    from ..families import FAMILY_TABLE

    for row in FAMILY_TABLE.values():
        if row.keras is not None and row.keras.backbone == type(backbone).__name__:
            return _mapping_of(row.key)
    return None


def _gemma4_states(backbone: Any, ids: Any) -> tuple[Any, list[Any]]:
    """Gemma4Backbone's text path, as its functional graph runs it (keras_hub/src/models/gemma4/gemma4_backbone.py),
    with the hidden state after the embedding and after every block: per-layer inputs (the layer's slice of the
    normed projection plus its token embedding, times 2^-0.5) and the K/V of the layer a KV-shared block reuses."""
    from keras import ops

    x = backbone.token_embedding(ids)
    hpl = backbone.hidden_size_per_layer_input
    per_emb = None
    if hpl > 0:
        per_emb = backbone.per_layer_token_embedding(ids)
        per_emb = ops.cast(per_emb, x.dtype) * ops.cast(float(hpl) ** 0.5, x.dtype)
    x = x * ops.cast(ops.sqrt(backbone.hidden_dim), x.dtype)
    per_proj = None
    if hpl > 0:
        per_proj = backbone.per_layer_model_projection(x) * ops.cast(float(backbone.hidden_dim) ** -0.5, x.dtype)
    mask = ops.ones_like(ids)
    positions = ops.broadcast_to(ops.expand_dims(ops.arange(ops.shape(ids)[1], dtype="int32"), 0), ops.shape(ids))
    hidden = [to_cpu_float(x)]
    caches: dict[int, Any] = {}
    for i, block in enumerate(backbone.transformer_layers):
        per_input = None
        if per_proj is not None:
            proj = backbone.per_layer_projection_norm(per_proj[:, :, i * hpl:(i + 1) * hpl])
            per_input = (proj + per_emb[:, :, i * hpl:(i + 1) * hpl]) * ops.cast(2.0 ** -0.5, proj.dtype)
        shared = None
        if getattr(block, "is_kv_shared_layer", False) and block.kv_shared_layer_index is not None:
            shared = caches.get(block.kv_shared_layer_index)
        x, caches[i] = block(x, padding_mask=mask, vision_mask=None, per_layer_input=per_input, shared_kv=shared,
                             positions=positions)
        hidden.append(to_cpu_float(x))
    x = backbone.layer_norm(x)
    hidden.append(to_cpu_float(x))
    return to_cpu_float(backbone.token_embedding(x, reverse=True)), hidden


# Where `verify` finds each part of a keras-hub decoder block. The FFN is no layer of its own: the block
# calls gating_ffw (gate), gating_ffw_2 (up), the GELU and ffw_linear (down) itself. EinsumDense layers
# give [B, T, heads, D] for q, k and v, and the Gemma 3 query/key norms act in that layout.
KERAS_ROLES = {"attention": "attention", "q": "attention.query_dense", "k": "attention.key_dense",
               "v": "attention.value_dense", "o": "attention.output_dense", "q_norm": "attention.query_norm",
               "k_norm": "attention.key_norm", "gate": "gating_ffw", "up": "gating_ffw_2", "down": "ffw_linear"}
KERAS_LAYOUTS = {"q": "bthd", "k": "bthd", "v": "bthd", "q_norm": "bthd", "k_norm": "bthd"}
