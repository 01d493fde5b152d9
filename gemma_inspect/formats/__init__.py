"""Format detection and the registry of readers/writers. Nothing outside `formats/` talks to a format.

Each format module owns: `read(path) -> Checkpoint`, `write(ckpt, dest, options, progress)` and `FORMAT`, its
`common.FormatInfo` (member files, capabilities, how to recognise it), from which everything here derives.
Modules are imported only when used, so `--help` and a card's `summary` stay light.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from ..checkpoint import Checkpoint, card_checkpoint
from ..errors import GemmaInspectError, InputError
from ..spec import CARD_NAMES, is_card, suggest_card
from .common import FormatInfo

FORMATS = ("hf", "keras", "gguf", "gemma-pytorch")  # the registry's names, in detection order (see _modules)
CONFIG = "config.json"


def _modules() -> dict[str, ModuleType]:
    """Every format module by its name (FORMATS): the registry."""
    from . import gemma_pytorch, gguf, hf, keras

    return dict(zip(FORMATS, (hf, keras, gguf, gemma_pytorch)))


def module(fmt: str) -> ModuleType:
    if fmt not in FORMATS:
        raise InputError(None, f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return _modules()[fmt]


def infos() -> dict[str, FormatInfo]:
    """Each format's declaration (its module's FORMAT), in detection order."""
    return {name: mod.FORMAT for name, mod in _modules().items()}


def info(fmt: str) -> FormatInfo:
    return module(fmt).FORMAT


def expected() -> str:
    """What a source may be, for "expected ..." messages."""
    return (", ".join(i.description for i in infos().values()) + ", or a built-in card (" + ", ".join(CARD_NAMES)
            + ")")


def member_files() -> tuple[str, ...]:
    """Files the readers open by their fixed names inside a checkpoint directory. Each must be a regular file that
    stays inside the directory (see safeio.check_member); files named by an index go through safe_child."""
    return tuple(dict.fromkeys(m for i in infos().values() for m in i.member_files))


def weight_files() -> tuple[str, ...]:
    return tuple(dict.fromkeys(w for i in infos().values() for w in i.weight_files))


def ambiguous_weights() -> tuple[tuple[str, str], ...]:
    """A single weights file and a shard index side by side: the native loaders (transformers, keras-hub) read the
    single file, an index-first reader the shards. Such a directory is refused, so every command sees one set."""
    return tuple(pair for i in infos().values() for pair in i.ambiguous)


_DERIVED = {"EXPECTED": expected, "MEMBER_FILES": member_files, "WEIGHT_FILES": weight_files,
            "AMBIGUOUS_WEIGHTS": ambiguous_weights}


def __getattr__(name: str) -> Any:
    """EXPECTED, MEMBER_FILES, WEIGHT_FILES, AMBIGUOUS_WEIGHTS: derived from the format modules when first asked."""
    if name in _DERIVED:
        return _DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def detect(source: str) -> str:
    """The format of `source`, or an InputError that says what was expected."""
    from ..safeio import check_member, read_json_object, regular_file

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
        raise InputError(path, f"no such file or directory; expected {expected()}")
    known = list(infos().values())
    if os.path.isdir(path):
        entries = os.listdir(path)
        if not entries:
            raise InputError(path, f"empty directory; expected {expected()}")
        suffixed = tuple(e for e in entries for i in known if i.weight_suffixes and e.endswith(i.weight_suffixes))
        for name in member_files() + suffixed:
            check_member(path, name)
        for single, index in ambiguous_weights():
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
        named = {i.name for i in known if any(e in entries for e in i.weight_files)}
        for i in known:  # weights known by their suffix (a .ckpt, with a side config.json or not) decide, unless
            # another format's weight files are there too
            if i.weight_suffixes and any(e.endswith(i.weight_suffixes) for e in entries) and not named - {i.name}:
                return i.name
        by_weights = [i.name for i in known if i.config_sniff is None and i.holds_weights(entries)]
        config = os.path.join(path, CONFIG)
        if os.path.isfile(config):
            cfg = read_json_object(config, CONFIG)
            for i in known:
                if i.config_sniff is not None and i.config_sniff(cfg):
                    return i.name
            if by_weights:  # a format without a config of its own (gemma_pytorch's side config: head_dim, ...)
                return by_weights[0]
            raise InputError(config, "has neither " + " nor ".join(i.config_hint for i in known if i.config_sniff))
        if by_weights:
            return by_weights[0]
        raise InputError(path, f"no {CONFIG} in this directory; expected {expected()}")
    regular_file(path)  # not a FIFO (the read would block) or a device
    width = max(len(i.magic) for i in known if i.magic)
    try:
        with open(path, "rb") as f:
            magic = f.read(width)
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    for i in known:
        if i.magic and magic[:len(i.magic)] == i.magic:
            return i.name
    lower = path.lower()
    for i in known:
        for suffix in i.file_suffixes:
            if lower.endswith(suffix):
                if i.magic:
                    raise InputError(path, f"a {suffix} file must start with the magic {i.magic.decode('ascii')!r}, "
                                           f"found {magic!r}")
                return i.name
        for suffix in i.loose_suffixes:
            if lower.endswith(suffix):
                raise InputError(path, f"a bare {suffix} file has no config: pass the directory that holds it "
                                       f"with its {CONFIG}")
    raise InputError(path, f"unrecognised file; expected {expected()}")


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
