"""Tests marked ``xdist_group`` run on one worker (tests/support/xdist_groups.py), so a module fixture is built
once per run: pytest-xdist's own grouping silently did nothing under pytest 9."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SUITE = """
import json, os
import pytest

@pytest.fixture(scope="module")
def built():
    with open(os.environ["BUILDS"], "a") as log:
        log.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")

def record(name):
    with open(os.environ["RAN"], "a") as log:
        log.write(json.dumps([name, os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")

@pytest.mark.xdist_group("shared")
@pytest.mark.parametrize("n", range(4))
def test_grouped(built, n):
    record(f"grouped{n}")

@pytest.mark.parametrize("n", range(4))
def test_alone(n):
    record(f"alone{n}")
"""


def test_a_group_runs_on_one_worker_and_builds_its_module_fixture_once(tmp_path: Path) -> None:
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the project's addopts
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BUILDS": str(tmp_path / "builds"), "RAN": str(tmp_path / "ran")}
    env.pop("PYTEST_XDIST_WORKER", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.support.xdist_groups"]
        + ["-n", "2", "--dist", "loadgroup", "-c", str(tmp_path / "pytest.ini"), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    ran = [json.loads(line) for line in (tmp_path / "ran").read_text().splitlines()]
    assert len({worker for name, worker in ran if name.startswith("grouped")}) == 1
    assert len((tmp_path / "builds").read_text().splitlines()) == 1
    assert len({worker for _, worker in ran}) == 2  # the other tests still spread over both workers
