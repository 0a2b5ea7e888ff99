"""The CLI as a user runs it: ``python -m onnxprune.service.cli`` in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def onnxprune(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """Runs the CLI with this checkout's code first on the path; its output is captured as text."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "onnxprune.service.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
