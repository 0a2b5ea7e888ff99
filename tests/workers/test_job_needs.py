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
from onnxprune.workers.options import PruneOptions, option_flag
from onnxprune.workers.strategies import round_trip_reason
from onnxprune.workers.strategies.needs import Given, Needs, idle_finetune, ignored_without_data, job_needs

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
    # a recovery named without data: asked for and not run would be silent (its registration: Requires(data=True))
    ("reconstruct named, no data", {"recovery": "reconstruct"}, False, False, False, Needs(
        "recovery 'reconstruct' needs data")),
    ("finetune named, no data", {"recovery": "finetune"}, False, False, False, Needs("recovery 'finetune' needs data")),
    ("finetune named, no data, plan given", {"recovery": "finetune"}, False, True, False, Needs(
        "recovery 'finetune' needs data")),
    ("recovery none, no data", {"recovery": "none"}, False, False, False, Needs()),
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


# Every option the schema marks ``needs_data``, given without data: a value other than its default, and
# whether the job is refused (it asks for work on data) or runs and warns (it only tunes that work). A
# new data option must be added here, which decides which it is.
ASKS_NOTHING = "asks for no work on data"  # runs as it would without the option, and nothing needs saying
WITHOUT_DATA_CASES = [
    # (field, value, refused: the start of job_needs' reason; None: a warning names the flag; or ASKS_NOTHING)
    ("finetune_steps", 10, "fine-tuning needs data"),
    ("iterative_steps", 3, "fine-tuning needs data"),
    ("recovery", "reconstruct", "recovery 'reconstruct' needs data"),
    ("recovery", "finetune", "recovery 'finetune' needs data"),
    ("recovery", "none", ASKS_NOTHING),
    ("lr", 0.01, None),
    ("time_budget", 60.0, None),
    ("augment", False, None),
    ("match_features", True, None),
    ("reconstruct_samples", 64, None),
    ("batch_size", 8, None),
    ("score_batches", 2, None),
    ("learned_episodes", 5, None),
    ("learned_samples", 4, None),
    ("flops_regularization", 0.5, None),
    ("image_channels", "bgr", None),
    ("image_resize", "crop", None),
    ("image_scale", 1.0, None),
    ("image_mean", [0.485, 0.456, 0.406], None),
    ("image_std", [0.229, 0.224, 0.225], None),
]


def test_every_data_option_is_decided_without_data():
    marked = {
        name
        for name, field in PruneOptions.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("needs_data")
    }
    assert {case[0] for case in WITHOUT_DATA_CASES} == marked


@pytest.mark.parametrize(
    ("name", "value", "refused"), WITHOUT_DATA_CASES, ids=[f"{c[0]}={c[1]}" for c in WITHOUT_DATA_CASES]
)
def test_a_data_option_without_data_is_refused_or_warned_about(name, value, refused):
    options = PruneOptions(**{name: value})
    reason = job_needs(options, has_data=False).data
    warning = ignored_without_data(options, Given(data=False))

    if refused == ASKS_NOTHING:
        assert reason is None and warning is None
    elif refused is not None:
        assert reason is not None and reason.startswith(refused)
    else:
        assert reason is None
        assert warning is not None and warning.startswith("without data these options change nothing: ")
        assert option_flag(name) in warning or f"--no-{option_flag(name)[2:]}" in warning
    # with data, or left at its default, nothing to say
    assert ignored_without_data(options, Given(data=True)) is None
    assert ignored_without_data(PruneOptions(), Given(data=False)) is None


def test_the_warning_spells_the_options_as_the_cli_takes_them():
    options = PruneOptions(lr=0.01, augment=False, image_mean=[0.5, 0.5, 0.5], latency_budget_s=5.0)

    assert ignored_without_data(options, Given()) == (
        "without data these options change nothing: --image-mean 0.5,0.5,0.5, --lr 0.01, --no-augment "
        "(they tune the work done on a data file: give one, --data or the upload's 'data' part, or drop them)"
    )  # --latency-budget works without data: not named


@pytest.mark.parametrize(
    ("options", "given", "warned"),
    [
        (dict(recovery="finetune"), Given(data=True), True),
        (dict(recovery="finetune", finetune_steps=20), Given(data=True), False),
        (dict(recovery="finetune", time_budget=60.0), Given(data=True), False),
        (dict(recovery="finetune", iterative_steps=2), Given(data=True), False),  # BatchNorm re-estimated between
        (dict(recovery="finetune"), Given(data=True, plan=True), False),  # a saved plan: the job applies it only
        (dict(recovery="auto"), Given(data=True), False),  # auto chooses; naming nothing, it asks for nothing
        (dict(recovery="finetune"), Given(data=False), False),  # refused for the data it needs (job_needs)
    ],
    ids=["no-steps-no-budget", "steps", "budget", "iterative", "saved-plan", "auto", "no-data"],
)
def test_fine_tuning_asked_for_with_nothing_to_size_it_is_named_in_a_warning(options, given, warned):
    warning = idle_finetune(PruneOptions(**options), given)

    assert (warning is not None) == warned
    if warned:
        assert "--finetune-steps" in warning and "--time-budget" in warning
