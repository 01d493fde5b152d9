"""The Hugging Face format's own lint rules: config.json's activation keys and generation_config.json's end of
turn. Registered into lint.py's registry through `lint_rules`; no torch."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..families import family
from ..findings import Record, check, lint_rule

if TYPE_CHECKING:  # pragma: no cover
    from ..checkpoint import Checkpoint

ACTIVATION_KEYS = ("hidden_act", "hidden_activation")


def text_config(ckpt: "Checkpoint") -> dict[str, Any]:
    """The text decoder's config: a multimodal wrapper's (Gemma 3's) text_config, else config.json itself."""
    cfg = ckpt.config or {}
    wrapper = family(ckpt.spec.family).hf
    if wrapper is not None and wrapper.multimodal_model_type is not None and \
            cfg.get("model_type") == wrapper.multimodal_model_type and isinstance(cfg.get("text_config"), dict):
        return cfg["text_config"]
    return cfg


def _activation_key(ckpt: "Checkpoint") -> str:
    """The key transformers reads the activation from, for this family."""
    hf = family(ckpt.spec.family).hf
    return hf.activation_key if hf is not None else "hidden_activation"


@lint_rule("exact_gelu", 10, formats=("hf",))
def exact_gelu(ckpt: "Checkpoint") -> Record | None:
    if not ckpt.spec.is_gemma:
        return None
    text = text_config(ckpt)
    read_key = _activation_key(ckpt)
    legacy_tanh = family(ckpt.spec.family).hf.legacy_gelu_is_tanh  # type: ignore[union-attr]
    values = {k: text.get(k) for k in ACTIVATION_KEYS if k in text}
    exact = [k for k, v in values.items() if v == "gelu"]
    shown = ", ".join(f"{k} = {v!r}" for k, v in values.items()) or "no activation key"
    if not exact:
        return check("lint:exact_gelu", "pass", "gelu_pytorch_tanh", shown, "no exact 'gelu' in the config")
    if read_key in exact and not legacy_tanh:
        return check("lint:exact_gelu", "fail", "gelu_pytorch_tanh", shown,
                     f"{read_key} = 'gelu' is the exact erf GELU to transformers and every other runtime; Gemma "
                     f"was trained with the tanh approximation (write gelu_pytorch_tanh)")
    if read_key in exact:
        return check("lint:exact_gelu", "warn", "gelu_pytorch_tanh", shown,
                     f"{read_key} = 'gelu' is the {family(ckpt.spec.family).title} release value: transformers "
                     f"reads it as gelu_pytorch_tanh, runtimes that take the name literally run the exact erf GELU "
                     "(write gelu_pytorch_tanh)")
    return check("lint:exact_gelu", "warn", "gelu_pytorch_tanh", shown,
                 f"{exact[0]} = 'gelu' is not the key transformers reads for {ckpt.spec.family} ({read_key}), "
                 f"but other runtimes may read it as the exact erf GELU")


@lint_rule("activation_key", 20, formats=("hf",))
def activation_key(ckpt: "Checkpoint") -> Record | None:
    if not ckpt.spec.is_gemma:
        return None
    text = text_config(ckpt)
    key = _activation_key(ckpt)
    other = next(k for k in ACTIVATION_KEYS if k != key)
    if key in text:
        return check("lint:activation_key", "pass", key, key, f"{key} = {text[key]!r}")
    if other in text:
        return check("lint:activation_key", "warn", key, other,
                     f"{key} is missing: transformers uses its default (gelu_pytorch_tanh) and ignores "
                     f"{other} = {text[other]!r}, which other runtimes read")
    return check("lint:activation_key", "warn", key, None,
                 "no activation key (hidden_act / hidden_activation): every runtime falls back to its own default")


def generation_eos(ckpt: "Checkpoint") -> tuple[bool, Any]:
    """(whether generation_config.json exists, its eos_token_id or None)."""
    from .common import read_json_object

    path = os.path.join(ckpt.source, "generation_config.json")
    if not os.path.isfile(path):
        return False, None
    return True, read_json_object(path, "generation_config.json").get("eos_token_id")


@lint_rule("end_of_turn", 100, formats=("hf",), reads="tokenizer")
def end_of_turn(ckpt: "Checkpoint") -> Record | None:
    if not family(ckpt.spec.family).rules.lm_head:
        return check("lint:end_of_turn", "skip", None, None, "no LM head: the model does not generate")
    if ckpt.tokenizer is None:
        return check("lint:end_of_turn", "skip", None, None, "no tokenizer")
    eot = ckpt.tokenizer.token_to_id("<end_of_turn>")
    if eot is None:
        return check("lint:end_of_turn", "skip", None, None, "the vocabulary has no <end_of_turn>")
    exists, eos = generation_eos(ckpt)
    if not exists:
        return check("lint:end_of_turn", "warn", f"eos ids include {eot}", None,
                     "no generation_config.json: generation stops wherever the runtime's default says")
    if eos is None:
        return check("lint:end_of_turn", "warn", f"eos ids include {eot}", None,
                     "generation_config.json has no eos_token_id: generation stops wherever the runtime's "
                     "default says")
    ids = eos if isinstance(eos, list) else [eos]
    if eot in ids:
        return check("lint:end_of_turn", "pass", f"eos ids include {eot}", ids, "<end_of_turn> stops generation")
    return check("lint:end_of_turn", "warn", f"eos ids include {eot}", ids,
                 f"generation_config.json eos_token_id {ids} lacks <end_of_turn> ({eot}): chat generation runs "
                 f"past the end of its turn (fine for a base model)")


lint_rules = [exact_gelu, activation_key, end_of_turn]

__all__ = ["lint_rules", "text_config", "generation_eos"]
