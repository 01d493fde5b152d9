"""Check records and lint-rule declarations: what `verify`'s checks (checks.py), the config lint (lint.py) and each
format's own lint rules (formats/<format>_lint.py) build on. Imports no torch and nothing that imports them.

A check record is the JSON object `verify` prints for each check: name, status (pass, fail, warn: ambiguous
rather than wrong, skip: not observable or not applicable here), expected, observed and a short evidence string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .spec import GemmaSpec, card, card_of_shape

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoint import Checkpoint

STATUSES = ("pass", "fail", "skip", "warn")
FINDINGS = ("fail", "warn")  # the statuses that are findings (what `summary` shows)

Record = dict[str, Any]


def check(name: str, status: str, expected: Any, observed: Any, evidence: str) -> Record:
    """One check record."""
    assert status in STATUSES, status
    return {"name": name, "status": status, "expected": expected, "observed": observed, "evidence": evidence}


@dataclass(frozen=True)
class LintRule:
    """A lint rule: `fn(ckpt)` returns its record, or None when the rule does not apply to the checkpoint.

    `order` places the rule among all registered rules (the order verify prints them in); `formats` limits it
    to checkpoints of those formats (None: every format); `reads` says what it needs beyond the headers: "config"
    (the config and the spec only), "tokenizer" (loads the tokenizer, which takes seconds for a real vocabulary)
    or "values" (reads tensor values). `summary` runs only the "config" rules."""

    name: str  # "lint:<rule>"
    order: int
    fn: Callable[["Checkpoint"], Record | None]
    formats: tuple[str, ...] | None = None
    reads: str = "config"

    def applies_to(self, ckpt: "Checkpoint") -> bool:
        return self.formats is None or ckpt.format in self.formats

    def __call__(self, ckpt: "Checkpoint") -> Record | None:
        return self.fn(ckpt)


READS = ("config", "tokenizer", "values")


def lint_rule(name: str, order: int, formats: tuple[str, ...] | None = None,
              reads: str = "config") -> Callable[[Callable[["Checkpoint"], Record | None]], LintRule]:
    """Declare a function as the lint rule `lint:<name>` (see LintRule)."""
    assert reads in READS, reads

    def wrap(fn: Callable[["Checkpoint"], Record | None]) -> LintRule:
        return LintRule(f"lint:{name}", order, fn, formats, reads)
    return wrap


def published_card(spec: GemmaSpec) -> GemmaSpec | None:
    """The published card with this checkpoint's family and shape, if there is one (spec.card_of_shape)."""
    name = card_of_shape(spec.family, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
                         num_attention_heads=spec.num_attention_heads,
                         num_key_value_heads=spec.num_key_value_heads, head_dim=spec.head_dim)
    return card(name) if name is not None else None


__all__ = ["STATUSES", "FINDINGS", "READS", "Record", "check", "LintRule", "lint_rule", "published_card"]
