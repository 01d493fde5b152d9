"""Format detection and the registry of readers/writers. Nothing outside `formats/` talks to a format.

Each format module owns: `read(path) -> Checkpoint` and, where supported, `write(...)`.
Modules are imported only when used, so `--help` and `summary` stay light.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from ..checkpoint import Checkpoint, card_checkpoint
from ..errors import GemmaInspectError, InputError
from ..spec import CARD_NAMES, is_card, suggest_card

FORMATS = ("hf", "keras", "gguf", "gemma-pytorch")
_MODULES = {"hf": "hf", "keras": "keras", "gguf": "gguf", "gemma-pytorch": "gemma_pytorch"}

EXPECTED = ("a Hugging Face directory (config.json + model.safetensors or an index), a KerasHub/Keras-NLP "
            "preset directory (config.json + model.weights.h5 or model.weights.json), a .gguf file, a "
            "gemma_pytorch .ckpt, or a built-in card (" + ", ".join(CARD_NAMES) + ")")


def module(fmt: str) -> ModuleType:
    if fmt not in _MODULES:
        raise InputError(None, f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return importlib.import_module(f"{__name__}.{_MODULES[fmt]}")


# Files the readers open by their fixed names inside a checkpoint directory. Each must be a regular file that
# stays inside the directory (see common.check_member); files named by an index go through safe_child.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "model.weights.h5", "model.weights.json")
MEMBER_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "generation_config.json",
                "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "model.weights.h5", "model.weights.json", "metadata.json", "preprocessor.json", "task.json",
                os.path.join("assets", "tokenizer", "vocabulary.spm"), "pytorch_model.bin.index.json",
                "gemma_inspect.json", os.path.join("tokenizer", "tokenizer.model"))
# A single weights file and a shard index side by side: the native loaders (transformers, keras-hub) read the
# single file, an index-first reader the shards. Such a directory is refused, so every command sees one set.
AMBIGUOUS_WEIGHTS = (("model.safetensors", "model.safetensors.index.json"), ("model.weights.h5", "model.weights.json"))


def detect(source: str) -> str:
    """The format of `source`, or an InputError that says what was expected."""
    from .common import check_member, regular_file

    path = str(source)
    if not os.path.exists(path):
        if is_card(path):
            return "card"
        if os.path.islink(path):
            raise InputError(path, f"a symlink to {os.readlink(path)}, which does not exist")
        if os.sep not in path and "/" not in path and "." not in path:  # a name, not a path: a mistyped card?
            guess = suggest_card(path)
            hint = f"did you mean {guess!r}? " if guess else ""
            raise InputError(path, f"no such file or directory, and not a built-in card; {hint}"
                                   f"cards: {', '.join(CARD_NAMES)}")
        raise InputError(path, f"no such file or directory; expected {EXPECTED}")
    if os.path.isdir(path):
        entries = os.listdir(path)
        if not entries:
            raise InputError(path, f"empty directory; expected {EXPECTED}")
        for name in MEMBER_FILES + tuple(e for e in entries if e.endswith(".ckpt")):
            check_member(path, name)
        for single, index in AMBIGUOUS_WEIGHTS:
            if single in entries and index in entries:
                # transformers and keras-hub read the single file and ignore the index; a reader that followed
                # the index would compare, convert and diff other weights than the runtimes run.
                raise InputError(os.path.join(path, single), f"is beside the shard index {index}: which of the two "
                                                             f"holds the weights is ambiguous; remove one of them")
        if "adapter_config.json" in entries:
            # transformers, with peft installed, loads the base model an adapter names and applies the adapter
            raise InputError(os.path.join(path, "adapter_config.json"), "a PEFT adapter: the runtimes would load "
                                                                        "the base model it names and apply it; "
                                                                        "merge the adapter into a full checkpoint")
        torch_weights = any(e == "pytorch_model.bin.index.json" or e.endswith(".ckpt") for e in entries)
        if any(e.endswith(".ckpt") for e in entries) and not any(e in entries for e in WEIGHT_FILES):
            return "gemma-pytorch"  # a .ckpt with a side config.json (its own keys, or HF's) beside it
        config = os.path.join(path, "config.json")
        if os.path.isfile(config):
            from .common import read_json_object

            cfg = read_json_object(config, "config.json")
            if "model_type" in cfg:
                return "hf"
            from .keras import looks_like_keras_config

            if looks_like_keras_config(cfg):
                return "keras"
            if torch_weights:  # gemma_pytorch's own side config (head_dim, sliding_window, ...)
                return "gemma-pytorch"
            raise InputError(config, "has neither 'model_type' (Hugging Face) nor 'class_name'/'config' "
                                     "(KerasHub preset)")
        if torch_weights:
            return "gemma-pytorch"
        raise InputError(path, f"no config.json in this directory; expected {EXPECTED}")
    regular_file(path)  # not a FIFO (the read would block) or a device
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    if magic == b"GGUF":
        return "gguf"
    lower = path.lower()
    if lower.endswith(".gguf"):
        raise InputError(path, f"a .gguf file must start with the magic 'GGUF', found {magic!r}")
    if lower.endswith((".ckpt", ".pt", ".pth", ".bin")):
        return "gemma-pytorch"
    if lower.endswith(".safetensors"):
        raise InputError(path, "a bare .safetensors file has no config: pass the directory that holds it "
                               "with its config.json")
    raise InputError(path, f"unrecognised file; expected {EXPECTED}")


def load(source: str) -> Checkpoint:
    """Open any supported source (path or card name) as a Checkpoint, reading headers only."""
    fmt = detect(source)
    if fmt == "card":
        return card_checkpoint(str(source))
    try:
        return module(fmt).read(str(source))
    except (GemmaInspectError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # a reader's unforeseen failure on a strange file is still that file's problem
        msg = str(e).splitlines()[0][:120] if str(e) else ""
        raise InputError(str(source), f"cannot read as {fmt} ({e.__class__.__name__}{': ' + msg if msg else ''})") from e
