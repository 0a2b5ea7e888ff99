"""CPU-bound processes beside a benchmark, at its own priority, for the whole run (issue 29: a busy
machine such as a shared CI runner or a Celery host running several jobs)."""

from __future__ import annotations

import subprocess
import sys
from types import TracebackType

# A pure-Python busy loop: one core's worth of demand, no memory, no I/O.
_BUSY_LOOP = "while True:\n    pass\n"


class BackgroundLoad:
    """``with BackgroundLoad(2): ...`` keeps two busy processes running inside the block; each is
    stopped (by its own id) when the block ends, however it ends."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._children: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> BackgroundLoad:
        for _ in range(self.processes):
            self._children.append(subprocess.Popen([sys.executable, "-c", _BUSY_LOOP], stdin=subprocess.DEVNULL))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for child in self._children:
            child.kill()
        for child in self._children:
            child.wait()
        self._children.clear()
