"""The files of a keras-hub CausalLM preset beyond the backbone: the SentencePiece asset and the tokenizer,
preprocessor and task configs (module and class names from the family row's KerasIds). Part of the Keras format:
keras.py's writer calls `write_keras_tokenizer`."""

from __future__ import annotations

import os
from typing import Any

from ..families import family as family_row
from ..tokenizer import Tokenizer


def _keras_layer(module: str, cls: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"module": module, "class_name": cls, "config": config, "registered_name": f"keras_hub>{cls}"}


def _policy(name: str) -> dict[str, Any]:
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": name}, "registered_name": None}


def keras_tokenizer_configs(tok: Tokenizer, family: str, dtype: str, backbone: dict[str, Any]) -> dict[str, Any]:
    """tokenizer.json, preprocessor.json and task.json of a keras-hub Gemma CausalLM preset (module and class
    names from the family row's KerasIds)."""
    ids = family_row(family).keras
    if ids is None:
        raise ValueError(f"{family} has no keras-hub classes")
    prefix, cls = ids.prefix, ids.class_prefix
    tok_cls = f"{cls}Tokenizer"
    tok_cfg: dict[str, Any] = {"name": f"{prefix}_tokenizer", "trainable": True, "dtype": _policy("int32"),
                               "config_file": "tokenizer.json", "proto": None, "sequence_length": None,
                               "add_bos": False, "add_eos": False}
    if ids.vision_tokens:
        # keras-hub's Gemma3Tokenizer needs <img>, <start_of_image>, <end_of_image> unless told otherwise.
        tok_cfg["has_vision_tokens"] = all(tok.token_to_id(t) is not None for t in ids.vision_tokens)
    for flag, tokens in ids.token_flags.items():  # each set of optional special tokens the class registers
        tok_cfg[flag] = all(tok.token_to_id(t) is not None for t in tokens)
    tokenizer = _keras_layer(f"keras_hub.src.models.{prefix}.{prefix}_tokenizer", tok_cls, tok_cfg)
    pre_cls = f"{cls}CausalLMPreprocessor"
    pre_cfg: dict[str, Any] = {"name": f"{prefix}_causal_lm_preprocessor", "trainable": True,
                               "dtype": _policy(dtype), "tokenizer": tokenizer, "config_file": "preprocessor.json",
                               "sequence_length": 1024, "add_start_token": True, "add_end_token": True}
    if ids.vision_tokens:  # a multimodal preprocessor's defaults (keras-hub's Gemma3CausalLMPreprocessor)
        pre_cfg.update(num_vision_tokens_per_image=256, max_images_per_prompt=2)
    preprocessor = _keras_layer(f"keras_hub.src.models.{prefix}.{prefix}_causal_lm_preprocessor", pre_cls, pre_cfg)
    task_cls = f"{cls}CausalLM"
    task = _keras_layer(f"keras_hub.src.models.{prefix}.{prefix}_causal_lm", task_cls,
                        {"backbone": backbone, "preprocessor": preprocessor, "name": f"{prefix}_causal_lm"})
    return {"tokenizer.json": tokenizer, "preprocessor.json": preprocessor, "task.json": task}


def write_keras_tokenizer(tok: Tokenizer, dest: str, family: str, dtype: str, backbone: dict[str, Any],
                          task: bool = True) -> list[str]:
    """assets/tokenizer/vocabulary.spm plus the Keras tokenizer/preprocessor/task configs (`task` False: the
    tokenizer's alone, for a backbone that is no CausalLM: an embedding model)."""
    import json

    model_bytes, rebuilt = tok.spm_or_rebuilt()
    if model_bytes is None:
        return ["the source tokenizer has no SentencePiece model and it could not be rebuilt from "
                "tokenizer.json: Keras needs one, so no tokenizer was written (Backbone loads; CausalLM does not)"]
    notes = ["rebuilt the SentencePiece model from tokenizer.json (ids checked equal on the parity texts)"] \
        if rebuilt else []
    tok = Tokenizer(source=tok.source, spm_bytes=model_bytes)
    assets = os.path.join(dest, "assets", "tokenizer")
    os.makedirs(assets, exist_ok=True)
    with open(os.path.join(assets, "vocabulary.spm"), "wb") as f:
        f.write(tok.spm_model_bytes())
    for name, obj in keras_tokenizer_configs(tok, family, dtype, backbone).items():
        if not task and name != "tokenizer.json":
            continue
        with open(os.path.join(dest, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=4)
    return notes


def write_metadata(dest: str, parameters: int, tasks: list[str], kept: dict[str, Any]) -> None:
    """metadata.json as keras-hub's save_to_preset writes it (library versions, parameter count, date, tasks), with
    `kept` under "gemma_inspect": what a Keras config cannot hold, so that converting back restores it exactly."""
    import datetime
    import json
    from importlib import metadata

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    meta = {"keras_version": version("keras"), "keras_hub_version": version("keras-hub"),
            "parameter_count": parameters, "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
            "tasks": tasks, "gemma_inspect": kept}
    with open(os.path.join(dest, "metadata.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=4)


def write_preset(ckpt: Any, dest: str, options: Any, progress: Any, rows: list[tuple[Any, ...]],
                 backbone: dict[str, Any], declared: str, kept: dict[str, Any], block_vars: Any,
                 groups: dict[str, str] | None = None) -> None:
    """Write a planned keras-hub preset (the writers of Gemma 3n's and Gemma 4's backbones): the weights file(s)
    in keras-hub's order, sharded as keras-hub shards (model.weights.json), config.json, metadata.json (`kept`: what
    a Keras config cannot hold) and, with a tokenizer, the CausalLM files.

    rows: (key, H5 path, layer name, Keras shape, dtype, source ref, layout) per variable, in file order;
    block_vars(path): the block's vars group and name (keras_h5.create_h5)."""
    import json

    from ..tensorio import ShardedOutput, target_nbytes
    from .keras_h5 import DEFAULT_MAX_SHARD, SHARD_INDEX, WEIGHTS, create_h5, fill_h5

    sizes = [(r[0], target_nbytes(r[5], r[4])) for r in rows]
    out = ShardedOutput(sizes, options.max_shard_size or DEFAULT_MAX_SHARD, WEIGHTS, "model_{index:05d}.weights.h5")
    by_key = {r[0]: r for r in rows}
    os.makedirs(dest)
    for fname, shard in out:
        file = os.path.join(dest, fname)
        offsets = create_h5(file, [(by_key[k][1], by_key[k][2], block_vars(by_key[k][1]), *by_key[k][3:6])
                                   for k in shard], groups=groups)
        streamed = [k for k in shard if by_key[k][1] in offsets]
        for k in shard:
            if k not in streamed:  # a scalar, written with the file's metadata
                out.record("/" + by_key[k][1].rsplit("/", 1)[0], fname)
        jobs = [((k, by_key[k][5], by_key[k][4], by_key[k][6]), by_key[k][1]) for k in streamed]
        fill_h5(file, fname, jobs, offsets, out, progress)
    if out.sharded:  # keras-hub writes the total as a float and indents by 4, without a final newline
        out.write_index(dest, SHARD_INDEX, indent=4, newline=False, total_size=float(out.total_size))
    with open(os.path.join(dest, "config.json"), "w", encoding="utf-8") as f:
        json.dump(backbone, f, indent=4)
    write_metadata(dest, ckpt.spec.num_parameters, ["CausalLM"], {**kept, "converted_from": ckpt.format})
    if ckpt.tokenizer is None:
        options.notes.append("the source has no tokenizer: weights and config converted, no tokenizer files "
                             "written (Backbone.from_preset works, CausalLM.from_preset needs a tokenizer)")
    else:
        options.notes.extend(write_keras_tokenizer(ckpt.tokenizer, dest, ckpt.spec.family, declared, backbone))


def kept_values(path: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """What our writer kept in metadata.json (under "gemma_inspect") of `keys`, the values a Keras config cannot hold:
    non-negative integers only, anything else left out (the reader then assumes it and says so)."""
    from .common import read_json_object

    meta_path = os.path.join(path, "metadata.json")
    if not os.path.exists(meta_path):
        return {}
    kept = read_json_object(meta_path, "metadata.json").get("gemma_inspect")
    if not isinstance(kept, dict):
        return {}
    return {k: kept[k] for k in keys if isinstance(kept.get(k), int) and not isinstance(kept[k], bool) and kept[k] >= 0}


def backbone_fields(cfg: dict[str, Any], path: str, backbone: str, required: tuple[str, ...] | list[str],
                    defaults: dict[str, Any]) -> dict[str, Any]:
    """The fields of a Keras backbone config (its "config" object), the `required` ones checked present and
    keras-hub's `defaults` filled in for the others."""
    from ..errors import InputError

    c = cfg.get("config")
    if not isinstance(c, dict):
        raise InputError(path, "Keras config has no 'config' object")
    missing = [k for k in required if k not in c]
    if missing:
        raise InputError(path, f"{backbone} config lacks {', '.join(missing)}")
    return {**defaults, **c}


def text_decoder_only(other: dict[str, Any], multimodal: bool, where: str, backbone: str) -> None:
    """Datasets that are no text-decoder weight are an error, unless the preset declares encoders (then ignored)."""
    from ..errors import InputError

    if other and not multimodal:
        extra = sorted(other)
        raise InputError(where, f"datasets that are no {backbone} text-decoder weight: {', '.join(extra[:3])}"
                                + (f" (and {len(extra) - 3} more)" if len(extra) > 3 else ""))


def preset_checkpoint(path: str, cfg: dict[str, Any], spec: Any, tensors: dict[str, Any], notes: list[str],
                      ignored: dict[str, Any], files: list[str], keys: tuple[str, ...], restore: dict[str, Any]) -> Any:
    """The Checkpoint of a planned backbone's preset (Gemma 3n, Gemma 4): its tokenizer, the files it consists of,
    and which of `keys` were assumed (not in metadata.json)."""
    from ..checkpoint import Checkpoint
    from ..tokenizer import find_tokenizer
    from .keras_h5 import SHARD_INDEX

    tokenizer = find_tokenizer(path, hf_json=False)
    present = [os.path.join(path, f) for f in ("config.json", "metadata.json", "tokenizer.json", "preprocessor.json",
                                               "task.json", SHARD_INDEX) if os.path.exists(os.path.join(path, f))]
    if tokenizer is not None and tokenizer.spm_path:
        present.append(tokenizer.spm_path)
    assumed = frozenset(k for k in keys if k not in restore)
    return Checkpoint(spec=spec, tensors=tensors, source=path, format="keras", tokenizer=tokenizer, notes=notes,
                      ignored=ignored, config=cfg, files=present + files, assumed=assumed)


def open_planned_preset(path: str, cfg: dict[str, Any], config_path: str, keys: tuple[str, ...], hf_config: Any,
                        map_datasets: Any, encoder_keys: tuple[str, ...], backbone: str) -> tuple[Any, ...]:
    """What the readers of Gemma 3n's and Gemma 4's presets start from: the values metadata.json kept (`keys`), the
    HF text config the Keras config stands for (`hf_config`) and the spec read from it, the weight datasets mapped
    by `map_datasets`, anything else an error unless the config declares an encoder (`encoder_keys`: then set
    aside). Returns restore, hf_cfg, notes, spec, files, where, mapped, ignored."""
    from . import hf as hf_format
    from .common import most_common
    from .keras_h5 import preset_vars

    restore = kept_values(path, keys)
    hf_cfg, notes = hf_config(cfg, config_path, restore)
    datasets, names, files, where = preset_vars(path)
    if "dtype" not in hf_cfg:
        hf_cfg["dtype"] = most_common([v.dtype for v in datasets.values()]) or "float32"
    spec, more = hf_format.spec_from_config(hf_cfg, config_path, hf_cfg["dtype"])
    mapped, other = map_datasets(datasets, names, where)
    text_decoder_only(other, any(cfg["config"].get(k) for k in encoder_keys), where, backbone)
    return (restore, hf_cfg, notes + more, spec, files, where, mapped,
            {k: (v.shape, v.dtype) for k, v in other.items()})

