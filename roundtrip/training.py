"""Fine-tuning, BatchNorm statistics re-estimation and evaluation of an executor module.

SGD with Nesterov momentum, a short warm-up and a cosine learning-rate decay: the usual recipe for
recovering a pruned conv net (Li et al. retrain after pruning; Molchanov et al. fine-tune between
pruning steps), with augmentation and best-checkpoint selection because our users have a few
thousand samples, not a training set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from onnxprune.roundtrip.augment import augment_inputs
from onnxprune.roundtrip.data import Dataset
from onnxprune.roundtrip.executor import OnnxModule
from onnxprune.roundtrip.objective import FeatureMatch, Objective

StepProgress = Callable[[int, int, float], None]  # (step, steps, loss)
# Steps timed before a deadline first re-plans the run; it is re-planned again at 4x, 16x, ... as many,
# and at least every tenth of the plan.
_PLANNING_STEPS = 5
_REPLAN_GROWTH = 4
_REPLANS = 10
# Share of the training time the checkpoint selection evaluations may take. Their count was fixed
# (ten), so on a busy machine, where a budget buys a few hundred steps, they took a tenth of it
# (ResNet-20, 120 s at load 5: twelve evaluations of 400 samples, 7.3 of 74 s); a quiet run of
# thousands of steps still makes all ten.
SELECTION_SHARE = 0.04
# A detector's gradients are clipped to this total norm, as Ultralytics trains YOLO: at -50% MACs the
# shared YOLOv8n's fine-tuning diverged (loss nan at step 9, lr 0.002) without it.
DETECTOR_GRAD_NORM = 10.0


@dataclass(frozen=True)
class Metrics:
    """One model on one split (validation while choosing): the objective's loss, and what a person reads."""

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


@dataclass
class TrainingRun:
    """What a fine-tuning run did: its losses, how many steps it took (a deadline can cut a plan
    short), and which step's weights it kept (the best on the selection split)."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    kept_step: int | None = None  # None: the last step's weights (no selection split)
    kept_metric: float | None = None
    seconds: float = 0.0  # wall time of the training loop (selection evaluations included)
    cpu_seconds: float = 0.0  # CPU time this process spent meanwhile, all threads: how much CPU it got
    diverged: str = ""  # where a non-finite loss stopped training ('step 11 (loss nan)'); '': it did not
    rates: list[float] = field(default_factory=list)  # the learning rate of every step


@dataclass
class StepPlan:
    """How many steps fit before ``deadline`` (``time.monotonic()``), re-estimated as training goes,
    and the learning-rate schedule over the run.

    The first steps are slow (allocator and oneDNN warm-up), so a plan measured on them alone ends
    training early: a 600 s ResNet-20 run planned from its first five steps stopped after 432 s.
    Each re-plan therefore times only the steps since the previous one (selection evaluations
    included, as they will recur), and re-plans recur at least every tenth of the plan, so that one
    window slowed by other work on the machine does not end the run early (re-measured only at 4x
    intervals, a 600 s run ended after 403 s). ``total`` never grows past the count it was given.

    The schedule follows the share of the run done (``progress``): of the steps asked for or, under a
    deadline, of the time to it, whichever is further; a re-plan moves the end of training, never
    where the schedule stands. A share of the re-planned step count did: under --time-budget the
    count is a million until the first re-plan, so the first five steps warmed up at a rate near 0,
    and a run re-planned to a few dozen steps was already past its warm-up at step 6, at the peak
    rate (the shared YOLOv8n's loss rose from 0.5 to 2.2 by step 8).
    """

    total: int
    deadline: float | None
    started: float
    warmup_fraction: float = 0.0
    _mark: tuple[int, float] = field(init=False)
    _next: int = field(init=False, default=_PLANNING_STEPS)
    _cap: int = field(init=False)
    _last_step_end: float = field(init=False)

    def __post_init__(self) -> None:
        self._mark, self._cap, self._last_step_end = (0, self.started), self.total, self.started

    def after(self, step: int, now: float) -> None:
        """Called after each step: re-plans at steps 5, 20, 80, ... and every tenth of the plan, when
        there is a deadline."""
        self._last_step_end = now
        if self.deadline is None or step != self._next:
            return
        mark_step, mark_time = self._mark
        per_step = max(now - mark_time, 1e-9) / (step - mark_step)
        self.total = max(step, min(self._cap, step + int((self.deadline - now) / per_step)))
        self._mark, self._next = (step, now), min(step * _REPLAN_GROWTH, step + max(1, self.total // _REPLANS))

    def progress(self, steps: int, now: float) -> float:
        """Share of the run done after ``steps`` steps, at ``now``: of the steps asked for, or of the time
        to the deadline, whichever is further (at most 1)."""
        done = steps / max(1, self._cap)
        if self.deadline is not None:
            span = self.deadline - self.started
            done = max(done, (now - self.started) / span if span > 0 else 1.0)
        return min(1.0, done)

    def lr_factor(self, step: int, now: float) -> float:
        """The rate's factor for step ``step`` (0-based), whose update is made at ``now``: a linear warm-up
        over the first ``warmup_fraction`` of the run (fresh momentum after surgery overshoots
        otherwise), reached by the step's end, then a cosine decay to 0 from where the step began."""
        began, ended = self.progress(step, self._last_step_end), self.progress(step + 1, now)
        warmup = self.warmup_fraction
        ramp = min(1.0, ended / warmup) if warmup > 0 else 1.0
        decayed = min(1.0, max(0.0, (began - warmup) / (1 - warmup))) if warmup < 1 else 0.0
        return ramp * 0.5 * (1 + math.cos(math.pi * decayed))


def selection_score(metrics: Metrics) -> float:
    """Higher is better: accuracy with labels, else minus the distillation loss."""
    return metrics.accuracy if metrics.accuracy is not None else -metrics.loss


def _evaluated_score(module: OnnxModule, objective: Objective, data: Dataset, batch_size: int) -> float:
    return selection_score(evaluate(module, objective, data, batch_size))


def _select(
    module: OnnxModule,
    objective: Objective,
    data: Dataset,
    batch_size: int,
    step: int,
    best: tuple[float, int, dict[str, torch.Tensor]] | None,
) -> tuple[float, int, dict[str, torch.Tensor]]:
    """``best`` or, if they score higher on ``data``, the module's weights after ``step``."""
    score = _evaluated_score(module, objective, data, batch_size)
    return (score, step, _snapshot(module)) if best is None or score > best[0] else best


def _snapshot(module: OnnxModule) -> dict[str, torch.Tensor]:
    return snapshot_tensors(module, [*module.named_trainable(), *module.statistics_names])


def snapshot_tensors(module: OnnxModule, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Copies of the module's tensors ``names`` (weights, BatchNorm statistics), to go back to (``restore``)."""
    return {name: module.tensor(name).detach().clone() for name in names}


def restore(module: OnnxModule, snapshot: dict[str, torch.Tensor]) -> None:
    """The module's tensors set back to ``snapshot`` (``snapshot_tensors``)."""
    with torch.no_grad():
        for name, value in snapshot.items():
            module.tensor(name).copy_(value)


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
    augment: bool = False,
    warmup_fraction: float = 0.0,
    select_on: Dataset | None = None,
    selections: int = 10,
    deadline: float | None = None,
    progress: StepProgress | None = None,
    features: FeatureMatch | None = None,
    start: Metrics | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TrainingRun:
    """Up to ``steps`` SGD steps (momentum 0.9, optional warm-up, cosine decay) on the objective.

    ``augment``: random crops and flips of image inputs (``roundtrip.augment``), the teacher's targets
    computed on the same augmented batch. ``select_on``: evaluated before training and ``selections``
    times during it; the best weights are kept (few samples overfit late; step 0, the weights it was
    given, when training only made them worse), at most ``SELECTION_SHARE`` of the training time apart
    from the last step's, which is always evaluated. ``deadline`` (``time.monotonic()``): the step count
    is re-planned from the measured step time so training ends by then. ``features``: intermediate
    tensors matched to the teacher's besides the objective. ``start``: the given weights' metrics on
    ``select_on``, when the caller has just measured them (not evaluated again). ``clock``: what
    ``deadline`` and the schedule's time are read from.
    """
    if steps <= 0:
        return TrainingRun()
    with module.channels_last(), objective.teacher.channels_last():
        run = TrainingRun()
        parameters = list(module.named_trainable().values())
        optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
        rng = np.random.default_rng(seed)
        batches = data.endless(batch_size, seed=seed)
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        if select_on is not None:  # the starting weights compete too: a step size too large for a light cut
            score = (
                selection_score(start)
                if start is not None
                else _evaluated_score(module, objective, select_on, batch_size)
            )
            best = (score, 0, _snapshot(module))
        # Without a selection split, the weights to go back to if training diverges.
        given = _snapshot(module) if best is None else None
        plan = StepPlan(steps, deadline, clock(), warmup_fraction)
        selecting = 0.0  # seconds spent on selection evaluations
        cpu_started = time.process_time()
        module.train()
        step, count, matched = 0, len(objective.tensors), features.tensors if features is not None else []
        while step < plan.total:
            batch = next(batches)
            if augment:
                batch = replace(batch, inputs=augment_inputs(batch.inputs, rng))
            # Augmented images get the teacher's outputs on them, not the cached ones of the originals.
            targets = objective.teacher_outputs(batch, None if augment else data, also=matched)
            outputs = module.run(batch.inputs, outputs=[*objective.tensors, *matched])
            loss = objective.loss(outputs[:count], batch, targets[:count])
            if features is not None:
                loss = loss + features.loss(outputs[count:], targets[count:])
            if not torch.isfinite(loss):
                # A step size too large for this model (YOLOX on 0-255 pixels at the default lr: nan at
                # step 11): training stops and the best weights so far are kept, never the job lost.
                run.diverged = f"step {step + 1} (loss {loss.item():g})"
                break
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)  # loss.backward(), which torch leaves unannotated
            if objective.detector is not None:
                torch.nn.utils.clip_grad_norm_(parameters, DETECTOR_GRAD_NORM)
            rate = lr * plan.lr_factor(step, clock())
            for group in optimizer.param_groups:
                group["lr"] = rate
            optimizer.step()
            step += 1
            run.losses.append(float(loss.detach()))
            run.rates.append(rate)
            now = clock()
            plan.after(step, now)
            last = step == plan.total or (deadline is not None and now > deadline)
            due = step % max(1, plan.total // selections) == 0 and selecting <= SELECTION_SHARE * (now - plan.started)
            if select_on is not None and (due or last):
                best = _select(module, objective, select_on, batch_size, step, best)
                selecting += clock() - now
                module.train()
            if last:
                break
            if progress is not None:
                progress(step, plan.total, run.losses[-1])
        if progress is not None and run.losses:
            progress(step, step, run.losses[-1])
        run.steps = step
        run.seconds, run.cpu_seconds = clock() - plan.started, time.process_time() - cpu_started
        if best is not None:
            restore(module, best[2])
            run.kept_metric, run.kept_step = best[0], best[1]
        elif given is not None and run.diverged:
            restore(module, given)
            run.kept_step = 0
        module.eval()
        return run


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
            # Integer outputs (token ids passed through) are the original's by construction: not compared.
            pairs = [(o, t) for o, t in zip(outputs, targets) if o.is_floating_point()] or list(zip(outputs, targets))
            cosine_sum += float(torch.stack([_cosine(o, t) for o, t in pairs]).mean(0).sum())
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
