"""gemma-inspect: read, describe, convert and verify Gemma checkpoints across KerasHub, HF, GGUF and gemma_pytorch.

Library entry points (none of them imports torch or keras):

    from gemma_inspect import load, summarize, card
    ckpt = load("path/to/checkpoint")        # or a card name such as "gemma-7b"
    ckpt.spec.attention_kind, ckpt.spec.parameter_breakdown()
"""

from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import Checkpoint, TensorRef  # noqa: E402
from .errors import GemmaInspectError, InputError, SpecError, UnsupportedError  # noqa: E402
from .formats import detect, load  # noqa: E402
from .spec import CARD_NAMES, GemmaSpec, card, make_spec  # noqa: E402
from .summary import compare, summarize  # noqa: E402

__all__ = ["Checkpoint", "TensorRef", "GemmaSpec", "GemmaInspectError", "InputError", "SpecError",
           "UnsupportedError", "load", "detect", "card", "make_spec", "CARD_NAMES", "summarize", "compare",
           "__version__"]
