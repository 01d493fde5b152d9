"""The sentence-transformers layout of an HF directory: modules.json and the module folders it names.

sentence-transformers 5 (`SentenceTransformer.save`) writes modules.json, a list of {"idx", "name", "path", "type"}
in pipeline order; the Transformer module is saved at the top level (path ""), as transformers' save_pretrained
writes it, plus sentence_bert_config.json; each other module gets a folder "<idx>_<Class>": Pooling and Dense a
config.json of their settings, Dense also model.safetensors (`linear.weight` [out, in], `linear.bias` when
`bias`), Normalize nothing. config_sentence_transformers.json holds prompts and the similarity function.

Only headers and small JSON files are read; each problem is an InputError naming the file.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import InputError, UnsupportedError
from ..heads import DenseLayer, EmbeddingHead
from .common import read_json, safe_child, show
from .safetensors_io import read_header

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


__all__ = ["MODULES", "ST_CONFIG", "BERT_CONFIG", "MEMBER_FILES", "has_modules", "read_head"]
