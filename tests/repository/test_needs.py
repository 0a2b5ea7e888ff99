"""A suite that cannot run skips locally with a reason, and fails in CI: a green run hides nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


# One process (-n 0): addopts' "-n auto" would start a worker per core, each importing torch, to run one test.
PYTEST = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider"]


def run_pytest(test: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "CI"} | env
    return subprocess.run(
        [*PYTEST, "-rs", test],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_real_model_tests_skip_locally_saying_where_the_models_come_from(tmp_path: Path) -> None:
    result = run_pytest(
        "tests/graphops/test_cost.py::test_resnet20_has_about_41_million_macs", tmp_path, ONNXPRUNE_SHARED=str(tmp_path)
    )

    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert f"{tmp_path}/models/onnc_resnet20.onnx not found" in result.stdout
    assert "ONNXPRUNE_SHARED" in result.stdout and "../shared" in result.stdout


def test_real_model_tests_fail_in_ci_when_the_models_are_missing(tmp_path: Path, shared_models_dir: Path) -> None:
    """One failure per real model: the table of real models does not depend on what is on disk (a glob
    over a missing folder collapsed to zero tests, and a run of none passed)."""
    shared_models = len(list(shared_models_dir.glob("*.onnx")))
    result = run_pytest(
        "tests/graphops/test_loading.py::test_every_shared_model_passes_validation",
        tmp_path,
        ONNXPRUNE_SHARED=str(tmp_path),
        CI="true",
    )

    assert result.returncode == 1
    assert f"{shared_models} failed" in result.stdout and "skipped" not in result.stdout
