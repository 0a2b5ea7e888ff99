"""Sentence encoders return their token ids and attention mask as outputs too (paraphrase-MiniLM's
``output`` and ``463`` are Identity of its inputs). Those integer outputs are the original's by
construction: distillation skips them (they carry no gradient, and torch cannot average a Long) and
fidelity leaves them out (token ids in the tens of thousands would swamp the embeddings' cosine).
"""

from __future__ import annotations

import numpy as np
import torch

from onnxprune.roundtrip.data import Batch
from onnxprune.roundtrip.objective import Objective
from onnxprune.workers.evaluation import fidelity

IDS = np.array([[101, 2023, 102], [101, 7592, 102]], dtype=np.int64)


def test_fidelity_compares_the_embeddings_not_the_token_ids_passed_through():
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    orthogonal = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)

    score = fidelity({"ids": IDS, "embedding": orthogonal}, {"ids": IDS, "embedding": embeddings})

    assert score == 0.0


def test_distillation_skips_integer_outputs_and_trains_on_the_embeddings():
    objective = Objective(teacher=None, tensors=["ids", "embedding"], use_labels=False, classifier=[False, False])  # type: ignore[arg-type]
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    ids = torch.from_numpy(IDS)
    batch = Batch(indices=np.arange(2), inputs={}, labels=None)

    loss = objective.loss([ids, student], batch, [ids, teacher])
    sampled = objective.sampled_loss([ids, student], batch, [ids, teacher], torch.Generator().manual_seed(0))
    loss.backward()

    assert loss.dtype == torch.float32 and loss.item() > 0
    assert sampled.dtype == torch.float32
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
