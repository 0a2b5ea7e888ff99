"""What a job needs (data, PyTorch) is what its strategies declare (``workers.strategies.needs``),
asked by the CLI, the API and the worker through one function. That the declarations match what runs
(with ``import torch`` failing) is each strategy's contract: ``tests/workers/test_strategy_contracts.py``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import onnxprune.workers.strategies as strategies
from onnxprune.workers.capabilities import MissingCapability, torch_reason
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.strategies import round_trip_reason
from onnxprune.workers.strategies.needs import Needs, job_needs

RECONSTRUCT = "layer-wise reconstruction (the default recovery when data is given)"

NEEDS_CASES = [
    # (id, options, has data, plan given, sensitivity given, what the job needs)
    ("magnitude, no data", {}, False, False, False, Needs()),
    ("magnitude with data reconstructs", {}, True, False, False, Needs(f"{RECONSTRUCT} needs data", RECONSTRUCT)),
    ("recovery none with data", {"recovery": "none"}, True, False, False, Needs()),
    ("reconstruct named", {"recovery": "reconstruct"}, True, False, False, Needs(
        "layer-wise reconstruction needs data", "layer-wise reconstruction")),
    ("data criterion", {"criterion": "taylor", "recovery": "none"}, False, False, False, Needs(
        "criterion 'taylor' needs data", "criterion 'taylor'")),
    ("data criterion, plan given", {"criterion": "taylor", "recovery": "none"}, False, True, False, Needs()),
    ("fine-tuning", {"finetune_steps": 5}, False, False, False, Needs(
        "fine-tuning needs data", "fine-tuning (finetune_steps)")),
    ("iterative", {"iterative_steps": 3}, False, False, False, Needs(
        "fine-tuning needs data", "iterative pruning (iterative_steps)")),
    ("time budget with data", {"time_budget": 60, "recovery": "auto"}, True, False, False, Needs(
        "fine-tuning needs data", "fine-tuning under the time budget (time_budget with data)")),  # asked for first
    ("time budget, no reconstruction", {"time_budget": 60, "recovery": "none"}, True, False, False, Needs(
        "fine-tuning needs data", "fine-tuning under the time budget (time_budget with data)")),
    ("ratio auto", {"ratio": "auto", "max_drop": 0.02}, False, False, False, Needs(
        "ratio 'auto' needs data (or a sensitivity file) to measure each group's drop")),
    ("ratio auto, sensitivity file", {"ratio": "auto", "max_drop": 0.02}, False, False, True, Needs()),
    ("ratio auto with data, no recovery", {"ratio": "auto", "max_drop": 0.02, "recovery": "none"}, True, False,
     False, Needs("ratio 'auto' needs data (or a sensitivity file) to measure each group's drop")),
    ("learned", {"criterion": "learned", "max_drop": 0.02}, True, False, False, Needs(
        "criterion 'learned' needs data", "criterion 'learned'")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("options", "has_data", "plan_given", "sensitivity_given", "expected"),
    [case[1:] for case in NEEDS_CASES],
    ids=[case[0] for case in NEEDS_CASES],
)
def test_a_job_needs_what_its_strategies_declare(options, has_data, plan_given, sensitivity_given, expected):
    options = PruneOptions(**options)
    needs = job_needs(options, has_data=has_data, plan_given=plan_given, sensitivity_given=sensitivity_given)

    assert needs == expected
    # the older entry points are this one function, asked the same question
    assert (
        options.data_requirement(sensitivity_given=sensitivity_given, plan_given=plan_given)
        == job_needs(options, has_data=False, plan_given=plan_given, sensitivity_given=sensitivity_given).data
    )
    assert torch_reason(options, has_data=has_data, plan_given=plan_given) == expected.torch
    assert round_trip_reason(options, has_data=has_data, plan_given=plan_given) == expected.torch


def _strategy_classes() -> list[type]:
    """Every class in ``workers.strategies`` that selects, recovers or runs a schedule."""
    found = []
    for info in pkgutil.iter_modules(strategies.__path__):
        module = importlib.import_module(f"{strategies.__name__}.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and not getattr(cls, "_is_protocol", False):
                if any(name in vars(cls) for name in ("select", "recover", "run")):
                    found.append(cls)
    return found


def test_every_strategy_declares_its_own_needs():
    classes = _strategy_classes()
    names = {cls.__name__ for cls in classes}
    assert {"RankedByRatio", "AutoRatios", "SavedPlan", "Reconstruct", "FineTune", "NoRecovery", "Stepwise"} <= names
    assert [cls.__name__ for cls in classes if "needs" not in vars(cls)] == []


def test_the_worker_refuses_a_job_it_cannot_run_before_reading_the_model(monkeypatch, tmp_path):
    """Without torch, a job with data and default options is the user's to fix (exit 2, no retry),
    found before any stage runs: not an ImportError half-way through (an internal error, retried)."""
    from onnxprune.workers.pipeline import run_pipeline

    monkeypatch.setattr("onnxprune.workers.capabilities.torch_installed", lambda: False)
    with pytest.raises(MissingCapability, match=f"^{re.escape(RECONSTRUCT)} needs PyTorch, which is not installed"):
        run_pipeline(tmp_path / "never-read.onnx", tmp_path / "out.onnx", PruneOptions(), data=tmp_path / "d.npz")
