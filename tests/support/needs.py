"""What a suite needs from outside the repository, and what happens when it is missing.

Locally a missing prerequisite skips the test with a reason that says where it comes from. In CI
(``CI=true``) it fails the test instead: a green run must never hide a suite that did not run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

# ../shared beside the checkout (models and data, see ../shared/README.md); ONNXPRUNE_SHARED overrides it.
DEFAULT_SHARED_DIR = Path(__file__).resolve().parents[2].parent / "shared"
SHARED_HINT = (
    "the real models and data live in ../shared beside the checkout (see ../shared/README.md); "
    "set ONNXPRUNE_SHARED=/path/to/shared to use another copy"
)


def in_ci() -> bool:
    """Whether we run as CI (GitHub Actions, GitLab and most others set CI=true)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip locally; fail in CI, where every suite must run."""
    if in_ci():
        pytest.fail(f"{reason} [CI=true: a suite that cannot run fails instead of skipping]", pytrace=False)
    pytest.skip(reason)


def shared_dir() -> Path:
    return Path(os.environ.get("ONNXPRUNE_SHARED") or DEFAULT_SHARED_DIR)


def shared_model(file: str) -> Path:
    """The path of one real model, or skip (locally) / fail (CI) saying where the models come from."""
    path = shared_dir() / "models" / file
    if not path.is_file():
        unavailable(f"real model {path} not found; {SHARED_HINT}")
    return path
