"""The original's outputs for fine-tuning come from onnxruntime where it gives the executor's outputs,
and from the executor otherwise (a Reshape fixed to one sample, a runtime error): the targets are the
same either way, only cheaper. (``workers.teacher_session``; ``Objective.use_runner``.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from onnxprune.roundtrip.context import make_context
from onnxprune.roundtrip.data import load_dataset, split_data
from onnxprune.workers.analysis import analyse_model
from onnxprune.workers.teacher_session import runner_of
from tests.support import zoo
from tests.support.bn_net import samples


def _context(model: Path, data: Path, runner: bool = True):  # type: ignore[no-untyped-def]
    analysis = analyse_model(model)
    splits = split_data(load_dataset(data, analysis.original, analysis.input_shapes))
    factory = runner_of(analysis.path) if runner else None
    context = make_context(
        splits.train, splits.validation, analysis.prepared, batch_size=16, score_batches=2, teacher_runner=factory
    )
    return context, splits.train


def _augmented(train, count: int):  # type: ignore[no-untyped-def]
    """A batch the teacher has no cached outputs for (as an augmented batch is)."""
    batch = next(train.batches(count))
    return type(batch)({k: v[:, :, ::-1].copy() for k, v in batch.inputs.items()}, batch.labels, batch.indices)


def _executor_outputs(objective, batch) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return [t.numpy() for t in objective.teacher.run(batch.inputs, outputs=objective.tensors)]


def test_onnxruntime_gives_the_teachers_outputs_on_uncached_batches(small_model, small_data):
    context, train = _context(small_model, small_data["labelled"])
    objective = context.objective
    assert objective.runner is not None
    calls: list[int] = []
    runner = objective.runner
    objective.runner = lambda inputs: calls.append(1) or runner(inputs)
    for count in (16, 5):
        batch = _augmented(train, count)
        got = [t.numpy() for t in objective.teacher_outputs(batch)]
        for have, want in zip(got, _executor_outputs(objective, batch)):
            np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4)
    assert len(calls) == 2
    cached = next(train.batches(16))
    first = [t.numpy().copy() for t in objective.teacher_outputs(cached, train)]
    assert len(calls) == 3  # a cached split's targets are computed when a batch first asks for them
    again = [t.numpy() for t in objective.teacher_outputs(cached, train)]
    assert len(calls) == 3  # and never again
    for have, want in zip(again, first):
        np.testing.assert_array_equal(have, want)


class FixedBatchHead(nn.Module):
    """conv -> GAP -> Reshape to [1, C] (the export fixes the batch) -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)).reshape(1, 8))


@pytest.fixture(scope="module")
def fixed_batch(tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("fixed-batch")
    torch.manual_seed(0)
    model = zoo.export_onnx(FixedBatchHead(), (1, 3, 12, 12), folder / "fixed.onnx")
    np.savez(folder / "data.npz", input=samples(40))
    return model, folder / "data.npz"


def test_a_model_whose_export_fixes_the_batch_keeps_the_executor(fixed_batch):
    context, train = _context(*fixed_batch)
    assert context.objective.runner is None  # onnxruntime cannot run a batch through Reshape [1, 8]
    batch = _augmented(train, 16)
    got = [t.numpy() for t in context.objective.teacher_outputs(batch)]
    assert got[0].shape == (16, 4)
    np.testing.assert_allclose(got[0], _executor_outputs(context.objective, batch)[0], rtol=1e-6)


def test_a_runner_that_differs_from_the_executor_is_refused_naming_the_tensor(small_model, small_data):
    context, train = _context(small_model, small_data["labelled"], runner=False)
    objective = context.objective
    probe = next(train.batches(4))
    reason = objective.use_runner(lambda inputs: [a * 1.01 for a in _executor_outputs(objective, probe)], [probe])
    assert reason is not None and f"'{objective.tensors[0]}' differs" in reason and objective.runner is None
    assert objective.use_runner(lambda inputs: _executor_outputs(objective, probe), [probe]) is None
    assert objective.runner is not None
