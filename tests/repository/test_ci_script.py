"""CI runs the README's test command: a green CI run vouches for what users are told to run.

.ci/run may add steps of its own between the README's (installing Chromium when absent), never drop or
reorder them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_test_command() -> str:
    """The indented command under the README's "run the whole test suite" line."""
    text = (ROOT / "README.md").read_text()
    found = re.search(r"run the whole test suite.*?\n\n    (.+)\n", text)
    assert found, "README.md: no test command under 'run the whole test suite'"
    return found.group(1)


def test_ci_runs_every_step_of_the_readme_test_command_in_order():
    steps = readme_test_command().split(" && ")
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    runs = [line.split(" && ") for line in lines if line.startswith(steps[0] + " && ")]
    assert len(runs) == 1, f".ci/run has {len(runs)} lines that start as the README's test command does"
    remaining = iter(runs[0])
    assert all(step in remaining for step in steps), (  # a subsequence: CI's own steps may come between
        f".ci/run does not run the README's test command in order: {steps} in {runs[0]}"
    )


def test_the_test_command_installs_the_pinned_pip_before_the_stack():
    steps = readme_test_command().split(" && ")
    pip_step = "pip install -q -c constraints.txt pip"
    assert pip_step in steps, f"the README's test command does not install the pinned pip first: {steps}"
    stack = next(i for i, step in enumerate(steps) if step.startswith("pip install") and "-e " in step)
    assert steps.index(pip_step) < stack
    assert re.search(r"^pip==\S+$", (ROOT / "constraints.txt").read_text(), re.M), "constraints.txt does not pin pip"
