"""Recovery: re-estimate BatchNorm statistics and fine-tune through the ONNX->PyTorch executor
(Li et al.'s retraining; Molchanov et al.'s short fine-tune between steps), then write the weights
back into the same graph by name. The original model is distilled, with cross-entropy added when
there are labels (``roundtrip.objective``); image inputs are augmented; the best weights on the
validation split are kept; with ``--time-budget`` the step count is planned to fit the budget."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx

from onnxprune.graphops.cost import measure_cost
from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.options import PruneOptions, RecoveryChoice
from onnxprune.workers.strategies.base import Job, Step
from onnxprune.workers.strategies.needs import Given, Needs
from onnxprune.workers.strategies.recovery import NoRecovery, Recovered, Recovery
from onnxprune.workers.strategies.registry import Requires, StrategyOptions, own, register

if TYPE_CHECKING:  # torch is imported only when a job fine-tunes
    import torch

    from onnxprune.roundtrip.context import DataContext
    from onnxprune.roundtrip.data import Dataset
    from onnxprune.roundtrip.executor import OnnxModule
    from onnxprune.roundtrip.objective import FeatureMatch
    from onnxprune.roundtrip.training import Metrics, StepProgress, TrainingRun

# With --time-budget, recovery must end by this share of the budget: held-out evaluation, the
# benchmark and writing the result come after it (and what follows training is reserved for at three
# times its measured cost already). At 0.85 ResNet-20's 600 s runs ended after 469 s: a fifth of the
# budget, which recovery is bound by, unused.
RECOVERY_SHARE = 0.95
# Steps a budgeted run may plan at most when --finetune-steps does not cap it.
MAX_BUDGETED_STEPS = 1_000_000
# Share of the planned steps the learning rate warms up over (fresh momentum after surgery).
WARMUP_FRACTION = 0.05
# L2 weight decay of the SGD steps, the usual CIFAR ResNet value: a budgeted run makes ~200 passes
# over ResNet-20's 1,200 training samples, and without it the shared ResNet-20 at -50% MACs
# (taylor, 600 s) ended 1.35 points lower on held-out images (75.95% against 77.30%).
WEIGHT_DECAY = 5e-4


class FineTuneRecipe(StrategyOptions):
    """How to fine-tune: shared by every strategy that fine-tunes (the learned search, after each layer)."""

    recovery: RecoveryChoice = own("recovery")
    finetune_steps: int = own("finetune_steps")
    lr: float = own("lr")
    time_budget: float | None = own("time_budget")
    augment: bool = own("augment")
    match_features: bool = own("match_features")


class FineTuneOptions(FineTuneRecipe):
    iterative_steps: int = own("iterative_steps")  # fine-tuned (BatchNorm re-estimated) between the steps


# A training step (forward and backward over a batch) against a forward pass over as many samples.
STEP_COST = 3.0


def _shortest_training(evaluation_s: float, evaluated: int, batch_size: int) -> float:
    """Seconds the shortest fine-tuning takes: one step, and the two evaluations on the validation split
    that follow it (the checkpoint choice, the metrics after), reckoned from one evaluation's time."""
    per_sample = evaluation_s / max(1, evaluated)
    return STEP_COST * per_sample * batch_size + 2 * evaluation_s


def _time_for(evaluation_s: float, end: float | None, reserve: float) -> bool:
    """Whether one more evaluation on the validation split ends before ``end`` less what the evaluations
    after recovery take (the held-out ones in onnxruntime: about a third of ``reserve``, which also counts the
    re-estimation and evaluation after training)."""
    return end is None or time.monotonic() + evaluation_s + reserve / 3 <= end


@register(
    "recovery",
    "finetune",
    options=FineTuneOptions,
    requires=Requires(data=True, torch=True),
    report="evaluation.finetune",
    position=20,
)
@dataclass
class FineTune:
    steps: int  # optimizer steps per pruning step (0: BatchNorm re-estimation only, unless budgeted)
    lr: float
    augment: bool = True
    budgeted: bool = False  # steps planned from --time-budget (``steps``, when set, caps them)
    match_features: bool = False  # also match the refit layers' outputs (``roundtrip.objective.FeatureMatch``)

    @classmethod
    def wanted(cls, options: PruneOptions, given: Given) -> bool:
        """When asked for (steps, iterative pruning), or when data and a time budget are given (the budget
        then sets the number of steps); never with recovery 'reconstruct'."""
        own_options = FineTuneOptions.of(options)
        budgeted = own_options.time_budget is not None and given.data
        asked = own_options.finetune_steps > 0 or own_options.iterative_steps > 1 or budgeted
        return own_options.recovery != "reconstruct" and asked

    @classmethod
    def build(cls, options: PruneOptions, given: Given, then: Recovery) -> FineTune:
        if not isinstance(then, NoRecovery):  # a programming error: a recovery registered after this one
            raise ValueError(f"fine-tuning is the last recovery of a job; {type(then).__name__} cannot follow it")
        return cls.from_options(options, budgeted=FineTuneOptions.of(options).time_budget is not None and given.data)

    def needs(self, options: PruneOptions, given: Given) -> Needs:
        """BatchNorm re-estimation and training run in the PyTorch executor, on the job's data."""
        if self.steps > 0:
            why = "fine-tuning (finetune_steps)"
        elif FineTuneOptions.of(options).iterative_steps > 1:  # BatchNorm re-estimated between the steps
            why = "iterative pruning (iterative_steps)"
        else:
            why = "fine-tuning under the time budget (time_budget with data)"
        return Needs(data="fine-tuning needs data", torch=why)

    @classmethod
    def from_options(cls, options: PruneOptions, *, budgeted: bool) -> FineTune:
        own_options = FineTuneOptions.of(options)
        return cls(
            own_options.finetune_steps, own_options.lr, own_options.augment, budgeted, own_options.match_features
        )

    def _plan(self, job: Job, step: Step, reserve: float) -> tuple[int, float | None]:
        """Steps and deadline of this pruning step's fine-tuning: an equal share of what is left once
        ``reserve`` seconds per remaining step are set aside for the work that follows training."""
        end = job.deadline(RECOVERY_SHARE) if self.budgeted else None
        if end is None:
            return self.steps, None
        now, remaining = time.monotonic(), step.total - step.index
        deadline = now + max(0.0, end - now - reserve * remaining) / remaining
        return (self.steps or MAX_BUDGETED_STEPS), deadline

    def train(
        self,
        job: Job,
        module: OnnxModule,
        steps: int,
        seed: int,
        deadline: float | None,
        progress: StepProgress,
        select_on: Dataset | None = None,
        features: FeatureMatch | None = None,
        start: Metrics | None = None,
    ) -> TrainingRun:
        """Fine-tune ``module`` by this recipe on the job's training split, then re-estimate its
        BatchNorm statistics: the running averages trail weights that training kept moving."""
        from onnxprune.roundtrip.schedule import BN_BATCHES
        from onnxprune.roundtrip.training import finetune, recalibrate_batchnorm

        data = job.data
        run = finetune(
            module,
            data.objective,
            data.train,
            steps=steps,
            lr=self.lr,
            batch_size=data.batch_size,
            seed=seed,
            augment=self.augment,
            warmup_fraction=WARMUP_FRACTION,
            weight_decay=WEIGHT_DECAY,
            select_on=select_on,
            deadline=deadline,
            progress=progress,
            features=features,
            start=start,
        )
        recalibrate_batchnorm(module, data.train, data.batch_size, BN_BATCHES, seed)
        return run

    @staticmethod
    def _statistics_as_given(
        student: OnnxModule, statistics: dict[str, torch.Tensor], recalibrated: Metrics, data: DataContext
    ) -> Metrics:
        """With no training step, the BatchNorm statistics the model came with compete with those just
        re-estimated on a few batches, on the validation split; the better stay (and their metrics).
        After reconstruction the layers before each BN reproduce the original's outputs, whose statistics
        were estimated on far more data (ViT-S/14's decoder, 150 photos: held-out cosine 0.9891 kept,
        0.9876 re-estimated); after pruning alone, the re-estimated ones usually win."""
        from onnxprune.roundtrip.training import evaluate, restore, selection_score, snapshot_tensors

        recalibrated_values = snapshot_tensors(student, statistics)
        restore(student, statistics)
        given = evaluate(student, data.objective, data.validation, data.batch_size)
        if selection_score(given) >= selection_score(recalibrated):
            return given
        restore(student, recalibrated_values)
        return recalibrated

    def recover(
        self, job: Job, dep: DependencyGraph, plan: PruningPlan, pruned: onnx.ModelProto, step: Step
    ) -> Recovered:
        from onnxprune.roundtrip.executor import OnnxModule
        from onnxprune.roundtrip.reconstruction import matched_features
        from onnxprune.roundtrip.schedule import BN_BATCHES, IterationRecord
        from onnxprune.roundtrip.training import evaluate, outputs_on, recalibrate_batchnorm, snapshot_tensors
        from onnxprune.roundtrip.writeback import write_back

        data, seed = job.data, job.options.seed + step.index
        label = f"step {step.index + 1}/{step.total}: " if step.total > 1 else ""
        with job.stages.stage("finetune"):
            started = time.monotonic()
            student = OnnxModule(pruned)
            statistics = snapshot_tensors(student, student.statistics_names)
            recalibrate_batchnorm(student, data.train, data.batch_size, BN_BATCHES, seed)
            evaluated = time.monotonic()
            after_pruning = evaluate(student, data.objective, data.validation, data.batch_size)
            after_finetune, losses, kept_step, seconds, cpu_seconds = None, [], None, 0.0, 0.0
            # After training: re-estimation and evaluation again, the write-back and its check, the
            # held-out evaluations in onnxruntime: about three times what the two took just now.
            reserve = 3 * (time.monotonic() - started)
            steps, deadline = self._plan(job, step, reserve)
            budget = job.options.time_budget
            if steps > 0 and deadline is not None and self.steps == 0:
                shortest = _shortest_training(time.monotonic() - evaluated, len(data.validation), data.batch_size)
                now = time.monotonic()
                if now + shortest > deadline:
                    steps = 0
                    # Say what the reserve took: "0 s left" with a minute of budget to go reads as a bug.
                    left = max(0.0, (job.deadline(RECOVERY_SHARE) or now) - now)
                    job.budget_notes.append(
                        f"--time-budget: no fine-tuning: one step with its checkpoint evaluations takes about "
                        f"{shortest:.0f} s here, more than the {max(0.0, deadline - now):.0f} s the budget of "
                        f"{budget:g} s left for it (of {left:.0f} s left for recovery, about "
                        f"{min(left, reserve * (step.total - step.index)):.0f} s are kept for the evaluations and "
                        f"checks after training); a larger --time-budget fine-tunes"
                    )
            if steps == 0 and statistics:
                evaluation_s = time.monotonic() - evaluated
                if deadline is None or _time_for(evaluation_s, job.deadline(RECOVERY_SHARE), reserve):
                    after_pruning = self._statistics_as_given(student, statistics, after_pruning, data)
                else:
                    job.budget_notes.append(
                        f"--time-budget: the BatchNorm statistics re-estimated on the training split were kept "
                        f"without trying those the model came with (one more evaluation, about {evaluation_s:.0f} "
                        "s here, would have ended past the budget)"
                    )
            if steps > 0:

                def show(done: int, total: int, loss: float) -> None:
                    if done == total or done % max(1, total // 20) == 0:
                        spent = f", {time.monotonic() - job.started:.0f}/{budget:.0f} s" if deadline else ""
                        job.stages.within(
                            "finetune",
                            (step.index + done / total) / step.total,
                            f"{label}finetune {done}/{total}, loss {loss:.4g}{spent}",
                        )

                features = None
                if self.match_features:
                    sample = next(data.train.batches(min(len(data.train), student.static_batch or 2))).inputs
                    teacher, exclude = data.objective.teacher, data.objective.tensors
                    features = matched_features(dep, plan, pruned, student, teacher, sample, exclude)
                run = self.train(job, student, steps, seed, deadline, show, data.validation, features, after_pruning)
                losses, kept_step, seconds, cpu_seconds = run.losses, run.kept_step, run.seconds, run.cpu_seconds
                if run.diverged:
                    job.recovery_notes.append(
                        f"{label}fine-tuning diverged at {run.diverged} and stopped; the weights of step "
                        f"{kept_step} were kept (the best on the validation split; 0: before training): a lower "
                        f"--lr than {self.lr:g} trains further"
                    )
                after_finetune = evaluate(student, data.objective, data.validation, data.batch_size)
            model = write_back(pruned, student)
            record = IterationRecord(
                step.index + 1,
                measure_cost(model, job.analysis.input_shapes).macs,
                plan.removed_channels,
                after_pruning,
                after_finetune,
                losses[-1] if losses else None,
                kept_step,
            )
            check_inputs = next(data.validation.batches(min(len(data.validation), student.static_batch or 4))).inputs
            return Recovered(
                model,
                record,
                losses,
                check_inputs,
                outputs_on(student, check_inputs),
                finetune_seconds=seconds,
                finetune_cpu_seconds=cpu_seconds,
            )
