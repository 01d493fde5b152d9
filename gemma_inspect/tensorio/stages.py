"""Seconds spent in each stage of the conversion in progress, summed over the threads that do it (read and
transform: the producer thread; write: the writer, kernel copies included; hash: the manifest's; import: cv2,
imported by the producer on the first re-layout). The stages overlap in time, so they do not add up to the wall
time; convert() reports them so a slow machine explains itself (benchmarks/convert.py prints them)."""

from __future__ import annotations

STAGES = ("read", "transform", "write", "hash", "import")
_stage_times: dict[str, float] = dict.fromkeys(STAGES, 0.0)


def add_stage(stage: str, seconds: float) -> None:
    _stage_times[stage] = _stage_times.get(stage, 0.0) + seconds


def reset_stages() -> None:
    """Start counting a new conversion."""
    _stage_times.update(dict.fromkeys(STAGES, 0.0))


def stage_times() -> dict[str, float]:
    """Seconds per stage since `reset_stages`, rounded to milliseconds."""
    return {k: round(_stage_times.get(k, 0.0), 3) for k in STAGES}
