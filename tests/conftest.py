"""Fixtures shared by the test modules: where the shared real models live."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Handler bugs fail the tests with their own traceback instead of becoming a job's internal error
# (graphops.dependency.STRICT_ENV); subprocesses the tests start (the CLI, workers) inherit it.
os.environ.setdefault("ONNXPRUNE_STRICT_ANALYSIS", "1")
# Latency tables the tests measure (--latency-target caches them) stay out of the user's cache.
os.environ.setdefault("ONNXPRUNE_CACHE_DIR", tempfile.mkdtemp(prefix="onnxprune-test-cache-"))

from tests.needs import SHARED_HINT, shared_dir, unavailable  # noqa: E402 - after the environment is set


@pytest.fixture
def shared_models_dir() -> Path:
    """``../shared/models`` (or ``$ONNXPRUNE_SHARED/models``); skipped locally, failed in CI, where absent."""
    models = shared_dir() / "models"
    if not models.is_dir():
        unavailable(f"real models not found at {models}; {SHARED_HINT}")
    return models
