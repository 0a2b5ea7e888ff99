"""The data a data-driven job works with, handed to criteria as ``data=`` and to the strategies.

It holds the training and validation splits only (``roundtrip.data.split_data``): the held-out
split is the report's, and what no strategy can reach cannot bias the numbers reported on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from onnxprune.roundtrip.data import Dataset, load_dataset, split_data

if TYPE_CHECKING:  # the objective needs torch; building a context imports it lazily
    from onnxprune.roundtrip.objective import Objective, TeacherRunner

log = logging.getLogger(__name__)
# Builds an inference runtime's runner of a model's named tensors (the workers' onnxruntime session).
RunnerFactory = Callable[[onnx.ModelProto, list[str]], "TeacherRunner"]


# The larger of the two batch sizes the inference runtime's teacher is checked on against the executor.
PROBE_BATCH = 4


@dataclass
class DataContext:
    """Training and validation splits, the objective (labels or the original model), batching."""

    train: Dataset
    validation: Dataset
    objective: Objective
    batch_size: int = 32
    score_batches: int = 8

    @property
    def samples(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation)}


def make_context(
    train: Dataset,
    validation: Dataset,
    original: onnx.ModelProto,
    *,
    batch_size: int,
    score_batches: int,
    detector: str = "none",
    teacher_runner: RunnerFactory | None = None,
) -> DataContext:
    """Build the objective and cache the original's outputs on both splits where they fit.
    ``teacher_runner``: an inference runtime that computes the original's outputs instead of the
    executor where it gives the same outputs (``Objective.use_runner``)."""
    from onnxprune.roundtrip.objective import make_objective

    sample = next(validation.batches(min(2, len(validation))))
    objective = make_objective(original, sample, use_labels=train.labels is not None, detector=detector)
    if teacher_runner is not None:
        # Two batch sizes (a Reshape that fixes the batch fails one), small: the executor's probe of a whole
        # batch of 32 cost ViT-S at 224 about 15 s of a 300 s budget on a busy 2-core machine.
        sizes = (min(batch_size, PROBE_BATCH, len(train)), min(batch_size, PROBE_BATCH - 1, len(train)))
        probes = [next(train.batches(size)) for size in sizes]
        refused = objective.use_runner(teacher_runner(original, list(objective.tensors)), probes)
        if refused is not None:
            log.info(
                "the original's outputs are computed by the executor: the inference session was refused (%s)", refused
            )
    objective.cache_targets(train, batch_size)
    objective.cache_targets(validation, batch_size)
    return DataContext(train, validation, objective, batch_size, score_batches)


def build_context(
    data_path: Path,
    original: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None,
    *,
    batch_size: int,
    score_batches: int,
) -> DataContext:
    """Load and split ``data_path`` (its held-out split left out), then :func:`make_context`."""
    splits = split_data(load_dataset(data_path, original, input_shapes))
    return make_context(splits.train, splits.validation, original, batch_size=batch_size, score_batches=score_batches)
