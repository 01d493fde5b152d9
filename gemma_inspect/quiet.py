"""Keeping native libraries' start-up chatter (tensorflow, sentencepiece's C++ logging) off stderr."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


@contextlib.contextmanager
def native_stderr_silenced(active: bool = True) -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the duration: C++ log lines (tensorflow's "oneDNN custom
    operations are on", sentencepiece's "precompiled_charsmap is empty") ignore Python's logging and
    TF_CPP_MIN_LOG_LEVEL. Python exceptions propagate after stderr is restored, so failures still say why."""
    if not active:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
