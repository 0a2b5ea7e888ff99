"""Fine-tuning, BatchNorm statistics re-estimation and held-out evaluation of an executor module.

SGD with momentum and a cosine learning-rate decay: the usual recipe for recovering a pruned conv
net (Li et al. retrain after pruning; Molchanov et al. fine-tune between pruning steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from roundtrip.data import Dataset
from roundtrip.executor import OnnxModule
from roundtrip.objective import Objective

StepProgress = Callable[[int, int, float], None]  # (step, steps, loss)


@dataclass(frozen=True)
class Metrics:
    """One model on the held-out split: the objective's loss, and what a person reads."""

    loss: float
    accuracy: float | None  # top-1, with labels
    agreement: float | None  # top-1 agreement with the original model (classifier outputs)
    cosine: float  # mean per-sample cosine similarity of outputs to the original's


def recalibrate_batchnorm(module: OnnxModule, data: Dataset, batch_size: int, batches: int = 20, seed: int = 0) -> bool:
    """Re-estimate every BatchNorm's running mean and variance on ``data`` (cumulative average).

    After surgery a BN's input distribution changes (fewer channels feed the conv before it);
    its stored statistics are stale. Returns False if the model has no BatchNorm.
    """
    if not module.statistics_names:
        return False
    was_training = module.training
    means_and_vars = [module.tensor(name) for name in module.statistics_names]
    with torch.no_grad():
        for tensor in means_and_vars:
            tensor.zero_()  # the cumulative average below overwrites them: mean then var alike
        module.train()
        module.dropout = False
        for count, batch in enumerate(data.batches(batch_size, shuffle=True, seed=seed, limit=batches)):
            module.bn_momentum = 1.0 / (count + 1)
            module.run(batch.inputs)
    module.bn_momentum = None
    module.dropout = None
    module.train(was_training)
    return True


def finetune(
    module: OnnxModule,
    objective: Objective,
    data: Dataset,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    weight_decay: float = 0.0,
    progress: StepProgress | None = None,
) -> list[float]:
    """``steps`` SGD steps (momentum 0.9, cosine decay) on the objective; returns the losses."""
    if steps <= 0:
        return []
    parameters = list(module.named_trainable().values())
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    module.train()
    losses = []
    batches = data.endless(batch_size, seed=seed)
    for step in range(steps):
        batch = next(batches)
        targets = objective.teacher_outputs(batch, data)
        loss = objective.loss(module.run(batch.inputs, outputs=objective.tensors), batch, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning diverged at step {step + 1} (loss {loss.item()}); lower --lr")
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)  # loss.backward(), which torch leaves unannotated
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, steps, losses[-1])
    module.eval()
    return losses


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    cosine: torch.Tensor = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)
    return cosine


def evaluate(module: OnnxModule, objective: Objective, data: Dataset, batch_size: int) -> Metrics:
    """Metrics of ``module`` (in inference mode) on ``data``, against labels and the original."""
    module.eval()
    total = correct = agree = 0
    loss_sum = cosine_sum = 0.0
    with torch.no_grad():
        for batch in data.batches(batch_size):
            n = len(batch.indices)
            targets = objective.teacher_outputs(batch, data)
            outputs = module.run(batch.inputs, outputs=objective.tensors)
            loss_sum += float(objective.loss(outputs, batch, targets)) * n
            cosine_sum += float(torch.stack([_cosine(o, t) for o, t in zip(outputs, targets)]).mean(0).sum())
            first = next((i for i, flag in enumerate(objective.classifier) if flag), None)
            if first is not None:
                predicted = outputs[first].argmax(1)
                agree += int((predicted == targets[first].argmax(1)).sum())
                if batch.labels is not None:
                    correct += int((predicted.numpy() == batch.labels).sum())
            total += n
    classifier = any(objective.classifier)
    return Metrics(
        loss=loss_sum / total,
        accuracy=correct / total if classifier and data.labels is not None else None,
        agreement=agree / total if classifier else None,
        cosine=cosine_sum / total,
    )


def outputs_on(module: OnnxModule, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph outputs of ``module`` in inference mode, as numpy (for the write-back check)."""
    module.eval()
    with torch.no_grad():
        return {name: t.numpy() for name, t in zip(module.output_names, module.run(inputs))}
