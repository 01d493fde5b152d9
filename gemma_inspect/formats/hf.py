"""Hugging Face directories: config.json + model.safetensors (or shards with an index), tokenizer files.

Reading touches only config.json, the safetensors headers and the index; tensor bytes are read lazily.
Supported model_type: every HF model_type of a family row (families.py): gemma, gemma2, gemma3_text, and
gemma3 (multimodal: the text decoder is read, the vision tower is reported and ignored). What differs between
families (activation key, RoPE spelling, window keys, name overrides, transformers' defaults) is read from the
row, never from the family's name.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Any, Callable

from ..checkpoint import (FLOAT_DTYPES, ROLES, Checkpoint, TensorRef, canonical_name, check_against_spec,
                          compile_names, fill_name, match_name, parse_canonical)
from ..errors import InputError, UnsupportedError
from ..families import FAMILY_TABLE, FULL, SLIDING, Family, by_hf_model_type, hf_model_types
from ..spec import GemmaSpec, make_spec
from .common import (MAX_LAYERS, most_common, opt_float, read_json_object, read_weight_map, require_int, safe_child,
                     show)
from . import sentence_transformers as st
from .safetensors_io import StEntry, read_array, read_header


# HF activation strings -> spec activation
ACTIVATION_OF_HF = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
                    "gelu": "gelu", "silu": "silu", "swish": "silu"}

# Canonical names are HF's names; a family row's `hf.name_overrides` holds where its HF names differ (Gemma 1:
# its pre-FFN norm is called `post_attention_layernorm`, having no post-attention norm at all).


def _overrides(family: str) -> dict[str, str]:
    row = FAMILY_TABLE.get(family)
    return row.hf.name_overrides if row is not None and row.hf is not None else {}


def _override_patterns(family: str) -> list[Any]:
    return _compiled(tuple(_overrides(family).items()))


@lru_cache(maxsize=None)
def _compiled(table: tuple[tuple[str, str], ...]) -> list[Any]:
    return compile_names(dict(table))

# Prefixes of a multimodal Gemma 3 checkpoint: on disk (transformers 4) and in memory (transformers 5).
TEXT_PREFIXES = (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
                 ("model.language_model.", "model."))
VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                   "model.multi_modal_projector.")

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
ST_FILES = st.MEMBER_FILES  # a sentence-transformers directory's own files (modules.json, ...)


def hf_name(role: str, family: str) -> str:
    """HF name template of a canonical role for a family."""
    return _overrides(family).get(role, ROLES[role])


def to_canonical(hf: str, family: str) -> str:
    """Map an HF tensor name (text prefixes already stripped) to its canonical name."""
    overrides = _overrides(family)
    if overrides:
        # derive the reverse of the override table rather than writing it twice
        parsed = match_name(_override_patterns(family), hf)
        if parsed is not None:
            return canonical_name(*parsed)
        parsed_c = parse_canonical(hf)
        if parsed_c and parsed_c[0] in overrides:  # the canonical spelling means something else here
            return "?" + hf
    return hf


def from_canonical(name: str, family: str) -> str:
    parsed = parse_canonical(name)
    if not parsed:
        return name
    role, layer = parsed
    return fill_name(hf_name(role, family), layer)


# ----------------------------------------------------------------------------- config -> spec
def _spec_default(row: Family, name: str) -> Any:
    """The value a spec of the row's family takes for field `name` when nothing says otherwise."""
    return row.defaults.get(name, GemmaSpec.__dataclass_fields__[name].default)


def _rope(text: dict[str, Any], row: Family, path: str) -> dict[str, float]:
    """RoPE bases and linear factors from either spelling (rope_parameters, or rope_theta/rope_scaling); one
    RoPE for every layer, or one per layer type (full/sliding) as the family's row says."""

    def linear_factor(params: dict[str, Any] | None, where: str) -> float:
        if not params:
            return 1.0
        if not isinstance(params, dict):
            raise InputError(path, f"config {where} must be an object, got {show(params)}")
        kind = params.get("rope_type", params.get("type", "default"))
        if kind in ("default", None, "proportional"):  # proportional: partial RoPE, no position scaling (hf_layers)
            return 1.0
        if kind == "linear":
            f = params.get("factor", 1.0)
            if not _positive_finite(f):
                raise InputError(path, f"config {where}.factor must be a positive number, got {show(f)}")
            return float(f)
        raise UnsupportedError(f"{path}: RoPE type {show(kind)} in {where} is not supported (default or linear)")

    def theta(v: Any, where: str) -> float:
        if not _positive_finite(v):
            raise InputError(path, f"config {where} must be a positive finite number, got {show(v)}")
        return float(v)

    rp = text.get("rope_parameters")
    if rp is not None and not isinstance(rp, dict):
        raise InputError(path, f"config rope_parameters must be an object, got {show(rp)}")
    global_base = _spec_default(row, "rope_theta")
    if row.hf is not None and row.hf.rope == "per_layer_type":
        local_base = _spec_default(row, "rope_local_theta")
        if isinstance(rp, dict) and (FULL in rp or SLIDING in rp):
            full = rp.get(FULL) or {}
            local = rp.get(SLIDING) or {}
            return dict(rope_theta=theta(full.get("rope_theta", global_base), f"rope_parameters.{FULL}.rope_theta"),
                        rope_local_theta=theta(local.get("rope_theta", local_base),
                                               f"rope_parameters.{SLIDING}.rope_theta"),
                        rope_scaling_factor=linear_factor(full, f"rope_parameters.{FULL}"),
                        rope_local_scaling_factor=linear_factor(local, f"rope_parameters.{SLIDING}"))
        return dict(rope_theta=theta(text.get("rope_theta", global_base), "rope_theta"),
                    rope_local_theta=theta(text.get("rope_local_base_freq", local_base), "rope_local_base_freq"),
                    rope_scaling_factor=linear_factor(text.get("rope_scaling"), "rope_scaling"),
                    rope_local_scaling_factor=1.0)
    # One RoPE for every layer.
    if isinstance(rp, dict):
        base = theta(rp.get("rope_theta", text.get("rope_theta", global_base)), "rope_parameters.rope_theta")
        factor = linear_factor(rp, "rope_parameters")
    else:
        base = theta(text.get("rope_theta", global_base), "rope_theta")
        factor = linear_factor(text.get("rope_scaling"), "rope_scaling")
    return dict(rope_theta=base, rope_local_theta=None, rope_scaling_factor=factor,
                rope_local_scaling_factor=factor)


def _positive_finite(v: Any) -> bool:
    """A number > 0 that is finite as a float (Infinity and 1e999 are not: they would be written back as the
    non-standard JSON `Infinity`)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return v > 0 and math.isfinite(float(v))
    except OverflowError:
        return False


# Keys of an HF config that transformers acts on as it loads the model and this tool's readers would not
# follow: a quantization_config makes transformers quantize (or dequantize) the weights on load, an
# attn_implementation other than its own eager/sdpa kernels makes it import or download another kernel.
ATTN_KEYS = ("attn_implementation", "_attn_implementation")
ATTN_ALLOWED = ("eager", "sdpa")


def _check_loader_keys(cfg: dict[str, Any], path: str) -> None:
    subs = [("", cfg)] + [(f"{k}.", v) for k, v in cfg.items() if k.endswith("_config") and isinstance(v, dict)]
    for prefix, c in subs:
        q = c.get("quantization_config")
        if q is not None:
            method = show(q.get("quant_method")) if isinstance(q, dict) else show(q)
            raise UnsupportedError(f"{path}: {prefix}quantization_config (quant_method {method}) is not supported: "
                                   f"transformers would quantize or dequantize the weights as it loads them, so "
                                   f"its forward pass would not run the weights this tool reads")
        for key in ATTN_KEYS:
            v = c.get(key)
            if v is not None and v not in ATTN_ALLOWED:
                raise UnsupportedError(f"{path}: {prefix}{key} {show(v)} is not supported (only "
                                       f"{' or '.join(ATTN_ALLOWED)}): transformers would load that attention "
                                       f"kernel instead of its own")


def _check_token_ids(text: dict[str, Any], cfg: dict[str, Any], vocab: int, path: str) -> None:
    """bos/eos/pad ids (ints or lists of them) must be rows of the embedding: transformers builds its
    embedding with padding_idx = pad_token_id (an assertion fails outside the vocabulary) and verify and
    parity start their sequences with BOS."""
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = text.get(key, cfg.get(key))
        for i in v if isinstance(v, list) else [v]:
            if i is None and not isinstance(v, list):
                continue
            if isinstance(i, bool) or not isinstance(i, int):
                raise InputError(path, f"config {key} must be a token id (an integer, or a list of them), "
                                       f"got {show(v)}")
            if not 0 <= i < vocab:
                raise InputError(path, f"config {key} {show(i)} is outside the vocabulary (ids 0..{vocab - 1})")


def _layer_types(text: dict[str, Any], row: Family, n: int, path: str) -> tuple[str, ...]:
    """layer_types as the config spells them, else the family's layout (stretched by sliding_window_pattern
    where the family's config has that key)."""
    lt = text.get("layer_types")
    if lt is not None:
        if not isinstance(lt, list) or len(lt) != n or any(t not in (SLIDING, FULL) for t in lt):
            raise InputError(path, f"config layer_types must list {n} entries of "
                                   f"'{SLIDING}'/'{FULL}', got {show(lt)}")
        return tuple(lt)
    if row.hf is not None and row.hf.pattern_key:
        pattern = text.get("sliding_window_pattern", text.get("_sliding_window_pattern", len(row.layer_pattern)))
        if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern <= 0:
            raise InputError(path, f"config sliding_window_pattern must be a positive integer, got {show(pattern)}")
        return row.layer_types(n, pattern)
    return row.layer_types(n)


def _first_id(v: Any) -> int | None:
    if isinstance(v, list):
        v = v[0] if v else None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _id_or(v: Any, default: int) -> int:
    """A token id from a config value (an int or a list of ints); `default` when there is none (0 is an id)."""
    i = _first_id(v)
    return default if i is None else i


def _is_wrapper(cfg: dict[str, Any]) -> bool:
    """Whether the config is a multimodal wrapper's (Gemma 3's `gemma3`), whose text decoder is its text_config."""
    model_type = cfg.get("model_type")
    row = by_hf_model_type(model_type) if isinstance(model_type, str) else None
    return row is not None and row.hf is not None and model_type == row.hf.multimodal_model_type


def spec_from_config(cfg: dict[str, Any], path: str, dtype_hint: str | None = None) -> tuple[GemmaSpec, list[str]]:
    """Build a GemmaSpec from an HF config dict. Returns (spec, notes)."""
    notes: list[str] = []
    model_type = cfg.get("model_type")
    row = by_hf_model_type(model_type) if isinstance(model_type, str) else None
    if row is None or row.hf is None:
        raise InputError(path, f"unsupported model_type {show(model_type)}; supported: "
                               f"{', '.join(hf_model_types())}")
    if not _is_wrapper(cfg):  # rows sharing a model_type are told apart by their config (EmbeddingGemma: a flag)
        row = by_hf_model_type(model_type, cfg) or row
    ids = row.hf
    text = cfg
    if _is_wrapper(cfg):  # a multimodal wrapper: the text decoder's config is its text_config
        text = cfg.get("text_config")
        if text is None:
            text = {}
        if not isinstance(text, dict):
            raise InputError(path, "config text_config must be an object")
        if text.get("model_type", ids.model_type) != ids.model_type:
            raise InputError(path, f"unsupported text_config model_type {show(text.get('model_type'))}")
    raw_text = text
    merged = dict(ids.defaults)  # transformers' config defaults: a key absent from config.json takes these
    merged.update(text)
    text = merged

    _check_loader_keys(cfg, path)
    bidirectional = bool(text.get("use_bidirectional_attention")) and \
        text.get("use_bidirectional_attention") not in ids.causal_bidirectional
    for flag in ("use_bidirectional_attention", "attention_bias"):
        if flag == "use_bidirectional_attention" and text.get(flag) in ids.causal_bidirectional:
            notes.append(f"{flag}={show(text[flag])} makes only image tokens attend both ways: the text decoder "
                         f"is causal, as read here")
            continue
        if text.get(flag) and not (flag == "use_bidirectional_attention" and row.rules.attention_mask == "bidirectional"):
            raise UnsupportedError(f"{path}: {flag}=true is not a Gemma causal-LM configuration this tool supports")

    act_key = ids.activation_key
    act_raw = text.get(act_key)
    if act_raw is None:  # hidden_activation (Gemma 2 on) falls back to hidden_act
        act_raw = text.get("hidden_act")
    if isinstance(act_raw, str) and act_raw in ids.activation_aliases:
        # The released Gemma 1 configs say hidden_act="gelu", a legacy value that means the tanh GELU:
        # transformers replaces it with gelu_pytorch_tanh (GemmaConfig.__post_init__), and so do we.
        notes.append(f"{act_key}={act_raw!r} is the legacy value of the {row.title} releases; it means the tanh "
                     f"approximation, as transformers reads it")
        act_raw = ids.activation_aliases[act_raw]
    if not isinstance(act_raw, str) or act_raw not in ACTIVATION_OF_HF:
        raise UnsupportedError(f"{path}: activation {act_key}={show(act_raw)} is not supported "
                               f"(expected gelu_pytorch_tanh)")
    hidden = require_int(text, "hidden_size", path)
    heads = require_int(text, "num_attention_heads", path)
    kv = text.get("num_key_value_heads")
    kv = heads if kv is None else require_int(text, "num_key_value_heads", path)
    head_dim = text.get("head_dim")
    head_dim = hidden // heads if head_dim is None else require_int(text, "head_dim", path)
    n_layers = require_int(text, "num_hidden_layers", path, maximum=MAX_LAYERS)
    sliding = None
    if ids.windowed_keys:
        sliding = text.get("sliding_window")
        if sliding is not None:
            sliding = require_int(text, "sliding_window", path)
    layer_types = _layer_types(text, row, n_layers, path)
    if SLIDING in layer_types and sliding is None:
        raise InputError(path, "config declares sliding-window layers but sliding_window is null")
    qpas = opt_float(text, "query_pre_attn_scalar", path, head_dim) if ids.windowed_keys else head_dim
    if qpas is not None and float(qpas).is_integer():
        qpas = int(qpas)
    if row.rules.query_scalar == "unit":  # the family's attention is unscaled whatever the config says
        if qpas != 1:
            notes.append(f"query_pre_attn_scalar {show(raw_text.get('query_pre_attn_scalar', qpas))} in the config is "
                         f"not used: {row.title} scales queries by 1 (the q/k norms set their size), as "
                         f"transformers does")
        qpas = 1
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise InputError(path, f"config dtype {show(dtype)} is not float32, bfloat16 or float16")
    if dtype is None:
        dtype = dtype_hint or "float32"
        notes.append(f"config.json declares no dtype; using the tensors' {dtype}")
    tie = cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
    eos = text.get("eos_token_id", cfg.get("eos_token_id"))
    from .hf_layers import extra_fields, intermediate_sizes

    ffn, ffn_per_layer = intermediate_sizes(text, n_layers, path)
    extra, extra_notes = extra_fields(text, raw_text, row, layer_types, kv, head_dim, path)
    notes += extra_notes
    try:
        # make_spec applies the row's rules (norm placement, QK-norm, ...): no config key says them
        spec = make_spec(
            row.key,
            vocab_size=require_int(text, "vocab_size", path),
            hidden_size=hidden,
            num_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            head_dim=head_dim,
            intermediate_size=ffn,
            intermediate_sizes=ffn_per_layer,
            activation=ACTIVATION_OF_HF[act_raw],
            tied_embeddings=bool(tie),
            attention_logit_softcap=opt_float(text, "attn_logit_softcapping", path) if ids.windowed_keys else None,
            final_logit_softcap=opt_float(text, "final_logit_softcapping", path) if ids.windowed_keys else None,
            sliding_window=sliding,
            layer_types=layer_types,
            query_pre_attn_scalar=qpas,
            rms_norm_eps=opt_float(text, "rms_norm_eps", path, 1e-6),
            max_position_embeddings=require_int(text, "max_position_embeddings", path),
            dtype=dtype,
            bos_token_id=_id_or(text.get("bos_token_id", cfg.get("bos_token_id")), 2),
            eos_token_id=_id_or(eos, 1),
            pad_token_id=_id_or(text.get("pad_token_id", cfg.get("pad_token_id")), 0),
            attention_mask="bidirectional" if bidirectional else "causal",
            **_rope(text, row, path),
            **extra,
        )
    except (UnsupportedError, InputError):  # already name config.json (require_int, opt_float, _rope)
        raise
    except Exception as e:  # SpecError and friends: the config contradicts itself
        raise InputError(path, f"inconsistent config: {e}") from None
    _check_token_ids(text, cfg, spec.vocab_size, path)
    return spec, notes


# ----------------------------------------------------------------------------- reading
def _weight_files(path: str) -> tuple[list[str], dict[str, str] | None]:
    """The safetensors files of the directory and, if sharded, the index's name -> file map."""
    single = os.path.join(path, SINGLE)
    index_path = os.path.join(path, INDEX)
    if os.path.exists(index_path):
        wm = read_weight_map(index_path, "safetensors index", "name")
        files: dict[str, str] = {}
        for name, fname in wm.items():
            full = safe_child(path, fname, index_path)
            if not os.path.isfile(full):
                raise InputError(index_path, f"names shard {fname!r}, which does not exist")
            files[name] = full
        return sorted(set(files.values())), files
    if os.path.exists(single):
        return [single], None
    raise InputError(path, f"no {SINGLE} or {INDEX} in this Hugging Face directory")


def read(path: str) -> Checkpoint:
    config_path = os.path.join(path, CONFIG)
    cfg = read_json_object(config_path, "config.json")
    files, weight_map = _weight_files(path)
    headers: dict[str, tuple[str, StEntry]] = {}
    for fpath in files:
        entries, _meta = read_header(fpath)
        for name, entry in entries.items():
            if name in headers:
                raise InputError(fpath, f"tensor {name!r} is also stored in {headers[name][0]}")
            headers[name] = (fpath, entry)
    if weight_map is not None:
        for name, fpath in weight_map.items():
            if name not in headers or headers[name][0] != fpath:
                where = "in no shard" if name not in headers else f"in {headers[name][0]}"
                raise InputError(os.path.join(path, INDEX),
                                 f"maps {name!r} to {os.path.basename(fpath)} but it is {where}")
        unlisted = [n for n in headers if n not in weight_map]
        if unlisted:
            raise InputError(os.path.join(path, INDEX), f"does not list {unlisted[0]!r}, which "
                                                        f"{os.path.basename(headers[unlisted[0]][0])} holds")
    where = os.path.join(path, INDEX) if weight_map is not None else files[0]
    stored = {name: (entry.dtype, entry.shape, lambda canonical, f=fpath, e=entry, n=name: _ref(canonical, f, e, n))
              for name, (fpath, entry) in headers.items()}
    spec, ordered, ignored, notes, base = from_headers(cfg, config_path, stored, where)
    from ..tokenizer import find_tokenizer

    tokenizer = find_tokenizer(path)
    present = [os.path.join(path, f) for f in (CONFIG, INDEX, "generation_config.json", *TOKENIZER_FILES, *ST_FILES)
               if os.path.exists(os.path.join(path, f))]
    head, head_tensors, settings = None, {}, {}
    if st.has_modules(path):  # a sentence-transformers directory: pooling and dense heads after the transformer
        head = st.read_head(path, spec.hidden_size)
        head_tensors, settings = st.read_head_tensors(path, head), st.read_settings(path)
        present += [os.path.join(path, d.path, f) for d in head.dense for f in ("config.json", SINGLE)]
    return Checkpoint(spec=spec, tensors=ordered, source=path, format="hf", tokenizer=tokenizer, notes=notes,
                      ignored=ignored, config=cfg, files=present + files, base_model=base, embedding_head=head,
                      head_tensors=head_tensors, head_config=settings,
                      lm_head_set_aside=next((stored[n][2]("lm_head.weight") for n in ignored
                                              if n.endswith("lm_head.weight")), None))


def from_headers(cfg: dict[str, Any], config_path: str,
                 stored: dict[str, tuple[str, tuple[int, ...], Callable[[str], TensorRef]]],
                 where: str) -> tuple[GemmaSpec, dict[str, TensorRef], dict[str, tuple[tuple[int, ...], str]],
                                      list[str], bool]:
    """The spec, canonical tensors (in canonical order), ignored tensors, notes and base-model flag of an HF
    checkpoint from its config and its stored tensors ({stored name: (dtype, shape, make_ref(canonical))}):
    what a local directory's headers and the hub's safetensors metadata (hub.py) both give."""
    spec, notes = spec_from_config(cfg, config_path, most_common([d for d, _, _ in stored.values()]))
    tensors: dict[str, TensorRef] = {}
    ignored: dict[str, tuple[tuple[int, ...], str]] = {}
    vision_params = 0
    base = _is_base_model(stored)
    bare = base
    base = base or not FAMILY_TABLE[spec.family].rules.lm_head  # an encoder has no LM head however it is named
    row = FAMILY_TABLE[spec.family]
    towers = VISION_PREFIXES + (row.hf.tower_prefixes if row.hf is not None else ())
    for hf, (dtype, shape, make_ref) in stored.items():
        name = BASE_PREFIX + hf if base and hf.startswith(BASE_NAMES) else hf
        if any(name.startswith(p) for p in towers):
            ignored[hf] = (shape, dtype)
            vision_params += _numel(shape)
            continue
        for old, new in TEXT_PREFIXES:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        canonical = to_canonical(name, spec.family)
        if canonical == "lm_head.weight" and spec.tied_embeddings:
            ignored[hf] = (shape, dtype)
            notes.append("lm_head.weight is stored but tie_word_embeddings is true: runtimes use the "
                         "embedding instead (see `verify` lint)")
            continue
        tensors[canonical] = make_ref(canonical)
    if bare:
        notes.append("a base model (tensors named without the `model.` prefix, as GemmaModel / Gemma2Model / "
                     "Gemma3TextModel save them): no LM head, neither stored nor tied; read as transformers reads it")
    if vision_params:
        n_vision = sum(1 for k in ignored if any(k.startswith(p) for p in towers))
        what = "vision tower and projector" if not row.hf or not row.hf.tower_prefixes else "vision/audio towers"
        notes.append(f"multimodal {_short_title(row)}: {what} ({n_vision} tensors, "
                     f"{vision_params:,} parameters) reported and ignored; only the text decoder is read")
    if _is_wrapper(cfg) and not vision_params:
        notes.append(f"multimodal {_short_title(row)} config: only the text decoder is read")
    _name_unmapped(tensors, where)
    from .hf_layers import set_aside_unused, without_layer_scalars

    spec, more = without_layer_scalars(spec, tensors)
    notes += more
    notes += set_aside_unused(spec, tensors, ignored, config_path, where)
    check_against_spec(spec, tensors, config_path, where)
    return spec, {n: tensors[n] for n in _canonical_order(spec, tensors)}, ignored, notes, base

# A base model (GemmaModel, Gemma2Model, Gemma3TextModel: `AutoModel.save_pretrained`, e.g. an embedding model)
# names its tensors without the `model.` prefix that the causal LM's decoder has. transformers loads either naming
# into either class (base_model_prefix = "model"); so does this reader.
BASE_PREFIX = "model."
BASE_NAMES = ("embed_tokens.", "layers.", "norm.")


def _is_base_model(headers: dict[str, Any]) -> bool:
    """Whether the tensors are named as a base model saves them: the decoder's names without `model.` and no
    `lm_head`."""
    return (any(n.startswith(BASE_NAMES) for n in headers)
            and not any(n.startswith((BASE_PREFIX, "lm_head.")) or any(n.startswith(p) for p, _ in TEXT_PREFIXES)
                        for n in headers))


def _name_unmapped(tensors: dict[str, TensorRef], where: str) -> None:
    for n in tensors:
        if n.startswith("?"):
            raise InputError(where, f"tensor {n[1:]!r} does not belong in a Gemma 1 checkpoint "
                                    f"(Gemma 1 stores its pre-FFN norm as post_attention_layernorm)")


def _canonical_order(spec: GemmaSpec, tensors: dict[str, TensorRef]) -> list[str]:
    from ..checkpoint import expected_tensors

    order = [n for n in expected_tensors(spec) if n in tensors]
    return order + [n for n in tensors if n not in order]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _ref(canonical: str, fpath: str, entry: StEntry, stored_name: str) -> TensorRef:
    # HF layout is the canonical layout: the raw bytes can be streamed as they are.
    return TensorRef(
        name=canonical, shape=entry.shape, dtype=entry.dtype, nbytes=entry.nbytes,
        origin=f"{fpath}:{stored_name}",
        loader=lambda: read_array(fpath, entry),
        span=(fpath, entry.start, entry.nbytes),
    )


# ----------------------------------------------------------------------------- spec -> config (writing)
HF_ACTIVATION = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "silu": "silu"}


def _rope_params(theta: float, factor: float) -> dict[str, Any]:
    if factor == 1.0:
        return {"rope_type": "default", "rope_theta": theta}
    return {"rope_type": "linear", "factor": factor, "rope_theta": theta}


def _short_title(row: Family) -> str:
    """The family's title without its qualifier ("Gemma 3 (text)" -> "Gemma 3")."""
    return row.title.split(" (")[0]


def config_dict(spec: GemmaSpec) -> dict[str, Any]:
    """A complete, explicit config.json for `spec`, readable by transformers 4.4x and 5.x alike:
    both activation keys, both RoPE spellings, layer_types spelled out."""
    row = FAMILY_TABLE.get(spec.family)
    if row is None or row.hf is None:
        raise UnsupportedError(f"{spec.family} checkpoints cannot be written as a Gemma HF directory")
    ids, rules = row.hf, row.rules
    act = HF_ACTIVATION[spec.activation]
    cfg: dict[str, Any] = {
        "architectures": [ids.architecture],
        "model_type": ids.model_type,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        # one width, or one per layer where they differ (Gemma 3n's list spelling)
        "intermediate_size": list(spec.intermediate_sizes) if spec.intermediate_sizes else spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        # Both keys, same value: transformers reads hidden_act for gemma, hidden_activation for gemma2/3.
        "hidden_act": act,
        "hidden_activation": act,
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.rms_norm_eps,
        "tie_word_embeddings": spec.tied_embeddings,
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": spec.eos_token_id,
        "pad_token_id": spec.pad_token_id,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "dtype": spec.dtype,
        "torch_dtype": spec.dtype,
        "use_cache": True,
    }
    if ids.rope == "per_layer_type":
        cfg["rope_parameters"] = {
            FULL: _rope_params(spec.rope_theta, spec.rope_scaling_factor),
            SLIDING: _rope_params(spec.local_rope_theta, spec.rope_local_scaling_factor),
        }
        cfg["rope_theta"] = spec.rope_theta
        cfg["rope_local_base_freq"] = spec.local_rope_theta
        if spec.rope_scaling_factor != 1.0:
            cfg["rope_scaling"] = {"rope_type": "linear", "factor": spec.rope_scaling_factor}
        if spec.rope_local_scaling_factor != 1.0:
            raise UnsupportedError(f"HF {_short_title(row)} cannot express RoPE scaling on sliding layers only in "
                                   f"the transformers 4 spelling")
    else:
        if spec.local_rope_theta != spec.rope_theta or spec.rope_local_scaling_factor != spec.rope_scaling_factor:
            raise UnsupportedError(f"HF {spec.family} uses one RoPE for every layer; this checkpoint has "
                                   f"different local and global RoPE settings")
        cfg["rope_parameters"] = _rope_params(spec.rope_theta, spec.rope_scaling_factor)
        cfg["rope_theta"] = spec.rope_theta
        if spec.rope_scaling_factor != 1.0:
            cfg["rope_scaling"] = {"rope_type": "linear", "factor": spec.rope_scaling_factor}
    if ids.windowed_keys:
        cfg["query_pre_attn_scalar"] = spec.query_pre_attn_scalar
        cfg["sliding_window"] = spec.sliding_window
        cfg["layer_types"] = list(spec.layer_types)
        cfg["attn_logit_softcapping"] = spec.attention_logit_softcap
        cfg["final_logit_softcapping"] = spec.final_logit_softcap
        if ids.pattern_key and spec.layer_types == row.layer_types(spec.num_layers):
            cfg["sliding_window_pattern"] = len(row.layer_pattern)
    else:
        problems = []
        if spec.sliding_window is not None or SLIDING in spec.layer_types:
            problems.append("sliding windows")
        if spec.attention_logit_softcap or spec.final_logit_softcap:
            problems.append("soft caps")
        if spec.query_pre_attn_scalar != spec.head_dim:
            problems.append(f"query_pre_attn_scalar {spec.query_pre_attn_scalar} != head_dim")
        if problems:
            raise UnsupportedError(f"HF {_short_title(row)} (model_type {ids.model_type}) cannot express "
                                   f"{', '.join(problems)}")
    for field, key in ids.config_fields.items():  # the row's extra spec fields under their config keys
        v = getattr(spec, field)
        if isinstance(v, tuple):  # per layer (activation sparsity: floats, as transformers' strict config wants)
            v = [float(x) for x in v] or [0.0] * spec.num_layers
        cfg[key] = v
    if ids.layer_geometry or ids.experts_switch is not None:  # Gemma 4's keys (hf_layers, beside their reader)
        from .hf_layers import config_extras

        cfg.update(config_extras(spec, ids, cfg))
    if (spec.norm_placement, spec.qk_norm, spec.norm_offset, spec.scale_embeddings) != \
            (rules.norm_placement, rules.qk_norm, rules.norm_offset, rules.scale_embeddings):
        raise UnsupportedError(f"this {spec.family} checkpoint deviates from its family's layout "
                               f"(norm placement/offset, QK-norm or embedding scale): HF cannot express it")
    cfg.update(ids.identified_by)  # what tells the row from another of its model_type (use_bidirectional_attention)
    return cfg


# ----------------------------------------------------------------------------- writing
DEFAULT_MAX_SHARD = 5 * 10**9


def generation_config(spec: GemmaSpec, tokenizer: Any) -> dict[str, Any]:
    """generation_config.json: generation stops on <eos> and, when the vocabulary has it, <end_of_turn>."""
    eos: list[int] = [spec.eos_token_id]
    if tokenizer is not None:
        eot = tokenizer.token_to_id("<end_of_turn>")
        if eot is not None and eot not in eos:
            eos.append(eot)
    return {"bos_token_id": spec.bos_token_id, "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": spec.pad_token_id}


def write(ckpt: Checkpoint, dest: str, options: Any, progress: Any) -> None:
    """Write `ckpt` as a Hugging Face directory, streaming one tensor at a time into safetensors shards."""
    from ..tensorio import ShardedOutput, prefetched, target_nbytes
    from .safetensors_io import PAGE, SafetensorsWriter

    spec = ckpt.spec
    out_dtypes = {n: options.float_dtype(r) for n, r in ckpt.tensors.items()}
    declared = options.dtype if options.dtype != "keep" else spec.dtype
    cfg = config_dict(spec.replace(dtype=declared))
    os.makedirs(dest)
    sizes = [(n, target_nbytes(r, out_dtypes[n])) for n, r in ckpt.tensors.items()]
    out = ShardedOutput(sizes, options.max_shard_size or DEFAULT_MAX_SHARD, SINGLE,
                        "model-{number:05d}-of-{count:05d}.safetensors")
    names = {n: from_canonical(n, spec.family) for n in ckpt.tensors}
    if not FAMILY_TABLE[spec.family].rules.lm_head:
        # an encoder is saved as its base model saves it (Gemma3TextModel: no `model.` prefix, no lm_head), as the
        # released EmbeddingGemma and llama.cpp's converter (which registers that class) expect
        names = {n: h.removeprefix(BASE_PREFIX) for n, h in names.items()}
    nbytes = dict(sizes)
    for fname, shard in out:  # page-multiple tensors first: each then starts on a page (see tensorio.output)
        shard = sorted(shard, key=lambda n: nbytes[n] % PAGE != 0)  # readers go by the header, not the order
        layout = [(names[n], out_dtypes[n], ckpt.tensors[n].shape) for n in shard]
        with SafetensorsWriter(os.path.join(dest, fname), layout, {"format": "pt"}) as w:
            for n, pieces in prefetched((n, ckpt.tensors[n], out_dtypes[n], None) for n in shard):
                w.add(names[n], pieces, progress)
                out.record(names[n], fname)
    if out.sharded:
        out.write_index(dest, INDEX, sort=True)
    _write_json(os.path.join(dest, CONFIG), cfg)
    _write_json(os.path.join(dest, "generation_config.json"), generation_config(spec, ckpt.tokenizer))
    if ckpt.tokenizer is None:
        options.notes.append("the source has no tokenizer: weights and config converted, no tokenizer files written")
    else:
        from ..tokenizer import write_hf_tokenizer

        options.notes.extend(write_hf_tokenizer(ckpt.tokenizer, dest))
    if ckpt.embedding_head is not None:  # the sentence-transformers modules after the transformer
        kept = {k: v for k, v in ckpt.head_config.items() if k in (st.ST_CONFIG, st.BERT_CONFIG)}
        if len(kept) < 2:
            options.notes.append(f"the source keeps no {' or '.join(sorted({st.ST_CONFIG, st.BERT_CONFIG} - set(kept)))}"
                                 f": written with no prompts, cosine similarity and max_seq_length "
                                 f"{spec.max_position_embeddings}")
        settings = {**st.default_settings(spec.max_position_embeddings), **kept}
        st.write_modules(ckpt.embedding_head, ckpt.head_tensors, settings, dest, options, progress)


def _write_json(path: str, obj: Any) -> None:
    import json

    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ----------------------------------------------------------------------------- the format contract (common.FormatInfo)
from .common import FormatInfo  # noqa: E402

FORMAT = FormatInfo(
    name="hf", title="HF", description="a Hugging Face directory (config.json + model.safetensors or an index)",
    stores_quantization=False, native_runtime="transformers",
    member_files=(CONFIG, SINGLE, INDEX, "generation_config.json", *TOKENIZER_FILES, *ST_FILES),
    weight_files=(SINGLE, INDEX), ambiguous=((SINGLE, INDEX),),
    config_sniff=lambda cfg: "model_type" in cfg, config_hint="'model_type' (Hugging Face)",
    loose_suffixes=(".safetensors",))
