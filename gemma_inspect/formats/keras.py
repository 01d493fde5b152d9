"""KerasHub / Keras-NLP presets: config.json + model.weights.h5 (or model.weights.json + shards).

Inside the H5 file, groups are named after the layer *class* with a de-duplication suffix
(`layers/gemma_decoder_block_1`); each `.../vars` group carries the real layer name in `attrs['name']`
(`decoder_block_1`, `query`, ...). We map through those names and fall back to the path for files
that carry no attributes. bfloat16 datasets are stored opaque (`|V2`, `attrs['dtype'] = 'bfloat16'`).
Datasets are contiguous, so their bytes are read straight from the file at the dataset's offset (the HDF5
walk, its refusals and the reads are keras_h5's; this module maps datasets to canonical tensors and back).
Reading never imports keras: h5py and numpy only.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Any

import numpy as np

from ..arrays import Layout
from ..checkpoint import (FLOAT_DTYPES, Checkpoint, TensorRef, canonical_name, check_against_spec, expected_tensors,
                          parse_canonical)
from ..errors import InputError, SpecError, UnsupportedError
from ..families import FAMILY_TABLE, FULL, SLIDING, Family, by_keras_backbone
from ..heads import EmbeddingHead
from ..spec import GemmaSpec, card, card_of_shape, make_spec
from .common import MAX_LAYERS, most_common, opt_float, read_json_object, require_int
from .keras_embedding import embedding_head, head_problems, keras_window
from .keras_h5 import DEFAULT_MAX_SHARD, SHARD_INDEX, WEIGHTS, H5Var, create_h5, fill_h5, preset_vars, read_var
from .keras_vars import BY_PATH, HEAD_BY_NAME, HEAD_VARS, TOP_VARS, VAR_BY_ROLE, KerasVar

CONFIG = "config.json"
REGISTRIES = ("keras_hub", "keras_nlp")

# ----------------------------------------------------------------------------- layout transforms
# Keras keeps attention kernels per head; canonical (HF) layout is [out, in].
#   query/key/value (N, d, D) -> [N*D, d]     output (H, D, d) -> [d, H*D]     dense (in, out) -> [out, in]


def stored_layout(layout: str, stored: tuple[int, ...]) -> Layout | None:
    """The re-layout from a Keras variable of shape `stored` to the canonical layout (None: the same bytes)."""
    if layout == "heads_in":  # (N, d, D) -> [N*D, d]
        n, d, hd = stored
        return Layout((n, d, hd), (0, 2, 1), (n * hd, d))
    if layout == "heads_out":  # (H, D, d) -> (d, H, D): the transpose of the same bytes seen as (H*D, d)
        h, hd, d = stored
        return Layout((h * hd, d), (1, 0), (d, h * hd))
    if layout == "T":
        return Layout(tuple(stored), (1, 0), tuple(reversed(stored)))
    return None


def _var(role: str) -> KerasVar:
    """The name-table row of a role, or of a head tensor's canonical name."""
    return VAR_BY_ROLE[role] if role in VAR_BY_ROLE else HEAD_BY_NAME[role]


def write_layout(spec: GemmaSpec, role: str, canonical: tuple[int, ...]) -> Layout | None:
    """The re-layout from the canonical layout to the Keras variable of `role` (None: the same bytes)."""
    layout = _var(role).layout
    if layout == "heads_in":  # [N*D, d] -> (N, d, D)
        heads = spec.num_attention_heads if role == "q" else spec.num_key_value_heads
        return Layout((heads, spec.head_dim, canonical[1]), (0, 2, 1), (heads, canonical[1], spec.head_dim))
    if layout == "heads_out":  # [d, H*D] -> (H, D, d)
        return Layout(tuple(canonical), (1, 0), (spec.num_attention_heads, spec.head_dim, canonical[0]))
    if layout == "T":
        return Layout(tuple(canonical), (1, 0), tuple(reversed(canonical)))
    return None



def _keras_ids(attr: str) -> tuple[Any, ...]:
    """One KerasIds field over the family rows, each value once, in table order (backbone: GemmaBackbone,
    Gemma3Backbone)."""
    return tuple(dict.fromkeys(getattr(f.keras, attr) for f in FAMILY_TABLE.values() if f.keras))


def _keras_row(family: str) -> Family:
    """The family row of a spec that keras-hub can hold; UnsupportedError for a family without a backbone."""
    row = FAMILY_TABLE.get(family)
    if row is None or row.keras is None:
        raise UnsupportedError(f"{family} checkpoints cannot be written as a keras-hub Gemma preset")
    return row


def _mapping(row: Family) -> Any:
    """The formats module that maps the row's backbone (KerasIds.mapping), or None for this module's own table."""
    import importlib

    assert row.keras is not None
    return importlib.import_module(f"{__package__}.{row.keras.mapping}") if row.keras.mapping else None


def _windowed_row(row: Family) -> Family:
    """The family of the row's backbone whose layout has sliding-window layers: its pattern is the one the
    backbone hard-codes, its window the backbone's default (GemmaBackbone: Gemma 2's; Gemma3Backbone: its own)."""
    assert row.keras is not None
    return next((f for f in by_keras_backbone(row.keras.backbone) if f.windowed), row)


def _holds_windows(row: Family) -> bool:
    """Whether checkpoints of the family can have sliding windows and soft caps: Gemma 1's cannot (its HF config
    has no key for them, so a GemmaBackbone with them has no HF equivalent)."""
    return row.hf is not None and row.hf.windowed_keys


def block_group(spec: GemmaSpec, index: int) -> str:
    """H5 group of decoder block `index`: the class name in snake case plus Keras' de-dup suffix."""
    keras = _keras_row(spec.family).keras
    assert keras is not None
    return f"layers/{keras.block}" + (f"_{index}" if index else "")


def keras_shape(spec: GemmaSpec, role: str, canonical: tuple[int, ...]) -> tuple[int, ...]:
    layout = _var(role).layout
    if layout == "heads_in":
        heads = spec.num_attention_heads if role == "q" else spec.num_key_value_heads
        return (heads, spec.hidden_size, spec.head_dim)
    if layout == "heads_out":
        return (spec.num_attention_heads, spec.head_dim, spec.hidden_size)
    if layout == "T":
        return tuple(reversed(canonical))
    return canonical


def from_canonical_array(spec: GemmaSpec, role: str, arr: np.ndarray) -> np.ndarray:
    """Canonical layout -> Keras layout (the writer's direction)."""
    layout = write_layout(spec, role, tuple(arr.shape))
    return arr if layout is None else layout.apply(arr)


def looks_like_keras_config(cfg: dict[str, Any]) -> bool:
    return "class_name" in cfg and isinstance(cfg.get("config"), dict) and "model_type" not in cfg


# ----------------------------------------------------------------------------- config -> spec
def _class_of(cfg: dict[str, Any], path: str) -> str:
    reg = cfg.get("registered_name") or ""
    cls = cfg.get("class_name") or ""
    if isinstance(reg, str) and ">" in reg:
        registry, _, name = reg.partition(">")
        if registry not in REGISTRIES:
            raise InputError(path, f"registered_name {reg!r} is not a keras_hub or keras_nlp class")
        cls = name
    backbones = _keras_ids("backbone")  # GemmaBackbone holds Gemma 1, Gemma 2 and VaultGemma
    if cls not in backbones:
        raise InputError(path, f"unsupported Keras class {cls or reg!r}; supported: "
                               f"{', '.join(r + '>' + b for r in REGISTRIES for b in backbones)}")
    return cls


def _policy_dtype(v: Any, path: str) -> str | None:
    if isinstance(v, dict):
        v = (v.get("config") or {}).get("name")
    if v is None:
        return None
    if not isinstance(v, str):
        raise InputError(path, f"config dtype {v!r} is not a dtype policy")
    if v.startswith("mixed_"):
        v = v[len("mixed_"):]
    if v not in FLOAT_DTYPES:
        raise InputError(path, f"config dtype {v!r} is not float32, bfloat16 or float16")
    return v


def spec_from_config(cfg: dict[str, Any], path: str, dtype_hint: str | None = None,
                     max_position_embeddings: int | None = None) -> tuple[GemmaSpec, list[str]]:
    """The spec of a Keras backbone config. Keras stores no context length: `max_position_embeddings` (kept in
    metadata.json by our writer) or else the published one, said in a note."""
    notes: list[str] = []
    cls = _class_of(cfg, path)
    c = cfg["config"]
    if c.get("vision_encoder") is not None:
        notes.append("multimodal Keras Gemma 3 preset: the vision encoder is reported and ignored; only the "
                     "text decoder is read")
    embedding = bool(c.get("is_embedding_model"))
    if bool(c.get("use_bidirectional_attention")) != embedding:
        have = "use_bidirectional_attention" if not embedding else "is_embedding_model"
        raise UnsupportedError(f"{path}: {have}=true without "
                               f"{'is_embedding_model' if not embedding else 'use_bidirectional_attention'}=true: "
                               f"neither a causal LM nor an embedding model (EmbeddingGemma has both)")
    n = require_int(c, "num_layers", path, maximum=MAX_LAYERS)
    hidden = require_int(c, "hidden_dim", path)
    heads = require_int(c, "num_query_heads", path)
    head_dim = require_int(c, "head_dim", path)
    inter = require_int(c, "intermediate_dim", path)
    post_attn, post_ffw = bool(c.get("use_post_attention_norm")), bool(c.get("use_post_ffw_norm"))
    sliding_on = bool(c.get("use_sliding_window_attention"))
    keras = by_keras_backbone(cls)[0].keras  # what the backbone class does, whichever family it holds
    assert keras is not None
    if keras.intermediate_both_branches:
        # GemmaBackbone.intermediate_dim is 2 * F (both GeGLU branches together); Gemma3Backbone's is F.
        if inter % 2:
            raise InputError(path, f"{cls} intermediate_dim {inter} must be even (it is 2 x the FFN width)")
        ffn = inter // 2
    else:
        ffn = inter
    row = _family_of(cls, c, post_attn, post_ffw, sliding_on, path)
    windowed = _windowed_row(row)
    window = c.get("sliding_window_size", windowed.defaults.get("sliding_window"))
    window = require_int(c, "sliding_window_size", path, window) if sliding_on else None
    if embedding and window is not None:
        # keras-hub's bidirectional window S lets a token see S - S // 2 - 1 positions before it and S // 2 after;
        # transformers' stored window W lets it see W // 2 on either side. An odd S is W = S - 1; an even S (what
        # keras-hub's own importer writes: S = W) is one position short on the left, which no W expresses.
        if window % 2 == 0:
            notes.append(f"sliding_window_size {window} is even: keras-hub's bidirectional window sees "
                         f"{window // 2 - 1} positions before a token and {window // 2} after, transformers' window "
                         f"{window} sees {window // 2} on either side; read as {window}")
        else:
            window -= 1
    # keras-hub's fixed layout (the backbone's windowed family's pattern), or every layer global
    layer_types = windowed.layer_types(n) if sliding_on else (FULL,) * n
    # The backbone hard-codes the RoPE bases (Gemma3Backbone: 10k on local layers, 1M on global ones).
    assert keras.hard_coded_rope is not None
    local_base, global_base = keras.hard_coded_rope
    rope: dict[str, Any] = dict(rope_theta=global_base,
                                rope_local_theta=None if local_base == global_base else local_base)
    if keras.rope_scaling_keys:
        rope.update(rope_scaling_factor=opt_float(c, "global_rope_scaling_factor", path) or 1.0,
                    rope_local_scaling_factor=opt_float(c, "local_rope_scaling_factor", path) or 1.0)
    if c.get("query_head_dim_normalize") is False:
        notes.append(f"query_head_dim_normalize=false is stored, but keras-hub's decoder blocks ignore it: "
                     f"queries are scaled by head_dim^-0.5 (1/sqrt({head_dim})), not "
                     f"(d/H)^-0.5 = 1/sqrt({hidden // heads})")
    dtype = _policy_dtype(c.get("dtype"), path) or dtype_hint or "float32"
    max_pos = max_position_embeddings
    if max_pos is None:
        max_pos = _published_context(row, hidden, n)
        notes.append(f"max_position_embeddings is not stored in a Keras config; assuming {max_pos}")
    try:
        # make_spec applies the row's rules (norm placement, QK-norm, ...), which the config's flags matched
        spec = make_spec(
            row.key,
            vocab_size=require_int(c, "vocabulary_size", path),
            hidden_size=hidden, num_layers=n, num_attention_heads=heads,
            num_key_value_heads=require_int(c, "num_key_value_heads", path),
            head_dim=head_dim, intermediate_size=ffn,
            attention_logit_softcap=opt_float(c, "attention_logit_soft_cap", path),
            final_logit_softcap=opt_float(c, "final_logit_soft_cap", path),
            sliding_window=window,
            layer_types=layer_types,
            query_pre_attn_scalar=head_dim,  # what keras-hub computes, whatever the flag says
            rms_norm_eps=opt_float(c, "layer_norm_epsilon", path, 1e-6),
            max_position_embeddings=max_pos,
            dtype=dtype,
            **rope,
        )
    except (SpecError, TypeError, ValueError) as e:  # the config contradicts itself: name the config
        raise InputError(path, f"inconsistent config: {e}") from None
    return spec, notes


def _family_of(cls: str, c: dict[str, Any], post_attn: bool, post_ffw: bool, sliding_on: bool, path: str) -> Family:
    """The family a backbone config holds, from its fields compared with the rules of the families that backbone
    class can hold (GemmaBackbone: Gemma 1, Gemma 2 or VaultGemma): the norm placement and QK-norm first; then a
    family that can hold sliding windows and soft caps when the config has them, and among the rest the one whose
    soft caps are the config's (pre-norm without caps or windows: Gemma 1; with them: VaultGemma)."""
    rows = by_keras_backbone(cls)
    placement = {(True, True): "pre+post", (False, False): "pre"}.get((post_attn, post_ffw))
    caps = (c.get("attention_logit_soft_cap"), c.get("final_logit_soft_cap"))
    bidirectional = bool(c.get("use_bidirectional_attention"))
    fits = [f for f in rows if f.rules.norm_placement == placement
            and (f.rules.attention_mask == "bidirectional") == bidirectional
            and not (f.rules.qk_norm and not c.get("use_query_key_norm", True))
            and (_holds_windows(f) or not (sliding_on or any(caps)))]
    same_caps = [f for f in fits if (f.rules.attention_logit_softcap, f.rules.final_logit_softcap) == caps]
    if same_caps or fits:
        return (same_caps or fits)[0]
    if len(rows) > 1:  # a config between two of the backbone's families
        raise UnsupportedError(f"{path}: a {cls} with only some {_windowed_row(rows[0]).title} features "
                               f"(post norms {post_attn}/{post_ffw}, sliding {sliding_on}) has no HF equivalent")
    needs = ["post norms"] * (rows[0].rules.norm_placement == "pre+post") + ["QK-norm"] * rows[0].rules.qk_norm
    raise UnsupportedError(f"{path}: a {cls} without {' or '.join(needs)} is not supported")


def _published_context(row: Family, hidden: int, layers: int) -> int:
    """Context length of the published model with these sizes, else the family's usual value."""
    name = card_of_shape(row.key, hidden_size=hidden, num_layers=layers)
    if name is not None:
        return card(name).max_position_embeddings
    return row.defaults.get("max_position_embeddings",
                            GemmaSpec.__dataclass_fields__["max_position_embeddings"].default)


# ----------------------------------------------------------------------------- H5 datasets -> canonical tensors
# (finding the weights files, walking them and reading datasets is keras_h5's)


def _block_re() -> re.Pattern[str]:
    """A decoder block's group: any backbone's block class (at most 6 digits of suffix: int() takes them)."""
    return _block_pattern(_keras_ids("block"))


@lru_cache(maxsize=None)
def _block_pattern(blocks: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"^layers/(%s)(?:_(\d{1,6}))?$" % "|".join(re.escape(b) for b in blocks))


_BLOCK_NAME_RE = re.compile(r"^decoder_block_(\d{1,6})$")


def _map_datasets(datasets: dict[str, H5Var], names: dict[str, str], where: str) -> tuple[
        dict[str, tuple[str, H5Var]], dict[str, H5Var]]:
    """Dataset path -> (canonical name, var); plus datasets that are not Gemma weights."""
    mapped: dict[str, tuple[str, H5Var]] = {}
    unknown: dict[str, H5Var] = {}
    block_re = _block_re()
    for dpath, var in datasets.items():
        top = next((v for v in TOP_VARS + HEAD_VARS if dpath == "layers/" + v.path), None)
        if top is not None:
            name_attr = names.get(dpath.rsplit("/", 1)[0])
            if name_attr not in (None, top.layer_name):
                raise InputError(where, f"{dpath} belongs to layer {name_attr!r}, expected {top.layer_name!r}")
            mapped[dpath] = (top.role if top in HEAD_VARS else canonical_name(top.role), var)
            continue
        parts = dpath.split("/")
        block = "/".join(parts[:2])
        m = block_re.match(block)
        rel = "/".join(parts[2:])
        if not m:
            unknown[dpath] = var
            continue
        block_attr = names.get(block + "/vars")
        bm = _BLOCK_NAME_RE.match(block_attr or "")
        index = int(bm.group(1)) if bm else int(m.group(2) or 0)
        row = BY_PATH.get(rel)
        if row is None:
            unknown[dpath] = var
            continue
        layer_attr = names.get(dpath.rsplit("/", 1)[0])
        if layer_attr not in (None, row.layer_name):
            raise InputError(where, f"{dpath} belongs to layer {layer_attr!r}, expected {row.layer_name!r}")
        mapped[dpath] = (canonical_name(row.role, index), var)
    return mapped, unknown


def read(path: str) -> Checkpoint:
    config_path = os.path.join(path, CONFIG)
    cfg = read_json_object(config_path, "Keras config.json")
    if not looks_like_keras_config(cfg):
        raise InputError(config_path, "not a Keras backbone config (expected class_name, config, registered_name)")
    mapped_by = _mapping(by_keras_backbone(_class_of(cfg, config_path))[0])
    if mapped_by is not None:  # a backbone with a table of its own (Gemma3nBackbone)
        return mapped_by.read(path, cfg, config_path)
    datasets, names, files, where = preset_vars(path)
    dtypes = [v.dtype for v in datasets.values()]
    # What Keras configs do not store, kept by our writer in metadata.json.
    restore: dict[str, int] = {}
    settings: dict[str, Any] = {}
    add_eos = False
    meta_path = os.path.join(path, "metadata.json")
    if os.path.exists(meta_path):
        kept = read_json_object(meta_path, "metadata.json").get("gemma_inspect")
        if isinstance(kept, dict):
            restore = {k: kept[k] for k in ("max_position_embeddings", "bos_token_id", "eos_token_id",
                                            "pad_token_id") if isinstance(kept.get(k), int) and kept[k] >= 0}
            add_eos = kept.get("add_eos_token") is True  # the tokenizer appends EOS (EmbeddingGemma)
            if isinstance(kept.get("sentence_transformers"), dict):  # an embedding model's settings files
                settings = {k: v for k, v in kept["sentence_transformers"].items() if isinstance(v, dict)}
            window = kept.get("sliding_window")  # the stored window, which keras-hub's odd window stands for
            if isinstance(window, int) and not isinstance(window, bool) and window > 0:
                restore["sliding_window"] = window
    spec, notes = spec_from_config(cfg, config_path, most_common(dtypes), restore.get("max_position_embeddings"))
    if spec.sliding_window is None or restore.get("sliding_window", 0) // 2 != spec.sliding_window // 2 \
            or spec.attention_mask != "bidirectional":
        restore.pop("sliding_window", None)  # kept only where it is the same window, spelt as transformers stored it
    spec = spec.replace(**restore)
    assumed = {"max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"} - set(restore)
    mapped, unknown = _map_datasets(datasets, names, where)
    head_vars = {name: var for dpath, (name, var) in mapped.items() if name in HEAD_BY_NAME}
    mapped = {dpath: nv for dpath, nv in mapped.items() if nv[0] not in HEAD_BY_NAME}
    head, head_tensors = None, {}
    if not FAMILY_TABLE[spec.family].rules.lm_head:
        head = embedding_head(cfg["config"], spec, head_vars, config_path, where)
        head_tensors = {name: _ref(name, var) for name, var in head_vars.items()}
    elif head_vars:
        unknown.update({var.path: var for var in head_vars.values()})
    vision = {k: v for k, v in unknown.items() if "vision" in k}
    if set(unknown) - set(vision):
        extra = sorted(set(unknown) - set(vision))
        raise InputError(where, f"datasets that are no Gemma backbone weight: {', '.join(extra[:3])}"
                                + (f" (and {len(extra) - 3} more)" if len(extra) > 3 else ""))
    tensors: dict[str, TensorRef] = {}
    for dpath, (canonical, var) in mapped.items():
        if canonical in tensors:
            raise InputError(where, f"two datasets map to {canonical}: {tensors[canonical].origin} and {dpath}")
        tensors[canonical] = _ref(canonical, var)
    check_against_spec(spec, tensors, config_path, where)
    expected = expected_tensors(spec)
    for canonical, var in mapped.values():
        # The canonical shape alone is not enough: a (D, d, H) query kernel also flattens to [H*D, d].
        want = keras_shape(spec, parse_canonical(canonical)[0], expected[canonical])  # type: ignore[index]
        if var.shape != want:
            raise InputError(var.file, f"{var.path} has shape {list(var.shape)} but {config_path} implies "
                                       f"{list(want)}")
    tensors = {n: tensors[n] for n in expected}
    from ..tokenizer import find_tokenizer

    tokenizer = find_tokenizer(path, hf_json=False)
    if tokenizer is not None:
        tokenizer.add_eos = add_eos
    present = [os.path.join(path, f) for f in (CONFIG, "metadata.json", "tokenizer.json", "preprocessor.json",
                                               "task.json", SHARD_INDEX) if os.path.exists(os.path.join(path, f))]
    if tokenizer is not None and tokenizer.spm_path:
        present.append(tokenizer.spm_path)
    return Checkpoint(spec=spec, tensors=tensors, source=path, format="keras", tokenizer=tokenizer, notes=notes,
                      ignored={k: (v.shape, v.dtype) for k, v in vision.items()}, config=cfg,
                      files=present + files, assumed=frozenset(assumed), embedding_head=head,
                      head_tensors=head_tensors, head_config=settings)


def _ref(canonical: str, var: H5Var) -> TensorRef:
    parsed = parse_canonical(canonical)
    role = canonical if canonical in HEAD_BY_NAME else parsed[0] if parsed else "embed"
    layout = _var(role).layout
    stored = var.shape
    if layout == "heads_in" and len(stored) != 3:
        raise InputError(var.file, f"{var.path} has shape {list(stored)}, expected (heads, hidden, head_dim)")
    if layout == "heads_out" and len(stored) != 3:
        raise InputError(var.file, f"{var.path} has shape {list(stored)}, expected (heads, head_dim, hidden)")
    if layout == "T" and len(stored) != 2:
        raise InputError(var.file, f"{var.path} has shape {list(stored)}, expected a matrix")
    relayout = stored_layout(layout, stored)
    shape = relayout.shape if relayout is not None else stored
    span = (var.file, var.offset, var.nbytes) if relayout is None and var.offset is not None else None
    # A re-laid-out variable whose bytes lie contiguous in the file: the converter streams it band by band
    # from there (convert.tensor_pieces) rather than loading it whole.
    raw = (var.file, var.offset, var.nbytes, relayout) if relayout is not None and var.offset is not None else None

    def load() -> np.ndarray:
        arr = read_var(var, mapped=relayout is not None)
        return arr if relayout is None else relayout.apply(arr)

    return TensorRef(name=canonical, shape=shape, dtype=var.dtype, nbytes=var.nbytes,
                     origin=f"{var.file}:{var.path}", loader=load, span=span, stored=raw)


# ----------------------------------------------------------------------------- spec -> config (writing)
def keras_problems(spec: GemmaSpec) -> list[str]:
    """What keras-hub's GemmaBackbone / Gemma3Backbone cannot express about `spec` (empty: all of it)."""
    problems = []
    row = FAMILY_TABLE.get(spec.family)
    if row is None or row.keras is None:
        return [f"{spec.family} is not a Gemma family"]
    mapped_by = _mapping(row)
    if mapped_by is not None:  # judged on the HF config the backbone's config stands for
        from .hf import config_dict as hf_config_dict

        return mapped_by.keras_problems(hf_config_dict(spec))
    keras = row.keras
    if spec.query_pre_attn_scalar != spec.head_dim:
        problems.append(f"query_pre_attn_scalar is {spec.query_pre_attn_scalar}, but keras-hub's decoder blocks "
                        f"always scale queries by head_dim^-0.5 ({spec.head_dim}^-0.5) and ignore "
                        f"query_head_dim_normalize")
    if spec.activation != "gelu_tanh":
        problems.append(f"activation {spec.activation}: keras-hub Gemma always runs the tanh-approximate GELU")
    if not spec.tied_embeddings:
        problems.append("an untied output matrix: keras-hub Gemma always ties it to the embedding")
    windowed = _windowed_row(row)  # the backbone's fixed sliding-window pattern is this family's
    if spec.layer_types not in (windowed.layer_types(spec.num_layers), (FULL,) * spec.num_layers):
        problems.append(f"a sliding-window layout other than keras-hub's fixed pattern "
                        f"({_pattern_text(windowed.layer_pattern)})")
    assert keras.hard_coded_rope is not None
    local, glob = keras.hard_coded_rope
    if keras.rope_scaling_keys:  # the bases are fixed, the scaling factors are config keys
        if spec.rope_theta != glob or spec.local_rope_theta != local:
            problems.append(f"RoPE bases {spec.local_rope_theta:g}/{spec.rope_theta:g}: {keras.backbone} hard-codes "
                            f"{local:.0f} local / {glob:.0f} global")
    elif spec.rope_theta != glob or spec.local_rope_theta != local or spec.rope_scaling_factor != 1.0:
        problems.append(f"RoPE other than base {glob:.0f} without scaling: {keras.backbone} hard-codes it")
    if not _holds_windows(row) and (spec.attention_logit_softcap or spec.final_logit_softcap):
        problems.append(f"soft caps on a {row.title} layout")
    return problems


def _pattern_text(pattern: tuple[str, ...]) -> str:
    """A layer pattern in words: (sliding, full) -> 'even layers sliding'; 5 sliding then a full one ->
    '5 local : 1 global'."""
    if len(pattern) == 2 and pattern.count(SLIDING) == 1:
        return f"{'even' if pattern[0] == SLIDING else 'odd'} layers sliding"
    return f"{pattern.count(SLIDING)} local : {pattern.count(FULL)} global"


def _dtype_policy(dtype: str) -> dict[str, Any]:
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": dtype}, "registered_name": None}


# The order in which keras-hub's backbones write their own config keys (before the shared ones).
_CONFIG_ORDER = ("name", "trainable", "dtype", "image_size", "intermediate_dim", "use_query_key_norm",
                 "local_rope_scaling_factor", "global_rope_scaling_factor", "vision_encoder",
                 "use_bidirectional_attention", "is_embedding_model", "pooling_intermediate_dim", "embedding_dim")


def config_dict(spec: GemmaSpec, head: EmbeddingHead | None = None) -> dict[str, Any]:
    """The backbone `config.json` keras-hub writes for such a model (an embedding model's head widths from
    `head`)."""
    row = _keras_row(spec.family)
    keras = row.keras
    assert keras is not None
    sliding = SLIDING in spec.layer_types
    common = {
        "vocabulary_size": spec.vocab_size,
        "num_layers": spec.num_layers,
        "num_query_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "hidden_dim": spec.hidden_size,
        "head_dim": spec.head_dim,
        "layer_norm_epsilon": spec.rms_norm_eps,
        "dropout": 0,
        "query_head_dim_normalize": True,
        "use_post_ffw_norm": spec.norm_placement == "pre+post",
        "use_post_attention_norm": spec.norm_placement == "pre+post",
        "final_logit_soft_cap": spec.final_logit_softcap,
        "attention_logit_soft_cap": spec.attention_logit_softcap,
        "sliding_window_size": keras_window(spec) or _windowed_row(row).defaults.get("sliding_window"),
        "use_sliding_window_attention": sliding,
    }
    own: dict[str, Any] = {
        "name": f"{keras.prefix}_backbone", "trainable": True, "dtype": _dtype_policy(spec.dtype),
        # GemmaBackbone.intermediate_dim counts both GeGLU branches: 2 * F.
        "intermediate_dim": spec.intermediate_size * (2 if keras.intermediate_both_branches else 1),
        **keras.config_extras,
    }
    if keras.rope_scaling_keys:
        own.update(local_rope_scaling_factor=spec.rope_local_scaling_factor,
                   global_rope_scaling_factor=spec.rope_scaling_factor)
    if own.get("is_embedding_model") and head is not None and len(head.dense) == 2:
        own.update(pooling_intermediate_dim=head.dense[0].out_features, embedding_dim=head.dense[1].out_features)
    ordered = sorted(own, key=lambda k: _CONFIG_ORDER.index(k) if k in _CONFIG_ORDER else len(_CONFIG_ORDER))
    config = {**{k: own[k] for k in ordered}, **common}
    cls = keras.backbone
    return {"module": keras.module, "class_name": cls, "config": config, "registered_name": f"keras_hub>{cls}"}


# ----------------------------------------------------------------------------- writing


def _role_layer(canonical: str) -> tuple[str, int | None]:
    """(role, layer) of a canonical name; a head tensor's role is its own name (HEAD_VARS)."""
    if canonical in HEAD_BY_NAME:
        return canonical, None
    return parse_canonical(canonical)  # type: ignore[return-value]


def _h5_path(spec: GemmaSpec, canonical: str) -> str:
    role, layer = _role_layer(canonical)
    var = _var(role)
    return f"layers/{var.path}" if layer is None else f"{block_group(spec, layer)}/{var.path}"


def _h5_entry(spec: GemmaSpec, canonical: str, path: str, shape: tuple[int, ...], dtype: str) -> tuple[Any, ...]:
    """keras_h5.create_h5's entry for a tensor: its path, the layer name Keras writes, its block's vars group."""
    role, layer = _role_layer(canonical)
    block = None if layer is None else (block_group(spec, layer) + "/vars", f"decoder_block_{layer}")
    return path, _var(role).layer_name, block, shape, dtype, None


def refuse_unless_forced(ckpt: Checkpoint, problems: list[str], options: Any) -> None:
    """What keras-hub cannot express: refused in one line, or converted under --force with a note."""
    if problems:
        if not options.force:
            raise UnsupportedError(f"{ckpt.source}: keras-hub cannot express this checkpoint: {'; '.join(problems)}"
                                   f" (use --force to convert anyway)")
        options.notes.append("converted with --force although keras-hub cannot express: " + "; ".join(problems))


def write(ckpt: Checkpoint, dest: str, options: Any, progress: Any) -> None:
    """Write `ckpt` as a KerasHub preset (backbone, and CausalLM files when a tokenizer exists)."""
    import json

    from ..tensorio import ShardedOutput, target_nbytes
    from .keras_preset import write_keras_tokenizer, write_metadata

    spec = ckpt.spec
    mapped_by = _mapping(_keras_row(spec.family))
    if mapped_by is not None:  # a backbone with a table of its own (Gemma3nBackbone)
        return mapped_by.write(ckpt, dest, options, progress)
    embedding = not _keras_row(spec.family).rules.lm_head
    problems = keras_problems(spec) + (head_problems(ckpt.embedding_head) if embedding else [])
    if embedding and (ckpt.embedding_head is None or len(ckpt.embedding_head.dense) != 2):
        raise UnsupportedError(f"{ckpt.source}: keras-hub cannot express this checkpoint: {'; '.join(problems)}")
    refuse_unless_forced(ckpt, problems, options)
    declared = options.dtype if options.dtype != "keep" else spec.dtype

    rows = []
    # the transformer's tensors, then an embedding model's two head kernels (a bias, refused above, is left out)
    sources = {**ckpt.tensors, **{n: r for n, r in ckpt.head_tensors.items() if n in HEAD_BY_NAME and embedding}}
    for name, ref in sources.items():
        role = _role_layer(name)[0]
        if role == "lm_head":
            continue  # refused above unless --force: Keras ties the output to the embedding
        dt = options.float_dtype(ref)
        rows.append((name, _h5_path(spec, name), keras_shape(spec, role, ref.shape), dt, role))
    sizes = [(r[0], target_nbytes(sources[r[0]], r[3])) for r in rows]
    out = ShardedOutput(sizes, options.max_shard_size or DEFAULT_MAX_SHARD, WEIGHTS, "model_{index:05d}.weights.h5")
    by_name = {r[0]: r for r in rows}
    os.makedirs(dest)
    for fname, shard in out:
        file = os.path.join(dest, fname)
        offsets = create_h5(file, [_h5_entry(spec, n, *by_name[n][1:4]) for n in shard])
        jobs = [((n, sources[n], by_name[n][3], write_layout(spec, by_name[n][4], sources[n].shape)), by_name[n][1])
                for n in shard]
        fill_h5(file, fname, jobs, offsets, out, progress)
    if out.sharded:  # keras-hub writes the total as a float and indents by 4, without a final newline
        out.write_index(dest, SHARD_INDEX, indent=4, newline=False, total_size=float(out.total_size))
    backbone = config_dict(spec.replace(dtype=declared), ckpt.embedding_head)
    with open(os.path.join(dest, CONFIG), "w", encoding="utf-8") as f:
        json.dump(backbone, f, indent=4)

    # What a Keras config cannot hold, kept so that converting back restores it exactly.
    kept: dict[str, Any] = {"max_position_embeddings": spec.max_position_embeddings,
                            "bos_token_id": spec.bos_token_id, "eos_token_id": spec.eos_token_id,
                            "pad_token_id": spec.pad_token_id, "converted_from": ckpt.format}
    if embedding:  # the window as transformers stores it, and sentence-transformers' settings files
        kept.update(sliding_window=spec.sliding_window, sentence_transformers=ckpt.head_config)
    if ckpt.tokenizer is not None and ckpt.tokenizer.adds_eos:  # keras-hub's tokenizer config cannot say it
        kept["add_eos_token"] = True
    write_metadata(dest, spec.num_parameters, ["TextEmbedder"] if embedding else ["CausalLM"], kept)
    if ckpt.tokenizer is None:
        options.notes.append("the source has no tokenizer: weights and config converted, no tokenizer files "
                             "written (Backbone.from_preset works, CausalLM.from_preset needs a tokenizer)")
    else:
        options.notes.extend(write_keras_tokenizer(ckpt.tokenizer, dest, spec.family, declared, backbone,
                                                   task=not embedding))


# ----------------------------------------------------------------------------- the format contract (common.FormatInfo)
from .common import FormatInfo  # noqa: E402

FORMAT = FormatInfo(
    name="keras", title="Keras",
    description="a KerasHub/Keras-NLP preset directory (config.json + model.weights.h5 or model.weights.json)",
    stores_quantization=False, native_runtime="keras",
    member_files=(CONFIG, WEIGHTS, SHARD_INDEX, "metadata.json", "tokenizer.json", "preprocessor.json", "task.json",
                  os.path.join("assets", "tokenizer", "vocabulary.spm")),
    weight_files=(WEIGHTS, SHARD_INDEX), ambiguous=((WEIGHTS, SHARD_INDEX),),
    config_sniff=looks_like_keras_config, config_hint="'class_name'/'config' (KerasHub preset)")
