"""What every strategy of a pruning job sees and returns.

A job is pruned by a **schedule** (how choosing and recovering alternate: once, in iterative steps,
or layer by layer), built from a **selector** (how channels are chosen: a saved plan, a ranking by
ratio or MACs target, sensitivity-based ratios, ...) and a **recovery** (what brings the pruned
model back: nothing, fine-tuning, ...). ``workers.strategies.choose_schedule`` picks them from the
options; the pipeline only runs the schedule.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import onnx

from onnxprune.graphops.cost import measure_cost
from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.latency_table import LatencyTable
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.scoring import Scores, score_groups
from onnxprune.graphops.surgery import apply_plan
from onnxprune.graphops.weights import ModelWeights
from onnxprune.workers.analysis import Analysis
from onnxprune.workers.benchmark import make_inputs
from onnxprune.workers.latency import LatencySettings, cached_table
from onnxprune.workers.options import PruneOptions, criterion_needs_data
from onnxprune.workers.report import FastestCutReport, FinetuneReport, LatencyTargetReport, SensitivityReport
from onnxprune.workers.sandbox import RunnerLimits
from onnxprune.workers.stages import Stages
from onnxprune.workers.strategies.needs import Given, Needs
from onnxprune.workers.verification import Outputs, Verified, verify_against_oracle, write_model

if TYPE_CHECKING:
    from onnxprune.roundtrip.context import DataContext
    from onnxprune.roundtrip.data import Dataset, DataSplits
    from onnxprune.workers.evaluation import Evaluator


# With --time-budget, data-driven scoring ends by this share of the budget (after at least one batch):
# reconstruction, fine-tuning and the held-out evaluation need the rest.
SCORE_SHARE = 0.3


@dataclass
class Job:
    """One pruning job as its strategies see it: the analysed model, the options, the data, where to
    report progress and write scratch files, and the checks every surgery goes through."""

    analysis: Analysis
    options: PruneOptions
    stages: Stages
    workdir: Path
    limits: RunnerLimits = field(default_factory=RunnerLimits)
    data_path: Path | None = None
    sensitivity: SensitivityReport | None = None
    data_context: DataContext | None = None  # loaded on first use of :attr:`data`, or given
    round_to_source: str = "given"  # how options.round_to was chosen ('auto' resolves before the job starts)
    started: float = field(default_factory=time.monotonic)
    # The original's outputs on ``check_inputs``, from the first verification's run (for fidelity).
    reference_outputs: Outputs | None = field(default=None, repr=False)
    verified: Verified | None = field(default=None, repr=False)  # the last model the oracle passed
    # What the time budget cut short (scoring batches, calibration samples, fine-tuning): the report's warnings.
    budget_notes: list[str] = field(default_factory=list)
    # What recovery could not do as asked (a fine-tuning that diverged): the report's warnings.
    recovery_notes: list[str] = field(default_factory=list)
    # How criterion 'auto' was resolved for a transformer (workers.default_criterion): the report's warnings.
    criterion_notes: list[str] = field(default_factory=list)

    @cached_property
    def check_inputs(self) -> dict[str, np.ndarray]:
        """The one set of seeded inputs every check of this job runs on (oracle, write-back, fidelity)."""
        return make_inputs(self.analysis.original, self.analysis.input_shapes, self.options.seed)

    def deadline(self, share: float = 1.0) -> float | None:
        """``time.monotonic()`` by which ``share`` of ``--time-budget`` is used up (None: no budget)."""
        budget = self.options.time_budget
        return None if budget is None else self.started + share * budget

    @cached_property
    def latency_table(self) -> LatencyTable | None:
        """The latency model measured before for this model and deploy settings (``--latency-target``
        caches one), which lets a MACs target choose the fastest of its cuts; None without one, and
        with ``--round-to 1`` (exact counts: the MACs-only cut)."""
        if self.options.round_to == 1:
            return None
        return cached_table(self.analysis.sha256, self.analysis.input_shapes, LatencySettings.of(self.options))

    @property
    def round_to(self) -> int:
        """The channel-count step; ``'auto'`` was resolved to a number before the job started."""
        step = self.options.round_to
        if not isinstance(step, int):
            raise ValueError("round_to 'auto' must be resolved (workers.latency.resolve_round_to) before a job runs")
        return step

    @property
    def dep(self) -> DependencyGraph:
        return self.analysis.dep

    @property
    def data(self) -> DataContext:
        """Training and validation splits with the objective (needs torch): built once, on first use."""
        if self.data_context is not None:
            return self.data_context
        if self.splits is None:
            reason = self.options.data_requirement() or "this job needs data"
            raise ModelRejected(f"{reason}: pass --data DATA.npz (one array per model input, optional labels)")
        from onnxprune.roundtrip.context import make_context
        from onnxprune.workers.job_threads import configure_torch
        from onnxprune.workers.teacher_session import runner_of

        configure_torch()  # torch's pools sized to the job's CPU budget before their first use
        # The executor runs the prepared graph the analysis prunes (constants folded, shapes known), never
        # the raw export: its run-time shape subgraphs (Shape -> Gather -> Reshape) are not executor material.
        self.data_context = make_context(
            self.splits.train,
            self.splits.validation,
            self.analysis.prepared,
            batch_size=self.options.batch_size,
            score_batches=self.options.score_batches,
            detector=self.options.detector,
            teacher_runner=runner_of(self.analysis.path),
        )
        return self.data_context

    @cached_property
    def splits(self) -> DataSplits | None:
        """The data file split once (numpy only; ``roundtrip.data.split_data``), or None without data.
        Strategies fit on ``train`` and choose on ``validation``; ``held_out`` is :attr:`held_out`'s."""
        if self.data_path is None:
            return None
        from onnxprune.roundtrip.data import load_dataset, split_data

        return split_data(
            load_dataset(
                self.data_path,
                self.analysis.original,
                self.analysis.input_shapes,
                self.options.image_preprocessing,
            )
        )

    @property
    def held_out(self) -> Dataset | None:
        """The samples the report is measured on, read by the pipeline after the schedule (and by the
        finish that measures the float model beside a quantized one): never by a strategy."""
        return None if self.splits is None else self.splits.held_out

    @cached_property
    def held_out_evaluator(self) -> Evaluator | None:
        """The original's outputs on :attr:`held_out`, run once: every model the job scores there (the
        recovered one, the pruned-only one, the float one beside a quantized result) is compared to them."""
        held_out = self.held_out
        if held_out is None:
            return None
        from onnxprune.workers.evaluation import make_evaluator

        return make_evaluator(self.analysis.path, held_out, limits=self.limits)

    def as_job_sees(self, dep: DependencyGraph) -> DependencyGraph:
        """A model pruned from the job's (an iterative step's), analysed afresh, with what the pipeline
        gave :attr:`dep`: the per-kind limits, of the original's groups, and under 'auto' rounding
        its groups' kernel steps."""
        from onnxprune.graphops.kernel_steps import with_kernel_steps
        from onnxprune.graphops.kinds import limit_groups

        dep = limit_groups(dep, self.options.kind_limits, original=self.dep)
        return with_kernel_steps(dep) if self.round_to_source.startswith("auto") else dep

    def scores(self, dep: DependencyGraph, *, step: int = 0) -> Scores:
        """The criterion's channel scores on ``dep`` (the original, or the model of an iterative step)."""
        options = self.options
        if not criterion_needs_data(options.criterion):
            return score_groups(dep, options.criterion, seed=options.seed + step)
        from onnxprune.roundtrip.criteria import ScoredOn

        observed = ScoredOn()
        extra: dict[str, Any] = {"data": self.data, "flops_regularization": options.flops_regularization}
        scores = score_groups(
            dep,
            options.criterion,
            seed=options.seed + step,
            deadline=self.deadline(SCORE_SHARE),
            observed=observed,
            **extra,
        )
        if observed.cut_by_deadline:
            self.budget_notes.append(
                f"--time-budget: criterion '{options.criterion}' scored on {observed.samples} samples "
                f"({observed.batches} of {observed.asked} batches): more would have left too little of the "
                f"{options.time_budget:g} s for recovery; a larger --time-budget scores on more"
            )
        return scores

    def macs(self, dep: DependencyGraph) -> int:
        if dep is self.analysis.dep:
            return self.analysis.cost.macs
        return measure_cost(dep.model, self.analysis.input_shapes).macs

    def apply_verified(self, dep: DependencyGraph, plan: PruningPlan) -> onnx.ModelProto:
        """``plan`` applied to ``dep``'s model, checked by onnx.checker and the oracle.

        The original's own outputs come from the first check's run unless the benchmark will
        measure them anyway (``reference_outputs``)."""
        weights = ModelWeights(dep.model)  # decoded once for the surgery, the masking and the runs
        with self.stages.stage("apply"):
            pruned = apply_plan(dep, plan, weights)
            gc.collect()  # the surgery's onnx-graphsurgeon graph (a reference cycle) and the arrays it held
        with self.stages.stage("verify"):
            reference = dep is self.analysis.dep and self.reference_outputs is None and not self.options.benchmark
            verified = verify_against_oracle(
                dep,
                plan,
                pruned,
                self.workdir,
                self.check_inputs,
                limits=self.limits,
                weights=weights,
                with_reference=reference,
            )
        if verified.reference is not None:
            self.reference_outputs = verified.reference
        self.verified = verified
        return pruned

    def written(self, model: onnx.ModelProto, path: Path) -> tuple[Path, str]:
        """``model``'s file and SHA-256: the oracle's file when ``model`` is the model it passed (each
        model is written once), else ``path``, written now."""
        verified = self.verified
        if verified is not None and verified.model is model:
            return verified.path, verified.sha256
        return path, write_model(model, path)


@dataclass(frozen=True)
class Step:
    """Which of a schedule's steps is being chosen (0-based ``index`` of ``total``)."""

    index: int = 0
    total: int = 1

    def goal(self, target: float) -> float:
        """The part of ``target`` reached once this step is done."""
        return target * (self.index + 1) / self.total

    def done(self, target: float) -> float:
        return target * self.index / self.total


@dataclass
class Selection:
    """The channels a selector keeps, with what the report should say about how they were chosen."""

    plan: PruningPlan
    notes: list[str] = field(default_factory=list)
    group_ratios: dict[str, float] = field(default_factory=dict)
    sensitivity: SensitivityReport | None = None
    latency_target: LatencyTargetReport | None = None
    fastest_cut: FastestCutReport | None = None  # --flops-target with a latency table: the cuts compared
    validation_drop: float | None = None  # --max-drop targets: the plan's drop as judged on the validation split
    from_saved_plan: bool = False  # --plan-in: the options' target asked for nothing (workers.shortfall)


@dataclass
class Outcome:
    """What a schedule produced: the final model and the plan that maps the original onto it."""

    plan: PruningPlan
    model: onnx.ModelProto
    selection: Selection
    pruned_only: onnx.ModelProto | None = None  # the plan without recovery, when recovery changed weights
    finetune: FinetuneReport | None = None
    learned: Any = None  # workers.report.LearnedReport of a learned search
    seconds: dict[str, float] = field(default_factory=dict)  # recovery time by part


class Selector(Protocol):
    """Chooses the channels to keep on ``dep`` for one step of a schedule."""

    def needs(self, options: PruneOptions, given: Given) -> Needs:
        """What choosing needs besides the model (data, PyTorch): see ``strategies.needs``."""
        ...

    def select(self, job: Job, dep: DependencyGraph, step: Step) -> Selection: ...


class Schedule(Protocol):
    """Prunes the job's model and recovers it, every surgery verified: returns the final model."""

    def needs(self, options: PruneOptions, given: Given) -> Needs:
        """What the whole schedule needs: its own, its selector's and its recovery's."""
        ...

    def run(self, job: Job) -> Outcome: ...
