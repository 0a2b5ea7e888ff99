"""The data a data-driven job works with, handed to criteria as ``data=`` and to the strategies.

It holds the training and validation splits only (``roundtrip.data.split_data``): the held-out
split is the report's, and what no strategy can reach cannot bias the numbers reported on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from onnxprune.roundtrip.data import Dataset, load_dataset, split_data

if TYPE_CHECKING:  # the objective needs torch; building a context imports it lazily
    from onnxprune.roundtrip.objective import Objective


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
) -> DataContext:
    """Build the objective and cache the original's outputs on both splits where they fit."""
    from onnxprune.roundtrip.objective import make_objective

    sample = next(validation.batches(min(2, len(validation))))
    objective = make_objective(original, sample, use_labels=train.labels is not None, detector=detector)
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
