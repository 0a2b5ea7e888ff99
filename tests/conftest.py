"""Fixtures shared by the test modules: where the shared real models live."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.needs import SHARED_HINT, shared_dir, unavailable


@pytest.fixture
def shared_models_dir() -> Path:
    """``../shared/models`` (or ``$ONNXPRUNE_SHARED/models``); skipped locally, failed in CI, where absent."""
    models = shared_dir() / "models"
    if not models.is_dir():
        unavailable(f"real models not found at {models}; {SHARED_HINT}")
    return models
