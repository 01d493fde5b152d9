"""Library exceptions; the CLI turns them into `Error: ...` lines and exit codes in one place."""

from __future__ import annotations

import os


class GemmaInspectError(Exception):
    """Base class. `exit_code` is what the CLI exits with (2 = unusable input or usage)."""

    exit_code = 2


class InputError(GemmaInspectError):
    """A file or directory that cannot be used: names the path and what is wrong with it."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class SpecError(GemmaInspectError):
    """An architecture description that contradicts itself (e.g. heads that do not divide)."""


class UnsupportedError(GemmaInspectError):
    """A valid input that this tool (or the target format) cannot express faithfully."""


class OutputError(GemmaInspectError):
    """The destination cannot be written (exists without --force, disk full, ...)."""
