"""The sentence-transformers layout of an HF directory: modules.json and the module folders it names.

sentence-transformers 5 (`SentenceTransformer.save`) writes modules.json, a list of {"idx", "name", "path", "type"}
in pipeline order; the Transformer module is saved at the top level (path ""), as transformers' save_pretrained
writes it, plus sentence_bert_config.json; each other module gets a folder "<idx>_<Class>": Pooling and Dense a
config.json of their settings, Dense also model.safetensors (`linear.weight` [out, in], `linear.bias` when
`bias`), Normalize nothing. config_sentence_transformers.json holds prompts and the similarity function.

Only headers and small JSON files are read; each problem is an InputError naming the file. `write_modules` writes
the same layout for any checkpoint with an embedding head (the heads' tensors under their canonical names,
heads.dense_name), so that sentence-transformers and transformers' AutoModel load the directory.
"""

from __future__ import annotations

import os
from typing import Any

from ..checkpoint import TensorRef
from ..errors import InputError, UnsupportedError
from ..heads import DenseLayer, EmbeddingHead, dense_name
from .common import read_json, safe_child, show
from .safetensors_io import StEntry, read_array, read_header

MODULES = "modules.json"
ST_CONFIG = "config_sentence_transformers.json"
BERT_CONFIG = "sentence_bert_config.json"
MEMBER_FILES = (MODULES, ST_CONFIG, BERT_CONFIG)

PREFIX = "sentence_transformers.models."
TRANSFORMER, POOLING, DENSE, NORMALIZE = "Transformer", "Pooling", "Dense", "Normalize"
# Pooling's config keys -> sentence-transformers' name of the mode (Pooling.get_pooling_mode_str's order)
POOLING_MODES = (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                 ("pooling_mode_max_tokens", "max"), ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
                 ("pooling_mode_weightedmean_tokens", "weightedmean"), ("pooling_mode_lasttoken", "lasttoken"))


def has_modules(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MODULES))


def read_head(path: str, hidden_size: int) -> EmbeddingHead:
    """The modules after the Transformer, checked against each other, their weights and the transformer's width."""
    where = os.path.join(path, MODULES)
    listing = read_json(where, MODULES)
    if not isinstance(listing, list) or not listing or not all(isinstance(m, dict) for m in listing):
        raise InputError(where, f"must be a non-empty list of modules ({{idx, name, path, type}}), got {show(listing)}")
    kinds: list[str] = []
    pooling: tuple[str, int, bool] | None = None
    dense: list[DenseLayer] = []
    normalize = False
    width = hidden_size  # what the next module reads
    for n, m in enumerate(listing):
        kind = m.get("type")
        if not isinstance(kind, str) or not kind.startswith(PREFIX) or \
                kind[len(PREFIX):] not in (TRANSFORMER, POOLING, DENSE, NORMALIZE):
            raise UnsupportedError(f"{where}: module {n} has type {show(kind)}; supported: "
                                   f"{', '.join(PREFIX + k for k in (TRANSFORMER, POOLING, DENSE, NORMALIZE))}")
        kind = kind[len(PREFIX):]
        rel = m.get("path")
        if not isinstance(rel, str):
            raise InputError(where, f"module {n} ({kind}) has no path string, got {show(rel)}")
        if n == 0:
            if kind != TRANSFORMER or rel != "":
                raise UnsupportedError(f"{where}: the first module must be the Transformer saved at the top level "
                                       f"(path \"\"), got {kind} at {rel!r}")
            kinds.append(kind)
            continue
        if kind == TRANSFORMER:
            raise UnsupportedError(f"{where}: module {n} is a second Transformer")
        folder = safe_child(path, rel, where)
        # (Normalize saves nothing: its folder is empty locally and absent from a hub repository, git keeping no
        # empty folders; sentence-transformers loads it without reading the folder)
        if kind != NORMALIZE and not os.path.isdir(folder):
            raise InputError(where, f"names module folder {rel!r} ({kind}), which does not exist")
        kinds.append(kind)
        if kind == POOLING:
            if pooling is not None or dense or normalize:
                raise UnsupportedError(f"{where}: a Pooling module at position {n}; supported: one Pooling right "
                                       f"after the Transformer")
            pooling = _pooling(folder, width)
            width = len(pooling[0].split("+")) * pooling[1]
        elif kind == DENSE:
            if pooling is None or normalize:
                raise UnsupportedError(f"{where}: a Dense module at position {n} reads no pooled embedding "
                                       f"(supported: Pooling, Dense..., Normalize)")
            layer = _dense(folder, rel, width)
            dense.append(layer)
            width = layer.out_features
        else:
            if pooling is None:
                raise UnsupportedError(f"{where}: a Normalize module before any Pooling")
            normalize = True
    if pooling is None:
        raise UnsupportedError(f"{where}: no Pooling module: the token states are not turned into one embedding")
    return EmbeddingHead(pooling=pooling[0], word_embedding_dimension=pooling[1], include_prompt=pooling[2],
                         dense=tuple(dense), normalize=normalize, modules=tuple(kinds))


def _config(folder: str, kind: str) -> tuple[str, dict[str, Any]]:
    cpath = os.path.join(folder, "config.json")
    if not os.path.isfile(cpath):
        raise InputError(folder, f"no config.json (the {kind} module's settings)")
    cfg = read_json(cpath, f"{kind} config")
    if not isinstance(cfg, dict):
        raise InputError(cpath, f"must be a JSON object, got {show(cfg)}")
    return cpath, cfg


def _positive_int(cfg: dict[str, Any], key: str, cpath: str) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise InputError(cpath, f"{key} must be a positive integer, got {show(v)}")
    return v


def _flag(cfg: dict[str, Any], key: str, cpath: str, default: bool) -> bool:
    v = cfg.get(key, default)
    if not isinstance(v, bool):
        raise InputError(cpath, f"{key} must be true or false, got {show(v)}")
    return v


def _pooling(folder: str, width: int) -> tuple[str, int, bool]:
    cpath, cfg = _config(folder, POOLING)
    dim = _positive_int(cfg, "word_embedding_dimension", cpath)
    if dim != width:
        raise InputError(cpath, f"word_embedding_dimension {dim} is not the transformer's hidden_size {width}")
    modes = [name for key, name in POOLING_MODES if _flag(cfg, key, cpath, key == "pooling_mode_mean_tokens")]
    if not modes:
        raise InputError(cpath, "selects no pooling mode (every pooling_mode_* is false)")
    return "+".join(modes), dim, _flag(cfg, "include_prompt", cpath, True)


def _dense(folder: str, rel: str, width: int) -> DenseLayer:
    cpath, cfg = _config(folder, DENSE)
    n_in = _positive_int(cfg, "in_features", cpath)
    n_out = _positive_int(cfg, "out_features", cpath)
    bias = _flag(cfg, "bias", cpath, True)
    act = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")  # Dense's default: nn.Tanh()
    if not isinstance(act, str):
        raise InputError(cpath, f"activation_function must be a class path, got {show(act)}")
    if n_in != width:
        raise InputError(cpath, f"in_features {n_in} does not match the {width} features the module before it "
                                f"gives")
    wpath = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(wpath):
        other = " (pytorch_model.bin is not read: pickles are not loaded here)" \
            if os.path.exists(os.path.join(folder, "pytorch_model.bin")) else ""
        raise InputError(folder, f"no model.safetensors: the Dense module's weights are missing{other}")
    entries, _meta = read_header(wpath)
    want = {"linear.weight": (n_out, n_in)} | ({"linear.bias": (n_out,)} if bias else {})
    for name, shape in want.items():
        if name not in entries:
            raise InputError(wpath, f"has no {name} (config.json: bias {str(bias).lower()})")
        if tuple(entries[name].shape) != shape:
            raise InputError(wpath, f"{name} has shape {list(entries[name].shape)} but {rel}/config.json "
                                    f"(in_features {n_in}, out_features {n_out}) implies {list(shape)}")
    extra = sorted(set(entries) - set(want))
    if extra:
        raise InputError(wpath, f"tensors not described by {rel}/config.json: {', '.join(extra[:3])}")
    return DenseLayer(in_features=n_in, out_features=n_out, bias=bias, activation_function=act, path=rel,
                      dtype=entries["linear.weight"].dtype)


def read_head_tensors(path: str, head: EmbeddingHead) -> dict[str, TensorRef]:
    """The Dense modules' weights (and biases) under their canonical names, read lazily from each module's
    model.safetensors (stored [out, in]: the canonical layout, streamed as it is)."""
    out: dict[str, TensorRef] = {}
    for k, d in enumerate(head.dense):
        wpath = os.path.join(path, d.path, "model.safetensors")
        entries, _meta = read_header(wpath)
        for part in ("weight", "bias") if d.bias else ("weight",):
            out[dense_name(k, part)] = _ref(dense_name(k, part), wpath, entries[f"linear.{part}"])
    return out


def _ref(canonical: str, fpath: str, entry: StEntry) -> TensorRef:
    return TensorRef(name=canonical, shape=entry.shape, dtype=entry.dtype, nbytes=entry.nbytes,
                     origin=f"{fpath}:{entry.name}", loader=lambda: read_array(fpath, entry),
                     span=(fpath, entry.start, entry.nbytes))


def read_settings(path: str) -> dict[str, Any]:
    """sentence-transformers' settings files of the directory, as stored ({file name: JSON object})."""
    out = {}
    for name in (ST_CONFIG, BERT_CONFIG):
        where = os.path.join(path, name)
        if os.path.isfile(where):
            obj = read_json(where, name)
            if not isinstance(obj, dict):
                raise InputError(where, f"must be a JSON object, got {show(obj)}")
            out[name] = obj
    return out


# ----------------------------------------------------------------------------- writing
def default_settings(max_seq_length: int) -> dict[str, Any]:
    """The settings files for a head whose source kept none (keras-hub and GGUF store no prompts): no prompts,
    cosine similarity, sequences up to the context length."""
    return {ST_CONFIG: {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
                        "similarity_fn_name": "cosine"},
            BERT_CONFIG: {"max_seq_length": max_seq_length, "do_lower_case": False}}


def pooling_config(head: EmbeddingHead) -> dict[str, Any]:
    """1_Pooling/config.json: every pooling_mode_* flag, true for the head's modes."""
    modes = set(head.pooling.split("+"))
    return {"word_embedding_dimension": head.word_embedding_dimension,
            **{key: name in modes for key, name in POOLING_MODES}, "include_prompt": head.include_prompt}


def write_modules(head: EmbeddingHead, tensors: dict[str, TensorRef], settings: dict[str, Any], dest: str,
                  options: Any, progress: Any) -> None:
    """modules.json, the module folders (<idx>_Pooling, <idx>_Dense with config.json and model.safetensors holding
    `linear.weight` [out, in] and `linear.bias`, <idx>_Normalize) and the settings files, into the directory `dest`
    where the Transformer is saved at the top level."""
    import json

    from ..tensorio import prefetched
    from .safetensors_io import SafetensorsWriter

    def dump(where: str, obj: Any, indent: int) -> None:
        with open(where, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent)

    kinds = [TRANSFORMER, POOLING] + [DENSE] * len(head.dense) + [NORMALIZE] * head.normalize
    listing = [{"idx": i, "name": str(i), "path": "" if i == 0 else f"{i}_{k}", "type": PREFIX + k}
               for i, k in enumerate(kinds)]
    for m in listing[1:]:
        os.makedirs(os.path.join(dest, m["path"]))
    dump(os.path.join(dest, listing[1]["path"], "config.json"), pooling_config(head), 4)
    for k, (d, m) in enumerate(zip(head.dense, listing[2:])):
        folder = os.path.join(dest, m["path"])
        dump(os.path.join(folder, "config.json"), {"in_features": d.in_features, "out_features": d.out_features,
                                                   "bias": d.bias, "activation_function": d.activation_function}, 4)
        parts = [(f"linear.{p}", tensors[dense_name(k, p)]) for p in (("weight", "bias") if d.bias else ("weight",))]
        dtypes = {n: options.float_dtype(r) for n, r in parts}
        with SafetensorsWriter(os.path.join(folder, "model.safetensors"), [(n, dtypes[n], r.shape) for n, r in parts],
                               {"format": "pt"}) as w:
            for n, pieces in prefetched((n, r, dtypes[n], None) for n, r in parts):
                w.add(n, pieces, progress)
    dump(os.path.join(dest, MODULES), listing, 2)
    dump(os.path.join(dest, ST_CONFIG), settings[ST_CONFIG], 2)
    dump(os.path.join(dest, BERT_CONFIG), settings[BERT_CONFIG], 4)


__all__ = ["MODULES", "ST_CONFIG", "BERT_CONFIG", "MEMBER_FILES", "has_modules", "read_head", "read_head_tensors",
           "read_settings", "default_settings", "pooling_config", "write_modules"]
