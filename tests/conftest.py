"""Fixtures shared by the test modules: where the shared real models live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Handler bugs fail the tests with their own traceback instead of becoming a job's internal error
# (graphops.dependency.STRICT_ENV); subprocesses the tests start (the CLI, workers) inherit it.
os.environ.setdefault("ONNXPRUNE_STRICT_ANALYSIS", "1")

# ../shared from the repository root, on every developer machine and in CI.
SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_MODELS_DIR = SHARED_DIR / "models"


@pytest.fixture
def shared_models_dir() -> Path:
    """``../shared/models``; the test is skipped (with the path in the reason) where it is absent."""
    if not SHARED_MODELS_DIR.is_dir():
        pytest.skip(f"shared models not found at {SHARED_MODELS_DIR}")
    return SHARED_MODELS_DIR
