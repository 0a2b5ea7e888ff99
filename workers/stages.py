"""Progress of a job as named stages, each ending at a fixed fraction of the whole.

Stages are reported in order, each with a fixed share, so the fraction only grows up to 1.0; a stage
the job has no work for (fine-tuning without data, quantizing without --quantize) is not named: the
next stage starts where its share ends, and the progress lists only what was asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Progress = Callable[[str, float], None]

# Where each stage ends, as a fraction of the whole job (benchmarking dominates on big models).
STAGE_END = {
    "load": 0.05, "validate": 0.08, "analyze": 0.2, "score": 0.25, "select": 0.3,
    "apply": 0.45, "verify": 0.6, "finetune": 0.8, "quantize": 0.85, "benchmark": 0.95, "report": 1.0,
}  # fmt: skip
STAGES = list(STAGE_END)


def stage_start(name: str) -> float:
    index = STAGES.index(name)
    return STAGE_END[STAGES[index - 1]] if index else 0.0


class Stages:
    """Times the stages of one job and reports them to ``progress`` as ``(label, fraction)``."""

    def __init__(self, progress: Progress | None = None) -> None:
        self._progress = progress or (lambda label, fraction: None)
        self._next = 0  # index of the first stage not yet reported
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time ``name``; stages before it that were not entered are reported as done first.
        Entering a stage again (a later iterative step) adds to its time and reports nothing new."""
        index = STAGES.index(name)
        again = index < self._next
        if not again:
            self._progress(name, stage_start(name))
            self._next = index + 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 4)
        if not again:
            self._progress(name, STAGE_END[name])

    def within(self, name: str, fraction: float, label: str | None = None) -> None:
        """Progress inside stage ``name`` (``fraction`` of it done), e.g. fine-tuning steps."""
        low, high = stage_start(name), STAGE_END[name]
        self._progress(label or name, low + (high - low) * min(max(fraction, 0.0), 1.0))

    def finish(self) -> None:
        """No stage is entered after this (the stages not entered are not named)."""
        self._next = len(STAGES)
