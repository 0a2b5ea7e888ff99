"""How a candidate plan is judged against ``--max-drop`` (``--ratio auto``, ``--criterion learned``):
on the validation split, after the cheap part of the recovery the job will run.

Judging raw pruned weights asks the wrong question when recovery follows: layer-wise reconstruction
brings a ResNet-20 cut by 30% of its MACs back from ~30% to ~73% accuracy, so a bound checked raw
refuses nearly every cut (``--ratio auto --max-drop 0.02`` removed 2.5% of the MACs). The judge
therefore refits the candidate as the job's recovery would (``roundtrip.reconstruction``, seconds) and
measures that; fine-tuning, which only adds to it, is too slow to run per candidate. Without
reconstruction in the job's recovery the candidate is judged as pruned (in onnxruntime).

Both judge on the validation split only (``roundtrip.data.split_data``): the held-out split that
the report quotes is never seen while choosing.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.surgery import apply_plan
from onnxprune.workers.strategies.base import Job

# Calibration samples a candidate is reconstructed on while judging: many candidates are tried, and
# fewer samples only make the judge slightly pessimistic (the final recovery uses --reconstruct-samples).
JUDGE_SAMPLES = 256

if TYPE_CHECKING:
    from onnxprune.roundtrip.training import Metrics
    from onnxprune.workers.evaluation import Evaluator


class PlanJudge(Protocol):
    """The metric (accuracy with labels, else fidelity) of a candidate plan on validation samples."""

    how: str  # for the report: "after layer-wise reconstruction", "as pruned"

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
    if job.options.recovery in ("auto", "reconstruct"):
        return ReconstructedJudge(job)
    return PrunedJudge(job)


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
    """The candidate refit by layer-wise reconstruction on training samples, scored in the executor."""

    job: Job
    how: str = "after layer-wise reconstruction"
    baseline: float = field(init=False)

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
        return _metric(evaluate(OnnxModule(refit.model), data.objective, data.validation, data.batch_size))


def _metric(metrics: Metrics) -> float:
    """Accuracy with labels, else the mean output cosine."""
    return metrics.accuracy if metrics.accuracy is not None else metrics.cosine
