"""``--help`` and usage lines read as command-line users expect: ``Usage: onnxprune prune [OPTIONS] MODEL``,
flags without a value type (no ``--help <bool>``), and ``submit --help`` naming the prune flags that
have no service meaning (``service.cli_help``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def onnxprune(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "onnxprune", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        (["prune"], "Usage: onnxprune prune [OPTIONS] MODEL"),
        (["bench"], "Usage: onnxprune bench [OPTIONS] MODEL_A [MODEL_B]"),
        (["submit"], "Usage: onnxprune submit [OPTIONS] MODEL"),
        ([], "Usage: onnxprune [OPTIONS] COMMAND [ARGS]..."),
    ],
)
def test_usage_names_arguments_in_capitals_and_flags_take_no_value(command, usage):
    done = onnxprune(*command, "--help")

    assert done.returncode == 0, done.stderr
    assert usage in done.stdout
    usage_line = next(line for line in done.stdout.splitlines() if "Usage:" in line)
    assert "<bool>" not in done.stdout and "{" not in usage_line


def test_a_usage_error_shows_the_same_usage_line():
    done = onnxprune("prune")

    assert done.returncode == 2
    assert "Usage: onnxprune prune [OPTIONS] MODEL" in done.stderr


def test_submit_help_says_which_prune_flag_has_no_service_meaning():
    done = onnxprune("submit", "--help")

    text = " ".join(done.stdout.split())
    assert "--sensitivity" in text and "has no service meaning" in text
    for flag in ("--json", "--report-html", "--plan-out", "--plan-in", "--report"):
        assert flag in done.stdout
