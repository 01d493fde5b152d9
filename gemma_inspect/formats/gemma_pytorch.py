"""gemma_pytorch (Google's reference PyTorch implementation): a `.ckpt` pickle, or a directory of shards.

`torch.load(path, weights_only=True, mmap=True)["model_state_dict"]` holds tensors named like HF's, except
the embedding (`embedder.weight`), the fused `self_attn.qkv_proj.weight` (rows q | k | v, split with explicit
sizes H*D, K*D, K*D: equal thirds are only right when K = H) and Gemma 3's `query_norm`/`key_norm`.
The sharded form is `pytorch_model.bin.index.json` + shards that are plain state dicts. Unpickling is
always `weights_only=True`: a pickle that references anything but tensors and plain containers is
refused and nothing in it runs.

The file stores no configuration. The architecture version comes from the tensors present (post-FFN norms:
Gemma 2 or 3; query/key norms: Gemma 3), sizes from shapes, and what shapes cannot tell (head_dim of Gemma 1
and 2, sliding window, soft caps, query_pre_attn_scalar, RoPE, context length) from, in order:
  1. the configuration our writer embeds in the pickle (key "gemma_inspect": {"config": HF config.json dict});
  2. a `gemma_inspect.json` or `config.json` next to the checkpoint, in HF config.json spelling (any subset of
     keys, e.g. {"head_dim": 256, "query_pre_attn_scalar": 144, "sliding_window": 4096});
  3. the published model of the same family and shape (the built-in cards);
  4. the family's defaults.
Every value taken from 3 or 4 is listed in a note and in `Checkpoint.assumed`.
"""

from __future__ import annotations

import functools
import os
import re
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np

from ..checkpoint import (Checkpoint, TensorRef, canonical_name, check_against_spec, compile_names, expected_tensors,
                          match_name)
from ..errors import InputError, UnsupportedError
from ..families import FAMILY_TABLE, Family, by_hf_model_type
from ..families import family as family_row
from ..roles import role as role_row
from ..spec import GemmaSpec, card, card_of_shape, make_spec
from .common import check_member, most_common, read_json_object, safe_child
# The torch machinery (safe unpickling, zip and legacy containers, storages, the streaming writer) is its own
# module; the names below are the ones this mapping uses.
from .torch_pickle import (TORCH_FLOAT_NAMES, StorageStub, TensorStub, check_state_dict, save_streaming, to_numpy,
                           torch_load)

STATE_KEY = "model_state_dict"
EXTRA_KEY = "gemma_inspect"  # our writer's self-description; gemma_pytorch's loader never looks at it
INDEX = "pytorch_model.bin.index.json"
SIDE_CONFIGS = ("gemma_inspect.json", "config.json")
QKV = "model.layers.{i}.self_attn.qkv_proj.weight"

# canonical role -> gemma_pytorch name (gemma/model.py). q, k and v live together in QKV.
NAMES: dict[str, str] = {
    "embed": "embedder.weight",
    "final_norm": "model.norm.weight",
    "attn_norm": "model.layers.{i}.input_layernorm.weight",
    "post_attn_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "ffn_norm": "model.layers.{i}.pre_feedforward_layernorm.weight",
    "post_ffn_norm": "model.layers.{i}.post_feedforward_layernorm.weight",
    "o": "model.layers.{i}.self_attn.o_proj.weight",
    "q_norm": "model.layers.{i}.self_attn.query_norm.weight",
    "k_norm": "model.layers.{i}.self_attn.key_norm.weight",
    "gate": "model.layers.{i}.mlp.gate_proj.weight",
    "up": "model.layers.{i}.mlp.up_proj.weight",
    "down": "model.layers.{i}.mlp.down_proj.weight",
}
# gemma_pytorch's architecture (config.architecture: the family row's `gemma_pytorch` marker) -> its names where
# they differ from NAMES: Gemma 1's decoder layer calls its pre-FFN norm `post_attention_layernorm` (it has no
# post-attention norm). Which roles a family has at all follows its rules (roles.PRESENCE).
NAME_OVERRIDES: dict[str, dict[str, str]] = {
    "GEMMA_1": {"ffn_norm": "model.layers.{i}.post_attention_layernorm.weight"},
}
QKV_ROLES = ("q", "k", "v")
# The multimodal Gemma3ForMultimodalLM keeps the text embedding under another name.
EMBED_ALIASES = ("text_token_embedder.weight",)
# Rotary tables are buffers recomputed from the spec; the vision tower is not part of the text decoder.
BUFFER_PATTERN = re.compile(r"(^|\.)(local_|global_)?freqs_cis$")
VISION_PREFIXES = ("siglip_vision_model.", "mm_soft_embedding_norm.", "mm_input_projection.")
SCALER_SUFFIX = ".weight_scaler"  # int8 checkpoints (quant=True): weight = int8 * scaler[:, None]


def _layout(row: Family) -> Any:
    """What the role table's presence rules read, from the family's rules (gemma_pytorch norms have weights)."""
    r = row.rules
    return SimpleNamespace(norm_kind="rmsnorm", norm_placement=r.norm_placement, qk_norm=r.qk_norm,
                           tied_embeddings=r.tied_embeddings)


def names_for(family_key: str) -> dict[str, str]:
    """The name table of a family: the shared rows with its gemma_pytorch architecture's overrides applied, for
    the roles its layout has."""
    row = family_row(family_key)
    merged = {**NAMES, **NAME_OVERRIDES.get(row.gemma_pytorch or "", {})}
    return {k: t for k, t in merged.items() if role_row(k).applies(_layout(row))}


@functools.lru_cache(maxsize=None)
def _reverse(family_key: str) -> list[tuple[str, re.Pattern[str]]]:
    return compile_names(names_for(family_key))  # derived, not written twice: gemma_pytorch name -> role


def _suffix(role_key: str) -> str:
    return NAMES[role_key].rsplit("{i}.", 1)[-1]  # model.layers.{i}.self_attn.query_norm.weight -> self_attn...


def _family_of(names: Any) -> Family:
    """The family whose layout the tensor names show (the file stores no configuration): pre- or post-FFN norms
    mean sandwich norms (pre+post), query norms then QK-norm; the row of gemma_pytorch's with those rules."""
    sandwich = any(k.endswith((_suffix("post_ffn_norm"), _suffix("ffn_norm"))) for k in names)
    qk_norm = sandwich and any(k.endswith(_suffix("q_norm")) for k in names)
    rows = [f for f in FAMILY_TABLE.values() if f.gemma_pytorch]
    want = ("pre+post" if sandwich else "pre", qk_norm)
    return next((f for f in rows if (f.rules.norm_placement, f.rules.qk_norm) == want), rows[0])


def _role_of(name: str, family_key: str) -> tuple[str, int | None] | None:
    if name in EMBED_ALIASES:
        return "embed", None
    found = match_name(_reverse(family_key), name)
    if found is not None:
        return found
    m = re.match(r"^model\.layers\.(\d{1,6})\.self_attn\.qkv_proj\.weight$", name)
    if m:
        return "qkv", int(m.group(1))
    return None


def _state_of(obj: Any, path: str, sharded: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(state dict, our embedded description) of one loaded pickle; anything but str -> tensor is refused."""
    extra = None
    if isinstance(obj, dict) and STATE_KEY in obj:
        state = obj[STATE_KEY]
        extra = obj.get(EXTRA_KEY)
        if extra is not None and not isinstance(extra, dict):
            raise InputError(path, f"{EXTRA_KEY!r} must be a dict, got {type(extra).__name__}")
    elif sharded and isinstance(obj, dict):
        state = obj
    else:
        keys = f" with keys {list(obj)[:5]}" if isinstance(obj, dict) else ""
        raise InputError(path, f"not a gemma_pytorch checkpoint: expected a dict with {STATE_KEY!r}, got "
                               f"{type(obj).__name__}{keys}")
    if not isinstance(state, dict):
        raise InputError(path, f"{STATE_KEY!r} must be a dict of tensors, got {type(state).__name__}")
    check_state_dict(state, path)
    return state, extra


def _checkpoint_files(path: str) -> tuple[list[str], bool, str]:
    """(pickle files, sharded?, the path messages name for the tensors)."""
    if not os.path.isdir(path):
        return [path], False, path
    index = os.path.join(path, INDEX)
    if os.path.isfile(index):
        wm = read_json_object(index, "index").get("weight_map")
        if not isinstance(wm, dict) or not wm:
            raise InputError(index, "has no weight_map (a name -> shard file object)")
        files = []
        for fname in dict.fromkeys(wm.values()):
            full = safe_child(path, fname, index)
            if not os.path.isfile(full):
                raise InputError(index, f"names shard {fname!r}, which does not exist")
            files.append(full)
        return files, True, index
    ckpts = sorted(e for e in os.listdir(path) if e.endswith(".ckpt"))
    if len(ckpts) != 1:
        raise InputError(path, f"expected one .ckpt file or {INDEX} in this directory, found "
                               f"{len(ckpts)} .ckpt files")
    return [os.path.join(path, ckpts[0])], False, os.path.join(path, ckpts[0])


def _dtype_name(t: Any, path: str, name: str) -> str:
    d = TORCH_FLOAT_NAMES.get(str(t.dtype))
    if d is None:
        raise InputError(path, f"tensor {name!r} has dtype {str(t.dtype).replace('torch.', '')}; expected "
                               f"float32, bfloat16 or float16 (or int8 with a weight_scaler)")
    return d


def _ref(canonical: str, tensor: Any, path: str, stored: str, rows: slice | None = None,
         scaler: Any = None) -> TensorRef:
    import torch

    shape = tuple(tensor.shape) if rows is None else (rows.stop - rows.start, *tensor.shape[1:])
    origin = f"{path}:{stored}" + (f"[{rows.start}:{rows.stop}]" if rows is not None else "")
    if tensor.dtype == torch.int8:
        if scaler is None:
            raise InputError(path, f"tensor {stored!r} is int8 but {stored.rsplit('.', 1)[0]}.weight_scaler is missing")
        if tuple(scaler.shape) != tuple(tensor.shape[:1]) or not scaler.dtype.is_floating_point:
            raise InputError(path, f"{stored.rsplit('.', 1)[0]}.weight_scaler is {str(scaler.dtype)[6:]} "
                                   f"{list(scaler.shape)}; expected one float per row of {stored} "
                                   f"({tensor.shape[0]})")
        # gemma_pytorch's quant=True: w = int8 * weight_scaler[:, None] (one scale per output row).
        nbytes = int(np.prod(shape)) + 4 * shape[0]

        def load_int8() -> np.ndarray:
            q = tensor if rows is None else tensor[rows]
            s = scaler if rows is None else scaler[rows]
            return (q.to(torch.float32) * s.to(torch.float32).unsqueeze(-1)).numpy()

        return TensorRef(canonical, shape, "int8", load_int8, nbytes=nbytes, origin=origin)
    dtype = _dtype_name(tensor, path, stored)

    def load() -> np.ndarray:
        return to_numpy(tensor if rows is None else tensor[rows])

    def chunks(size: int) -> Iterator[memoryview]:
        view = memoryview(np.ascontiguousarray(load()).reshape(-1).view(np.uint8))  # bfloat16 has no buffer code
        for i in range(0, len(view), size):
            yield view[i:i + size]

    nbytes = int(np.prod(shape)) * tensor.element_size()
    return TensorRef(canonical, shape, dtype, load, nbytes=nbytes, origin=origin, chunks=chunks)


# ----------------------------------------------------------------------------- shapes -> spec
DEFAULT_HEAD_DIM = 256  # every published Gemma but the Gemma 2/3 27B models (128)


def _card_config(spec: GemmaSpec) -> dict[str, Any]:
    """The values of a spec that shapes cannot tell, in HF config spelling (the keys the family's config has)."""
    hf = family_row(spec.family).hf
    cfg: dict[str, Any] = {"head_dim": spec.head_dim, "max_position_embeddings": spec.max_position_embeddings,
                           "rope_theta": spec.rope_theta}
    if hf is not None and hf.windowed_keys:
        cfg.update(query_pre_attn_scalar=spec.query_pre_attn_scalar, sliding_window=spec.sliding_window,
                   attn_logit_softcapping=spec.attention_logit_softcap,
                   final_logit_softcapping=spec.final_logit_softcap)
    if hf is not None and hf.rope == "per_layer_type":
        cfg["rope_local_base_freq"] = spec.local_rope_theta
        if spec.rope_scaling_factor != 1.0:
            cfg["rope_scaling"] = {"rope_type": "linear", "factor": spec.rope_scaling_factor}
    return cfg


def _family_config(row: Family) -> dict[str, Any]:
    """What shapes cannot tell, from the family's row (its defaults and rules, as make_spec applies them), in HF
    config spelling, for a checkpoint of no published shape. head_dim: DEFAULT_HEAD_DIM, unless the query norm's
    shape tells it; query_pre_attn_scalar follows head_dim (set by the caller)."""
    spec = make_spec(row.key, vocab_size=1, hidden_size=1, num_layers=1, num_attention_heads=1, num_key_value_heads=1,
                     head_dim=DEFAULT_HEAD_DIM, intermediate_size=1)  # sizes: placeholders, not read
    cfg = _card_config(spec)
    cfg.pop("query_pre_attn_scalar", None)
    if row.rules.qk_norm:
        cfg.pop("head_dim")
    if row.hf is not None and row.hf.rope == "per_layer_type":
        cfg.setdefault("rope_scaling", None)  # none: said, since a published model of the family may scale
    return cfg


def _matching_card(family_key: str, hidden: int, layers: int, ffn: int, q_out: int, kv_out: int) -> str | None:
    """The published model of this family and shape (query and key/value widths included), if any."""
    name = card_of_shape(family_key, hidden_size=hidden, num_layers=layers, intermediate_size=ffn)
    if name is None:
        return None
    c = card(name)
    return name if (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim) == (q_out, kv_out) else None


def _side_config(path: str) -> tuple[dict[str, Any], str | None]:
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for name in SIDE_CONFIGS:
        p = os.path.join(directory, name)
        check_member(directory, name)  # a .ckpt given as a file: its siblings are checked here, not in detect()
        if os.path.isfile(p):
            return read_json_object(p, name), p
    return {}, None


def _spec(family: str, shapes: dict[str, tuple[int, ...]], dtype: str, path: str, extra: dict[str, Any] | None,
          notes: list[str]) -> tuple[GemmaSpec, frozenset[str]]:
    from .hf import spec_from_config

    emb = shapes["embed"]
    vocab, hidden = emb
    layers = 1 + max(int(n.split(".")[2]) for n in shapes if n.startswith("model.layers."))
    q_out = shapes[NAMES["o"].format(i=0)][1]
    qkv_rows = shapes[QKV.format(i=0)][0]
    kv_out2 = qkv_rows - q_out
    ffn = shapes[NAMES["gate"].format(i=0)][0]
    if kv_out2 <= 0 or kv_out2 % 2:
        raise InputError(path, f"qkv_proj has {qkv_rows} rows and o_proj {q_out} columns: the rows left for k and "
                               f"v ({kv_out2}) cannot be split in two")
    kv_out = kv_out2 // 2

    if extra is not None and isinstance(extra.get("config"), dict):
        cfg = dict(extra["config"])  # written by us: complete
        spec, cfg_notes = spec_from_config(cfg, f"{path} ({EXTRA_KEY} config)", dtype)
        notes.extend(cfg_notes)
        return spec, frozenset()

    side, side_path = _side_config(path)
    if side.get("model_type") is not None and by_hf_model_type(side["model_type"]) is None:
        raise InputError(side_path, f"model_type {side.get('model_type')!r} does not match this {family} checkpoint")
    side = {k: v for k, v in side.items() if k != "model_type"}
    row = family_row(family)
    hf = row.hf
    if hf is None:  # pragma: no cover - every family with a gemma_pytorch marker has HF identifiers
        raise UnsupportedError(f"{family} has no HF configuration to describe it")
    base: dict[str, Any] = {"model_type": hf.model_type, "vocab_size": vocab, "hidden_size": hidden,
                            "num_hidden_layers": layers, "intermediate_size": ffn,
                            "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
                            "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "dtype": dtype}
    qn = NAMES["q_norm"].format(i=0)
    matched = _matching_card(family, hidden, layers, ffn, q_out, kv_out)
    assumed_from: dict[str, Any] = {}
    if matched:
        assumed_from = _card_config(card(matched))
        source = f"the published {matched}"
    else:
        assumed_from = _family_config(row)
        source = f"{family} defaults"
    if qn in shapes:  # Gemma 3's query norm runs over head_dim: the shape tells
        base["head_dim"] = shapes[qn][0]
        assumed_from.pop("head_dim", None)
    head_dim = side.get("head_dim", base.get("head_dim", assumed_from.get("head_dim")))
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim <= 0 \
            or q_out % head_dim or kv_out % head_dim:
        raise InputError(side_path or path, f"head_dim {head_dim!r} does not divide the query width {q_out} and the "
                                            f"key/value width {kv_out}; give the right head_dim in a "
                                            f"{SIDE_CONFIGS[0]} next to the checkpoint")
    base["num_attention_heads"] = q_out // head_dim
    base["num_key_value_heads"] = kv_out // head_dim
    if hf.windowed_keys and "query_pre_attn_scalar" not in assumed_from:
        assumed_from["query_pre_attn_scalar"] = head_dim
    cfg = {**base, **assumed_from, **side}
    cfg["head_dim"] = head_dim
    taken = sorted(k for k in assumed_from if k not in side and k not in base)
    if taken:
        notes.append(f"gemma_pytorch checkpoints store no configuration: {', '.join(f'{k}={cfg[k]}' for k in taken)} "
                     f"assumed from {source}" + (f" ({side_path} gave the rest)" if side_path else
                                                 f"; put the right values in a {SIDE_CONFIGS[0]} next to the "
                                                 f"checkpoint (HF config.json keys) to override"))
    elif side_path:
        notes.append(f"configuration read from {side_path}")
    spec, cfg_notes = spec_from_config(cfg, side_path or path, dtype)
    notes.extend(n for n in cfg_notes if "declares no dtype" not in n)
    to_field = {"head_dim": "head_dim", "max_position_embeddings": "max_position_embeddings",
                "rope_theta": "rope_theta", "rope_local_base_freq": "rope_local_theta",
                "rope_scaling": "rope_scaling_factor", "query_pre_attn_scalar": "query_pre_attn_scalar",
                "sliding_window": "sliding_window", "attn_logit_softcapping": "attention_logit_softcap",
                "final_logit_softcapping": "final_logit_softcap"}
    # rms_norm_eps is 1e-6 in every Gemma and no file says so: assumed, not worth a note.
    assumed = {to_field[k] for k in taken if k in to_field} | ({"rms_norm_eps"} - set(side))
    return spec, frozenset(assumed)


# ----------------------------------------------------------------------------- reading
def read(path: str) -> Checkpoint:
    files, sharded, where = _checkpoint_files(path)
    state: dict[str, tuple[Any, str]] = {}
    extra = None
    for f in files:
        obj = torch_load(f)
        sd, ex = _state_of(obj, f, sharded)
        extra = extra if ex is None else ex
        for k, v in sd.items():
            if k in state:
                raise InputError(f, f"tensor {k!r} is also stored in {state[k][1]}")
            state[k] = (v, f)
    notes: list[str] = []
    ignored: dict[str, tuple[tuple[int, ...], str]] = {}
    family = _family_of(state).key
    vision = 0
    dropped = []
    tensors_by_name: dict[str, Any] = {}
    for k, (v, f) in state.items():
        if BUFFER_PATTERN.search(k):
            dropped.append(k)
            ignored[k] = (tuple(v.shape), str(v.dtype).replace("torch.", ""))
        elif k.startswith(VISION_PREFIXES):
            vision += 1
            ignored[k] = (tuple(v.shape), str(v.dtype).replace("torch.", ""))
        elif not k.endswith(SCALER_SUFFIX):
            tensors_by_name[k] = (v, f)
    if dropped:
        notes.append(f"rotary tables dropped ({', '.join(sorted(dropped))}): they are recomputed from the spec")
    if vision:
        notes.append(f"multimodal Gemma 3: {vision} vision tensors reported and ignored; only the text decoder is read")

    # Roles, then shapes for the spec.
    located: dict[str, tuple[str, int | None, Any, str, str]] = {}  # gp name -> (role, layer, tensor, file, name)
    for k, (v, f) in tensors_by_name.items():
        rl = _role_of(k, family)
        if rl is None:
            raise InputError(f, f"tensor {k!r} is not part of a gemma_pytorch {family} checkpoint")
        if str(v.dtype) != "torch.int8":
            _dtype_name(v, f, k)  # float32, bfloat16 or float16, or an InputError naming the tensor
        located[k] = (rl[0], rl[1], v, f, k)
    shapes = {}
    for k, (role, layer, v, _f, _n) in located.items():
        shapes["embed" if role == "embed" else k] = tuple(v.shape)
    for needed in ("embed", NAMES["o"].format(i=0), QKV.format(i=0), NAMES["gate"].format(i=0)):
        if needed not in shapes:
            raise InputError(where, f"no {NAMES['embed'] if needed == 'embed' else needed} tensor: not a "
                                    f"gemma_pytorch Gemma checkpoint")
        if len(shapes[needed]) != 2:  # the spec is read from these shapes
            raise InputError(where, f"{NAMES['embed'] if needed == 'embed' else needed} has shape "
                                    f"{list(shapes[needed])}; expected a matrix")
    weight_dtypes = [TORCH_FLOAT_NAMES.get(str(v.dtype)) for (_r, _l, v, _f, _n) in located.values()]
    float_dtypes = [d for d in weight_dtypes if d]
    dtype = most_common(float_dtypes) or "float32"
    if len(float_dtypes) != len(weight_dtypes):
        notes.append("int8 weights (gemma_pytorch quant=True) are dequantized with their weight_scaler to float32")
        dtype = "float32"
    spec, assumed = _spec(family, shapes, dtype, path, extra, notes)

    tensors: dict[str, TensorRef] = {}
    q_out = spec.num_attention_heads * spec.head_dim
    kv_out = spec.num_key_value_heads * spec.head_dim
    for k, (role, layer, v, f, stored) in located.items():
        scaler = state.get(k.rsplit(".", 1)[0] + SCALER_SUFFIX, (None,))[0]
        if role == "qkv":
            if v.shape[0] != q_out + 2 * kv_out:
                raise InputError(f, f"{k} has {v.shape[0]} rows; the spec implies (H + 2K) * D = "
                                    f"{q_out} + 2 x {kv_out}")
            # Rows are q | k | v with sizes H*D, K*D, K*D (equal thirds only when K = H).
            bounds = {"q": slice(0, q_out), "k": slice(q_out, q_out + kv_out),
                      "v": slice(q_out + kv_out, q_out + 2 * kv_out)}
            for r in QKV_ROLES:
                name = canonical_name(r, layer)
                tensors[name] = _ref(name, v, f, stored, bounds[r], scaler)
        else:
            name = canonical_name(role, layer)
            if name in tensors:
                raise InputError(f, f"two tensors map to {name} ({stored})")
            tensors[name] = _ref(name, v, f, stored, None, scaler)
    check_against_spec(spec, tensors, where, where)
    ordered = {n: tensors[n] for n in expected_tensors(spec)}
    tokenizer = _tokenizer(path, extra)
    return Checkpoint(spec=spec, tensors=ordered, source=path, format="gemma-pytorch", tokenizer=tokenizer,
                      notes=notes, ignored=ignored, config=dict(extra.get("config", {})) if extra else {},
                      files=files, assumed=assumed)


def _tokenizer(path: str, extra: dict[str, Any] | None) -> Any:
    from ..tokenizer import Tokenizer

    if extra is not None and isinstance(extra.get("tokenizer.model"), bytes):
        return Tokenizer(source=path, spm_bytes=extra["tokenizer.model"])
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for rel in ("tokenizer.model", os.path.join("tokenizer", "tokenizer.model")):
        p = os.path.join(directory, rel)
        check_member(directory, rel)
        if os.path.isfile(p):
            return Tokenizer(source=directory, spm_path=p)
    return None


def write(ckpt: Checkpoint, dest: str, options: Any, progress: Callable[[int], None]) -> None:
    """Write a `.ckpt` that gemma_pytorch's `load_weights` accepts: {"model_state_dict": {...}} with the fused
    qkv_proj, plus our configuration and tokenizer under "gemma_inspect" (which gemma_pytorch ignores).
    Streams one tensor at a time."""
    from ..tensorio import cast_array
    from .safetensors_io import ITEMSIZE
    from .hf import config_dict

    spec = ckpt.spec
    row = FAMILY_TABLE.get(spec.family)
    if row is None or row.gemma_pytorch is None:
        why = row.refusals.get("gemma_pytorch") if row is not None else None  # the family's own reason, if any
        raise UnsupportedError(f"{spec.family} checkpoints cannot be written as gemma_pytorch"
                               + (f": {why}" if why else ""))
    if not spec.tied_embeddings:
        raise UnsupportedError("gemma_pytorch always uses the embedding as the output projection; this checkpoint "
                               "has a separate lm_head")
    cfg = config_dict(spec)  # refuses what the family layout cannot express

    out_dtype = options.float_dtype
    names = names_for(spec.family)
    state: dict[str, TensorStub] = {}
    records: list[tuple[str, int, Callable[[], np.ndarray]]] = []

    def add(name: str, shape: tuple[int, ...], dtype: str, produce: Callable[[], np.ndarray]) -> None:
        key = str(len(records))
        numel = int(np.prod(shape))
        state[name] = TensorStub(StorageStub(key, dtype, numel), shape)
        records.append((key, numel * ITEMSIZE[dtype], produce))

    def cast(ref: TensorRef, dtype: str) -> Callable[[], np.ndarray]:
        return lambda: cast_array(ref.load(), dtype)  # quantized refs load as float32

    emb = ckpt.tensors[canonical_name("embed", None)]
    add(names["embed"], tuple(emb.shape), out_dtype(emb), cast(emb, out_dtype(emb)))
    for i in range(spec.num_layers):
        for role in _layer_roles_in_order(spec):
            if role == "qkv":
                refs = [ckpt.tensors[canonical_name(r, i)] for r in QKV_ROLES]
                dtype = out_dtype(refs[0])
                rows = sum(r.shape[0] for r in refs)
                add(QKV.format(i=i), (rows, spec.hidden_size), dtype,
                    lambda refs=refs, dtype=dtype: np.concatenate([cast(r, dtype)() for r in refs], axis=0))
            else:
                ref = ckpt.tensors[canonical_name(role, i)]
                add(names[role].format(i=i), tuple(ref.shape), out_dtype(ref), cast(ref, out_dtype(ref)))
    norm = ckpt.tensors[canonical_name("final_norm", None)]
    add(names["final_norm"], tuple(norm.shape), out_dtype(norm), cast(norm, out_dtype(norm)))

    extra: dict[str, Any] = {"config": cfg}
    tok = ckpt.tokenizer
    model_bytes = None
    if tok is not None:
        model_bytes, _rebuilt = tok.spm_or_rebuilt()
    if model_bytes is not None:
        extra["tokenizer.model"] = model_bytes
        options.notes.append(f"the SentencePiece model is embedded in the .ckpt under {EXTRA_KEY!r} "
                             f"(gemma_pytorch itself loads tokenizer.model from the path its config names)")
    elif tok is not None:
        options.notes.append("the source tokenizer has no SentencePiece model and none could be rebuilt: "
                             "no tokenizer written")
    else:
        options.notes.append("the source has no tokenizer: weights and configuration written, no tokenizer")
    save_streaming(dest, {STATE_KEY: state, EXTRA_KEY: extra}, records, progress)


def _layer_roles_in_order(spec: GemmaSpec) -> list[str]:
    from ..checkpoint import layer_roles

    out: list[str] = []
    for role in layer_roles(spec):
        if role in QKV_ROLES:
            if "qkv" not in out:
                out.append("qkv")
        else:
            out.append(role)
    return out


# ----------------------------------------------------------------------------- the format contract (common.FormatInfo)
from .common import FormatInfo  # noqa: E402

FORMAT = FormatInfo(
    name="gemma-pytorch", title="gemma_pytorch", description="a gemma_pytorch .ckpt", stores_quantization=False,
    native_runtime=None,
    member_files=(INDEX, *SIDE_CONFIGS, "tokenizer.model", os.path.join("tokenizer", "tokenizer.model")),
    weight_files=(INDEX,), weight_suffixes=(".ckpt",), file_suffixes=(".ckpt", ".pt", ".pth", ".bin"))
