"""The data a data-driven job works with, handed to criteria as ``data=`` and to the schedule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from roundtrip.data import Dataset, load_dataset, split_holdout

if TYPE_CHECKING:  # the objective needs torch; building a context imports it lazily
    from roundtrip.objective import Objective


@dataclass
class DataContext:
    """Training and held-out splits, the objective (labels or the original model), batching."""

    train: Dataset
    holdout: Dataset
    objective: Objective
    batch_size: int = 32
    score_batches: int = 8
    source_path: Path | None = None
    dataset: Dataset | None = None  # the whole file, as loaded (train and holdout split it)

    @property
    def samples(self) -> dict[str, int]:
        return {"train": len(self.train), "heldout": len(self.holdout)}


def build_context(
    data_path: Path,
    original: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None,
    *,
    batch_size: int,
    score_batches: int,
) -> DataContext:
    """Load and split the data, build the objective, cache the original's outputs where they fit."""
    from roundtrip.objective import make_objective

    dataset = load_dataset(data_path, original, input_shapes)
    train, held = split_holdout(dataset)
    objective = make_objective(original, next(held.batches(min(2, len(held)))), use_labels=dataset.labels is not None)
    objective.cache_targets(train, batch_size)
    objective.cache_targets(held, batch_size)
    return DataContext(train, held, objective, batch_size, score_batches, Path(data_path), dataset)
