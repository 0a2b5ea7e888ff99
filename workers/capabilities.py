"""What this installation can do, and whether a job asks for more: checked before a job exists.

Data-driven criteria and fine-tuning run the graph in PyTorch (``roundtrip``), an optional extra.
Without it such a job used to fail deep in the pipeline with "No module named 'torch'" (an internal
error after three retries in the service); now the CLI answers with an install hint (exit 2) and the
service with 422 at upload.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Set

from onnxprune.graphops.errors import ModelRejected
from onnxprune.workers.options import PruneOptions

TORCH = "torch"
TORCH_INSTALL_HINT = (
    "install the torch extra: pip install -c constraints.txt 'onnxprune[torch]' (CPU-only build: "
    "add --extra-index-url https://download.pytorch.org/whl/cpu)"
)


class MissingCapability(ModelRejected):
    """The job needs an optional part that is not installed (the user's to add: retrying will not help)."""


def torch_installed() -> bool:
    """Whether ``import torch`` can succeed here (found, without importing it: that takes seconds)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def local_capabilities() -> frozenset[str]:
    return frozenset({TORCH}) if torch_installed() else frozenset()


def torch_reason(options: PruneOptions, *, has_data: bool = False, plan_given: bool = False) -> str | None:
    """What in the job runs in PyTorch, or None: what its strategies declare (``strategies.needs``).
    With data, the default recovery (layer-wise reconstruction) does."""
    from onnxprune.workers.strategies.needs import job_needs

    return job_needs(options, has_data=has_data, plan_given=plan_given).torch


def missing_capability(
    options: PruneOptions,
    capabilities: Set[str] | None = None,
    *,
    has_data: bool = False,
    plan_given: bool = False,
) -> str | None:
    """One line saying what the job needs that ``capabilities`` (default: this process) lacks, or None."""
    reason = torch_reason(options, has_data=has_data, plan_given=plan_given)
    have = local_capabilities() if capabilities is None else capabilities
    if reason is not None and TORCH not in have:
        return f"{reason} needs PyTorch, which is not installed; {TORCH_INSTALL_HINT}"
    return None


def require_capabilities(options: PruneOptions, *, has_data: bool = False, plan_given: bool = False) -> None:
    """Raise :class:`MissingCapability` when this process cannot run the job."""
    missing = missing_capability(options, has_data=has_data, plan_given=plan_given)
    if missing is not None:
        raise MissingCapability(missing)
