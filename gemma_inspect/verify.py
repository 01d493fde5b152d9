"""`verify`: confirm from a running model, not from its config, that a checkpoint computes what its Gemma
family computes; plus a config lint that needs no forward pass.

Three parts, one module each:

    observation.py   what a forward pass shows: `observe(model, ids)` hooks the runtime's real modules
                     (trace.py) during two forward passes and single-module probes -> an `Observation`
    checks.py        a registry of architecture checks: each reads the Observation and the family row's rules
                     (families.py) and returns one check record (checks_gemma3n.py: the checks only Gemma 3n's
                     row lists)
    lint.py          `lint:<rule>` records from the config, the tokenizer and the tensors (no torch; `summary`
                     runs the rules that read no values); each format's own rules sit next to it
                     (formats/hf_lint.py)

A record is {name, status (pass, fail, warn, skip), expected, observed, evidence}; `passed` is true when no
check fails. This module runs the three in order and keeps the public names the CLI and the tests use.
"""

from __future__ import annotations

from typing import Any, Callable

from .checkpoint import Checkpoint
from . import checks_gemma3n, checks_gemma4  # noqa: F401 - register Gemma 3n's and Gemma 4's own checks
from .checks import CHECK_NAMES, architecture_checks, block_branches, placement_of
from .findings import STATUSES, check
from .lint import lint
from .observation import Observation, family_observations, observe
from .spec import GemmaSpec


def run_dtype(spec: GemmaSpec) -> str:
    """The dtype verify runs in: the checkpoint's own when a runtime can run it (bfloat16), else float32."""
    return "bfloat16" if spec.dtype == "bfloat16" else "float32"


def verify(source: Checkpoint | str, runtime: str = "auto", device: str = "auto", graph: bool = False,
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the traced forward passes and the lint; returns the verify JSON object
    (`{"passed", "source", "runtime", "checks"}`, plus `"graph"`, block 0's recorded layer graph, when asked)."""
    from .formats import load
    from .parity import MIN_DEFAULT_TOKENS, default_tokens
    from .runtimes import load_model, resolve_device, resolve_runtime
    from .runtimes.memory import check_fits

    ckpt = load(source) if isinstance(source, str) else source
    ckpt.require("verify")
    name = resolve_runtime(ckpt, runtime)
    dev = resolve_device(device)
    dtype = run_dtype(ckpt.spec)
    say = progress or (lambda _msg: None)
    say("[1/3] linting the config")
    lint_checks = lint(ckpt)
    ids = default_tokens(ckpt)
    check_fits(ckpt, len(ids), dtype, dev, window_driven=len(ids) > MIN_DEFAULT_TOKENS)  # before loading
    say(f"[2/3] loading with {name} on {dev} ({dtype})")
    # Eager attention: transformers' SDPA and keras-hub's fused kernel hide the scores verify looks at.
    options = {"attn_implementation": "eager"} if name in ("transformers", "keras") else {}
    model = load_model(ckpt, name, dev, dtype, **options)
    try:
        say("[3/3] tracing the forward pass")
        obs = observe(model, ids)
        obs.family = family_observations(ckpt, model, ids)
    finally:
        model.close()
    checks = architecture_checks(ckpt, obs) + lint_checks
    result: dict[str, Any] = {"passed": all(c["status"] != "fail" for c in checks), "source": ckpt.source,
                              "runtime": name, "checks": checks}
    if graph:
        result["graph"] = obs.graph
    return result


__all__ = ["verify", "lint", "observe", "Observation", "architecture_checks", "block_branches", "placement_of",
           "CHECK_NAMES", "STATUSES", "check", "run_dtype"]
