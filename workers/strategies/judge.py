"""How a candidate plan is judged against ``--max-drop`` (``--ratio auto``, ``--criterion learned``):
on the validation split, after the cheap part of the recovery the job will run.

Judging raw pruned weights asks the wrong question when recovery follows: layer-wise reconstruction
brings a ResNet-20 cut by 30% of its MACs back from ~30% to ~73% accuracy, so a bound checked raw
refuses nearly every cut (``--ratio auto --max-drop 0.02`` removed 2.5% of the MACs). The judge
therefore refits the candidate as the job's recovery would (``roundtrip.reconstruction``, seconds) and
measures that. When fine-tuning follows under ``--time-budget``, a bound judged after reconstruction
alone is still far too strict (fine-tuning took that ResNet-20 from 74% after reconstruction to 78%;
auto removed 11.6% of the MACs and ended 1.75 points *above* the original), so each candidate is also
fine-tuned briefly, out of a share of the budget. Without reconstruction in the job's recovery the
candidate is judged as pruned (in onnxruntime).

Both judge on the validation split only (``roundtrip.data.split_data``): the held-out split that
the report quotes is never seen while choosing.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.surgery import apply_plan
from onnxprune.workers.strategies.base import Job
from onnxprune.workers.strategies.needs import Given
from onnxprune.workers.strategies.reconstruct import Reconstruct

# Calibration samples a candidate is reconstructed on while judging: many candidates are tried, and
# fewer samples only make the judge slightly pessimistic (the final recovery uses --reconstruct-samples).
JUDGE_SAMPLES = 256
# Under --time-budget with fine-tuning to follow: the share of the budget the candidates' brief
# fine-tunes may take together, and how many candidates it is planned for (``choose_auto`` usually
# judges 6 to 9: the bound, doublings until one fails, three bisection steps).
JUDGE_SHARE = 0.4
JUDGED_CANDIDATES = 8

if TYPE_CHECKING:
    from onnxprune.roundtrip.executor import OnnxModule
    from onnxprune.roundtrip.training import Metrics
    from onnxprune.workers.evaluation import Evaluator


class PlanJudge(Protocol):
    """The metric (accuracy with labels, else fidelity) of a candidate plan on validation samples."""

    @property
    def how(self) -> str:
        """For the report: "after layer-wise reconstruction", "as pruned"."""

    @property
    def baseline(self) -> float:
        """The original model's metric, measured the same way."""

    @property
    def samples(self) -> int: ...

    def __call__(self, dep: DependencyGraph, plan: PruningPlan) -> float: ...


def choose_judge(job: Job) -> PlanJudge:
    """Reconstruction in the loop when the job's recovery reconstructs; the pruned weights otherwise."""
    if job.splits is None:
        raise ModelRejected("judging a plan against --max-drop needs data: pass --data DATA.npz")
    if Reconstruct.wanted(job.options, Given(data=True)):  # the job's recovery starts with reconstruction
        options = job.options
        budgeted = options.time_budget is not None and options.recovery != "reconstruct" and options.finetune_steps == 0
        return ReconstructedJudge(job, budgeted=budgeted)
    return PrunedJudge(job)


def finetune_seconds(job: Job) -> float:
    """Seconds of fine-tuning per candidate: a share of what --time-budget has left (the sensitivity
    sweep comes first and may take much of a short budget); none when under a second."""
    end = job.deadline()
    seconds = 0.0 if end is None else JUDGE_SHARE * max(0.0, end - time.monotonic()) / JUDGED_CANDIDATES
    return seconds if seconds >= 1.0 else 0.0


@dataclass
class PrunedJudge:
    """The candidate as surgery leaves it, scored in onnxruntime (sandboxed)."""

    job: Job
    how: str = "as pruned"
    evaluator: Evaluator = field(init=False)

    def __post_init__(self) -> None:
        from onnxprune.workers.evaluation import make_evaluator

        splits = self.job.splits
        if splits is None:
            raise ModelRejected("judging a plan against --max-drop needs data: pass --data DATA.npz")
        self.evaluator = make_evaluator(self.job.analysis.path, splits.validation, limits=self.job.limits)

    @property
    def baseline(self) -> float:
        return self.evaluator.baseline

    @property
    def samples(self) -> int:
        return len(self.evaluator.data)

    def __call__(self, dep: DependencyGraph, plan: PruningPlan) -> float:
        with tempfile.TemporaryDirectory(prefix="onnxprune-judge-", dir=self.job.workdir) as workdir:
            candidate = Path(workdir) / "candidate.onnx"
            candidate.write_bytes(apply_plan(dep, plan).SerializeToString())
            return self.evaluator.score([candidate])[0]


@dataclass
class ReconstructedJudge:
    """The candidate refit by layer-wise reconstruction on training samples, then fine-tuned for
    ``finetune_seconds`` (BatchNorm re-estimated around it) when that is not 0, scored in the executor.
    ``budgeted``: ``finetune_seconds`` is planned at the first candidate from what the budget has left."""

    job: Job
    finetune_seconds: float = 0.0
    budgeted: bool = False
    baseline: float = field(init=False)
    judged: int = field(init=False, default=0)  # candidates so far, for progress

    @property
    def how(self) -> str:
        brief = f" and {self.finetune_seconds:.0f} s of fine-tuning" if self.finetune_seconds > 0 else ""
        return "after layer-wise reconstruction" + brief

    def __post_init__(self) -> None:
        from onnxprune.roundtrip.training import evaluate

        data = self.job.data
        self.baseline = _metric(evaluate(data.objective.teacher, data.objective, data.validation, data.batch_size))

    @property
    def samples(self) -> int:
        return len(self.job.data.validation)

    def __call__(self, dep: DependencyGraph, plan: PruningPlan) -> float:
        from onnxprune.roundtrip.executor import OnnxModule
        from onnxprune.roundtrip.reconstruction import reconstruct
        from onnxprune.roundtrip.training import evaluate

        data, options = self.job.data, self.job.options
        # The original's teacher module serves as the reconstruction target only for the original graph.
        teacher = data.objective.teacher if dep is self.job.dep else None
        refit = reconstruct(
            dep,
            plan,
            apply_plan(dep, plan),
            data.train,
            samples=min(options.reconstruct_samples, JUDGE_SAMPLES),
            seed=options.seed,
            teacher=teacher,
        )
        if self.budgeted and self.judged == 0:
            self.finetune_seconds = finetune_seconds(self.job)
        self.judged += 1
        module = OnnxModule(refit.model)
        reconstructed = _metric(evaluate(module, data.objective, data.validation, data.batch_size))
        if self.finetune_seconds <= 0:
            return reconstructed
        self._finetune(module)
        # As in the final recovery, the weights before fine-tuning compete with the trained ones.
        return max(reconstructed, _metric(evaluate(module, data.objective, data.validation, data.batch_size)))

    def _finetune(self, module: OnnxModule) -> None:
        """The job's budgeted recovery in small, without checkpoint selection."""
        from onnxprune.roundtrip.schedule import BN_BATCHES
        from onnxprune.roundtrip.training import recalibrate_batchnorm
        from onnxprune.workers.strategies.finetune import MAX_BUDGETED_STEPS, FineTune

        data, options = self.job.data, self.job.options

        def show(done: int, total: int, loss: float) -> None:
            if done == total or done % max(1, total // 10) == 0:
                label = f"select: candidate {self.judged}, fine-tune {done}/{total}, loss {loss:.4g}"
                self.job.stages.within("select", 1.0, label)

        recalibrate_batchnorm(module, data.train, data.batch_size, BN_BATCHES, options.seed)
        recipe = FineTune.from_options(options, budgeted=False)
        recipe.train(self.job, module, MAX_BUDGETED_STEPS, options.seed, time.monotonic() + self.finetune_seconds, show)


def _metric(metrics: Metrics) -> float:
    """Accuracy with labels, else the mean output cosine."""
    return metrics.accuracy if metrics.accuracy is not None else metrics.cosine
