"""The CLI as a user runs it: ``python -m onnxprune.service.cli`` (or ``python -m onnxprune``) in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def onnxprune(
    *args: object,
    cwd: Path,
    module: str = "onnxprune.service.cli",
    extra_path: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m module args`` with this checkout's code on the path (after ``extra_path``, before the
    caller's PYTHONPATH) and ``env`` added; its output is captured as text. ONNXPRUNE_DEBUG is dropped: the
    tests read what a user sees, one error line and no traceback."""
    path = [*([str(extra_path)] if extra_path else []), str(ROOT), os.environ.get("PYTHONPATH", "")]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), **(env or {})}
    full_env.pop("ONNXPRUNE_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
