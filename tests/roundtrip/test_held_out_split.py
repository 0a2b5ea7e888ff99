"""The held-out split is the report's alone: no strategy reads it, so nothing chosen depends on it.

Two checks on every strategy that chooses with data (best fine-tuning checkpoint, ``--ratio auto``
judged after reconstruction, the learned search): the same job run on a data file whose held-out
samples are poisoned (noise for inputs, shifted labels) writes exactly the same model; and a spy on
the split's held-out accessor sees it read only after the schedule has finished.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxprune.roundtrip.data as data_module
from onnxprune.roundtrip.data import HELD_OUT_POSITION, SPLIT_CYCLE, DataSplits
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import run_pipeline

# Six small pipeline runs with data, their stages in one process as in a job (tests/support/job_sandbox.py).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("stages_in_the_job_process")]

CASES = {
    "best checkpoint": dict(ratio=0.5, finetune_steps=8, batch_size=16),
    "ratio auto": dict(ratio="auto", max_drop=0.1, batch_size=16),
    "learned": dict(criterion="learned", max_drop=0.1, learned_episodes=2, learned_samples=3, finetune_steps=2),
}


def poisoned_copy(path: Path, folder: Path) -> Path:
    """The same file with every held-out sample's input replaced by noise and its label shifted."""
    with np.load(path) as archive:
        arrays = {name: archive[name].copy() for name in archive.files}
    held = np.arange(len(arrays["labels"])) % SPLIT_CYCLE == HELD_OUT_POSITION
    rng = np.random.default_rng(7)
    arrays["input"][held] = 10 * rng.standard_normal(arrays["input"][held].shape).astype(np.float32)
    arrays["labels"][held] = (arrays["labels"][held] + 1) % 4
    target = folder / "poisoned.npz"
    np.savez(target, **arrays)
    return target


class SpyingSplits:
    """Stands in for ``DataSplits``; records, for every read of ``held_out``, whether a schedule
    (a strategy's ``run`` in ``workers.strategies``) was on the stack."""

    def __init__(self, splits: DataSplits, reads: list[bool]) -> None:
        self.train, self.validation, self._reads = splits.train, splits.validation, reads
        self._held_out = splits.held_out

    @property
    def held_out(self):  # noqa: ANN201 - a Dataset, as DataSplits has it
        frame, in_schedule = sys._getframe(1), False
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            in_schedule |= module.startswith("onnxprune.workers.strategies.") and frame.f_code.co_name == "run"
            frame = frame.f_back
        self._reads.append(in_schedule)
        return self._held_out


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


@pytest.mark.parametrize("case", list(CASES))
def test_poisoned_held_out_samples_change_nothing_that_is_chosen(case, small_model, small_data, tmp_path, monkeypatch):
    reads: list[bool] = []
    split = data_module.split_data
    monkeypatch.setattr(data_module, "split_data", lambda dataset: SpyingSplits(split(dataset), reads))
    options = PruneOptions(**CASES[case], benchmark=False, round_to=1)
    clean = run_pipeline(small_model, tmp_path / "clean.onnx", options, data=small_data["labelled"])
    poisoned = run_pipeline(
        small_model, tmp_path / "poisoned.onnx", options, data=poisoned_copy(small_data["labelled"], tmp_path)
    )

    assert clean.plan.keep == poisoned.plan.keep and clean.plan.removed_channels > 0
    a, b = weights(onnx.load(tmp_path / "clean.onnx")), weights(onnx.load(tmp_path / "poisoned.onnx"))
    assert a.keys() == b.keys() and all(np.array_equal(a[name], b[name]) for name in a)
    # The held-out samples were measured (the poison shows in the report), only after choosing.
    assert clean.report.evaluation.after != poisoned.report.evaluation.after
    assert reads and not any(reads)
    assert [part.name for part in clean.report.data_splits] == ["train", "validation", "held_out"]
