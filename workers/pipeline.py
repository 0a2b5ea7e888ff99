"""The one pipeline every pruning job runs, whoever starts it (CLI, embedded service, Celery).

load -> validate -> analyze -> score -> select -> apply -> verify -> benchmark -> report.
The verify stage runs the pruned model against the masked original (the oracle) in a sandboxed
onnxruntime; a model that fails it is never written: a broken model is worse than none.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import onnx

from graphops.cost import ModelCost, measure_cost
from graphops.dependency import DependencyGraph, analyze
from graphops.errors import GraphOpsError, ModelRejected
from graphops.loading import load_model, validate_model
from graphops.masking import mask_removed_channels
from graphops.plan import PruningPlan
from graphops.prepare import prepare_model
from graphops.scoring import Scores, score_groups
from graphops.selection import select_by_flops, select_by_ratio
from graphops.shapes import resolve_input_shapes
from graphops.surgery import apply_plan
from workers.fileio import file_sha256
from workers.benchmark import benchmark, compare_outputs, make_inputs, run_model
from workers.options import PruneOptions
from workers.report import BeforeAfter, FrozenReport, GroupReport, LayerReport, PruneReport, SensitivityReport
from workers.sandbox import RunnerLimits

Progress = Callable[[str, float], None]

# Where each stage ends, as a fraction of the whole job (benchmarking dominates on big models).
STAGE_END = {
    "load": 0.05, "validate": 0.08, "analyze": 0.2, "score": 0.25, "select": 0.3,
    "apply": 0.45, "verify": 0.6, "finetune": 0.8, "benchmark": 0.95, "report": 1.0,
}  # fmt: skip

# The oracle's tolerance at run time: float32 sums in a different order stay far below it.
ORACLE_RTOL = 1e-3


class VerificationFailed(GraphOpsError):
    """The pruned model does not match the masked original: an onnxprune bug, not the user's."""


@dataclass
class PipelineResult:
    report: PruneReport
    plan: PruningPlan
    dependency: DependencyGraph = field(repr=False)


def _version() -> str:
    try:
        return version("onnxprune")
    except PackageNotFoundError:
        return "0+unknown"


class _Stages:
    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress or (lambda stage, fraction: None)
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._progress(name, max([0.0] + [v for v in STAGE_END.values() if v < STAGE_END[name]]))
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 4)
        self._progress(name, STAGE_END[name])


def _select(dep: DependencyGraph, options: PruneOptions, scores: Scores, cost: ModelCost) -> PruningPlan:
    if options.flops_target is not None:
        node_macs = {node.name: node.macs for node in cost.nodes}
        return select_by_flops(
            dep, scores, options.flops_target, node_macs=node_macs, round_to=options.round_to, exclude=options.exclude
        )
    return select_by_ratio(dep, scores, options.ratio or 0.0, round_to=options.round_to, exclude=options.exclude)


def _verify_against_oracle(dep: DependencyGraph, plan: PruningPlan, pruned_path: Path, workdir: Path,
                           input_shapes: dict[str, list[int]], seed: int, limits: RunnerLimits) -> None:
    masked_path = workdir / "masked.onnx"
    masked_path.write_bytes(mask_removed_channels(dep, plan).SerializeToString())
    inputs = make_inputs(dep.model, input_shapes, seed)
    expected = run_model(masked_path, inputs, limits=limits)
    actual = run_model(pruned_path, inputs, limits=limits)
    for name, reference in expected.items():
        got = actual.get(name)
        scale = max(float(np.max(np.abs(reference))) if reference.size else 0.0, 1e-12)
        if got is None or got.shape != reference.shape:
            raise VerificationFailed(f"pruned model output '{name}' has shape {None if got is None else got.shape}, "
                                     f"expected {reference.shape}")
        error = float(np.max(np.abs(got.astype(np.float64) - reference))) / scale if reference.size else 0.0
        if not error <= ORACLE_RTOL:
            raise VerificationFailed(f"pruned model output '{name}' deviates from the oracle (relative error {error:.2e})")


def _group_reports(dep: DependencyGraph, plan: PruningPlan, cost: ModelCost) -> tuple[list[GroupReport], list[FrozenReport]]:
    node_macs = {node.name: node.macs for node in cost.nodes}
    total = max(cost.macs, 1)
    kept = plan.keep
    groups, frozen = [], []
    for group in dep.groups:
        if group.frozen:
            frozen.append(FrozenReport(id=group.id, nodes=list(group.nodes), channels=group.channels,
                                       reason=group.frozen_reason))
            continue
        groups.append(GroupReport(
            id=group.id,
            nodes=list(group.nodes),
            producers=list(group.producers),
            channels_before=group.channels,
            channels_after=len(kept.get(group.id, range(group.channels))),
            pinned=len(group.pinned),
            pinned_reasons=list(group.reasons),
            macs_share=round(sum(node_macs.get(n, 0) for n in group.nodes) / total, 6),
        ))
    return groups, frozen


HELD_OUT_SPLIT = "every fifth sample of the data file (indices 4, 9, 14, ...)"


def _select_auto(model_path: Path, model_sha: str, dep: DependencyGraph, scores: Scores, cost: ModelCost,
                 options: PruneOptions, dataset, sensitivity: SensitivityReport | None,
                 progress: Progress | None, limits: RunnerLimits):
    """Per-group ratios from sensitivity curves (``workers.sensitivity``); the sweep reports its
    progress inside the select stage."""
    from workers.sensitivity import auto_for_job

    low, high = STAGE_END["score"], STAGE_END["select"]

    def sweep_progress(done: int, total: int, _group: str) -> None:
        if progress is not None:
            progress("select", low + (high - low) * done / max(total, 1))

    return auto_for_job(model_path, model_sha, dep, scores, cost, criterion=options.criterion,
                        max_drop=options.max_drop or 0.01, data=dataset, sensitivity=sensitivity,
                        round_to=options.round_to, exclude=options.exclude, progress=sweep_progress, limits=limits)


def _search_learned(dep: DependencyGraph, options: PruneOptions, context, input_shapes: dict[str, list[int]],
                    limits: RunnerLimits, progress: Progress | None):
    """Criterion 'learned' (``roundtrip.learned``): per-layer agents choose what each layer keeps; every
    layer's surgery is checked by the oracle before its fine-tuning. Reports progress in the select stage."""
    from roundtrip.learned import SearchSettings, search

    low, high = STAGE_END["score"], STAGE_END["select"]
    settings = SearchSettings(max_drop=options.max_drop or 0.01, episodes=options.learned_episodes,
                              samples=options.learned_samples, finetune_steps=options.finetune_steps, lr=options.lr,
                              batch_size=options.batch_size, round_to=options.round_to, exclude=tuple(options.exclude),
                              seed=options.seed)
    with tempfile.TemporaryDirectory(prefix="onnxprune-learned-") as workdir:

        def verify(step_dep: DependencyGraph, step_plan: PruningPlan, step_model: onnx.ModelProto) -> None:
            path = Path(workdir) / "layer.onnx"
            _check_model(step_model)
            path.write_bytes(step_model.SerializeToString())
            _verify_against_oracle(step_dep, step_plan, path, Path(workdir), input_shapes, options.seed, limits)

        return search(dep, settings, context, verify=verify,
                      progress=None if progress is None else lambda label, f: progress(label, low + (high - low) * f))


def _learned_report(learned, options: PruneOptions):
    if learned is None:
        return None
    from workers.report import LearnedLayerReport, LearnedReport

    return LearnedReport(metric=learned.metric, max_drop=learned.max_drop, baseline=learned.baseline,
                         reward_samples=learned.reward_samples, episodes=options.learned_episodes,
                         samples=options.learned_samples,
                         layers=[LearnedLayerReport(**layer.__dict__) for layer in learned.layers])


def _auto_notes(auto, options: PruneOptions) -> list[str]:
    """What ratio 'auto' had to give up, in words for the report."""
    if auto is None:
        return []
    if auto.held_out_after is None:
        return ["ratio auto: the combined drop was not checked on held-out data (no data given)"]
    if not auto.plan.groups:
        return [f"ratio auto: no plan kept the held-out drop within {options.max_drop}; nothing was pruned"]
    if auto.budget < (options.max_drop or 0.0):
        return [f"ratio auto: per-group budget lowered from {options.max_drop} to {auto.budget:.4g} so that the "
                f"groups pruned together stay within {options.max_drop} on held-out data"]
    return []


def resolve_round_to(options: PruneOptions, model_sha: str, input_shapes) -> tuple[PruneOptions, str]:
    """Options with ``round_to`` a number, and where it came from: 'auto' takes the staircase step of
    a latency table measured before for this model and settings, else the CPU's vector width."""
    if options.round_to != "auto":
        return options, "given"
    from workers.latency import LatencySettings, cached_table, vector_width

    table = cached_table(model_sha, input_shapes, LatencySettings(threads=options.threads,
                                                                  budget_s=options.latency_budget_s))
    step, source = (table.step, f"auto: latency table ({table.step_source})") if table is not None else vector_width()
    if table is None:
        source = f"auto: {source}"
    return options.model_copy(update={"round_to": step}), source


def _target_notes(choice, latency) -> list[str]:
    """The latency target in words when it was missed: by how much, measured how."""
    if choice is None:
        return []
    report = choice.report
    final = latency.change if latency is not None and latency.change is not None else report.measured
    if final.ratio <= report.target:
        return []
    return [f"latency target {report.target:g} missed: measured {final.ratio:.3f}x the original's p50 "
            f"({final.band}), {final.ratio - report.target:.3f} above the target after "
            f"{len(report.iterations)} pass(es); the latency model predicted {report.predicted:.3f}"]


def _speed_notes(latency) -> list[str]:
    """A warning when the pruned model runs slower, or when the timing noise is wider than the change."""
    from workers.speed import noise_warning

    if latency is None or latency.change is None:
        return []
    change = latency.change
    if change.low > 1.0:  # slower beyond the noise: say so plainly
        return [f"the pruned model is slower than the original: {change.summary} ({change.band}); channel counts off "
                "the kernels' step can cost more than the MACs saved (try --round-to auto or a multiple of 8)"]
    warning = noise_warning(change)
    return [] if warning is None else [warning]


def _filters(model: onnx.ModelProto) -> dict[str, int]:
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    counts = {}
    for node in model.graph.node:
        dims = weights.get(node.input[1]) if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 else None
        if dims:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            counts[node.name] = dims[0] if node.op_type == "Conv" else dims[1] * group
    return counts


def _layer_reports(before: onnx.ModelProto, after: onnx.ModelProto, cost_before: ModelCost,
                   cost_after: ModelCost) -> list[LayerReport]:
    """MACs and filters of every node that has MACs; surgery keeps node names, so they pair up."""
    macs_after = {node.name: node.macs for node in cost_after.nodes}
    filters_before, filters_after = _filters(before), _filters(after)
    return [LayerReport(name=node.name, op_type=node.op_type, macs_before=node.macs,
                        macs_after=macs_after.get(node.name, 0), filters_before=filters_before.get(node.name),
                        filters_after=filters_after.get(node.name))
            for node in cost_before.nodes if node.macs]


def _merged(stage_seconds: dict[str, float], more: dict[str, float]) -> dict[str, float]:
    """Stage times plus those of later iterative steps and fine-tuning (``finetune`` covers them all)."""
    merged = dict(stage_seconds)
    for name, seconds in more.items():
        merged[f"recovery.{name}"] = seconds
    return merged


def _data_driven(options: PruneOptions) -> bool:
    """Jobs that score with data or fine-tune run through the PyTorch round trip (``roundtrip``)."""
    from graphops.scoring import criterion_needs_data

    return options.finetune_steps > 0 or options.iterative_steps > 1 or criterion_needs_data(options.criterion)


def _data_context(data: Path | None, model: onnx.ModelProto, input_shapes, options: PruneOptions):
    if data is None:
        wants = (f"criterion '{options.criterion}'" if options.finetune_steps == 0 and options.iterative_steps == 1
                 else "fine-tuning")
        raise ModelRejected(f"{wants} needs data: pass --data DATA.npz (one array per model input, optional labels)")
    from roundtrip.context import build_context

    return build_context(data, model, input_shapes, batch_size=options.batch_size, score_batches=options.score_batches)


def _first_step(options: PruneOptions) -> PruneOptions:
    """Iterative jobs select the first of ``iterative_steps`` equal steps here; the rest in ``roundtrip``."""
    if options.iterative_steps == 1:
        return options
    if options.flops_target is not None:
        return options.model_copy(update={"flops_target": options.flops_target / options.iterative_steps})
    return options.model_copy(update={"ratio": (options.ratio or 0.0) / options.iterative_steps})


def _recover(dep: DependencyGraph, plan: PruningPlan, pruned: onnx.ModelProto, options: PruneOptions, context,
             workdir: Path, input_shapes: dict[str, list[int]], limits: RunnerLimits, progress: Progress | None):
    """Fine-tune (and run any further iterative steps), each step's surgery checked by the oracle."""
    from roundtrip.schedule import Settings, recover

    def verify(step_dep: DependencyGraph, step_plan: PruningPlan, step_model: onnx.ModelProto) -> None:
        path = workdir / "step.onnx"
        _check_model(step_model)
        path.write_bytes(step_model.SerializeToString())
        _verify_against_oracle(step_dep, step_plan, path, workdir, input_shapes, options.seed, limits)

    low, high = STAGE_END["verify"], STAGE_END["finetune"]
    settings = Settings(criterion=options.criterion, ratio=None if options.ratio == "auto" else options.ratio,
                        flops_target=options.flops_target, round_to=options.round_to, exclude=tuple(options.exclude),
                        seed=options.seed, iterative_steps=options.iterative_steps,
                        finetune_steps=options.finetune_steps, lr=options.lr, batch_size=options.batch_size,
                        flops_regularization=options.flops_regularization)
    return recover(dep, plan, pruned, settings, context, verify=verify,
                   progress=None if progress is None else lambda label, f: progress(label, low + (high - low) * f))


def _check_model(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise VerificationFailed(f"pruned model fails onnx.checker: {str(exc).splitlines()[0]}") from exc


def _verify_write_back(path: Path, inputs: dict[str, np.ndarray], expected: dict[str, np.ndarray],
                       limits: RunnerLimits) -> None:
    """The fine-tuned ONNX model computes, in onnxruntime, what the PyTorch executor computed."""
    actual = run_model(path, inputs, limits=limits)
    for name, reference in expected.items():
        got = actual.get(name)
        if got is None or got.shape != reference.shape:
            raise VerificationFailed(f"fine-tuned model output '{name}' has shape "
                                     f"{None if got is None else got.shape}, the executor gave {reference.shape}")
        scale = max(float(np.max(np.abs(reference))) if reference.size else 0.0, 1e-12)
        error = float(np.max(np.abs(got.astype(np.float64) - reference))) / scale if reference.size else 0.0
        if not error <= ORACLE_RTOL:
            raise VerificationFailed(f"fine-tuned model output '{name}' differs from the PyTorch executor "
                                     f"(relative error {error:.2e}): the write-back is wrong")


def _finetune_report(options: PruneOptions, context, recovery):
    from workers.report import EvaluationPoint, FinetuneReport, IterationReport

    def point(metrics):
        return None if metrics is None else EvaluationPoint(**metrics.__dict__)

    return FinetuneReport(
        schedule="layer-by-layer (learned)" if options.criterion == "learned"
        else "iterative" if options.iterative_steps > 1 else "one-shot", objective=context.objective.kind,
        steps=options.finetune_steps, iterative_steps=options.iterative_steps, lr=options.lr,
        batch_size=options.batch_size, samples=context.samples, losses=[round(v, 6) for v in recovery.losses],
        iterations=[IterationReport(iteration=r.iteration, macs=r.macs, removed_channels=r.removed_channels,
                                    after_pruning=point(r.after_pruning), after_finetune=point(r.after_finetune),
                                    final_loss=r.final_loss) for r in recovery.iterations],
    )


def run_pipeline(
    model_path: Path,
    output_path: Path,
    options: PruneOptions,
    *,
    plan: PruningPlan | None = None,
    progress: Progress | None = None,
    limits: RunnerLimits = RunnerLimits(),
    data: Path | None = None,
    sensitivity: SensitivityReport | None = None,
) -> PipelineResult:
    """Prune ``model_path`` into ``output_path`` (written atomically) and report what changed.

    Raises :class:`graphops.errors.ModelRejected` for models we cannot or may not prune (a user
    error) and other exceptions for failures of our own or of the machine.
    """
    model_path, output_path = Path(model_path), Path(output_path)
    stages = _Stages(progress)
    with stages.stage("load"):
        model = load_model(model_path)
        model_sha = file_sha256(model_path)
    with stages.stage("validate"):
        validate_model(model)
        input_shapes = resolve_input_shapes(model, options.input_shapes)
    with stages.stage("analyze"):
        prepared = prepare_model(model)
        dep = analyze(prepared, input_shapes)
        cost_before = measure_cost(prepared, input_shapes)
    given, (options, round_note) = options, resolve_round_to(options, model_sha, input_shapes)
    latency_choice = None
    context = None
    with stages.stage("score"):
        if _data_driven(options):
            if plan is not None and options.iterative_steps > 1:
                raise ModelRejected("a saved plan is applied in one step; drop --iterative-steps or --plan-in")
            context = _data_context(data, model, input_shapes, options)
        extra = {} if context is None else {"data": context, "flops_regularization": options.flops_regularization}
        searches = options.criterion == "learned"  # chooses counts itself: no ranking to score
        scores = score_groups(dep, options.criterion, seed=options.seed, **extra) if plan is None and not searches else None
    dataset = held_out = auto = learned = None
    with stages.stage("select"):
        if context is not None:  # already loaded and split for the criteria
            dataset, held_out = context.dataset, context.holdout
        elif data is not None:
            from roundtrip.data import load_dataset, split_holdout  # numpy only, no torch

            dataset = load_dataset(data, model, input_shapes)
            held_out = split_holdout(dataset)[1]
        if plan is None and options.ratio == "auto":
            auto, sensitivity = _select_auto(model_path, model_sha, dep, scores, cost_before, options, dataset,
                                             sensitivity, progress, limits)
            plan = auto.plan
        elif plan is None and options.latency_target is not None:
            from workers.latency_target import select_for_latency

            latency_choice = select_for_latency(model_path, model_sha, dep, scores, cost_before, given, limits=limits)
            plan = latency_choice.plan
            options = options.model_copy(update={"round_to": latency_choice.step})
            round_note = "the latency table" if given.round_to == "auto" else round_note
        elif plan is None and searches:
            learned = _search_learned(dep, options, context, input_shapes, limits, progress)
            plan = learned.recovery.plan
        elif plan is None:
            plan = _select(dep, _first_step(options), scores, cost_before)
        else:
            plan.check(dep)
    with stages.stage("apply"):
        pruned = apply_plan(dep, plan)
        cost_after = measure_cost(pruned, input_shapes)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnxprune-", dir=output_path.parent) as workdir:
        candidate = Path(workdir) / "pruned.onnx"
        with stages.stage("verify"):
            _check_model(pruned)
            candidate.write_bytes(pruned.SerializeToString())
            _verify_against_oracle(dep, plan, candidate, Path(workdir), input_shapes, options.seed, limits)
        recovery = None
        with stages.stage("finetune"):
            if learned is not None or (context is not None and (options.finetune_steps > 0 or options.iterative_steps > 1)):
                # The oracle checked the surgery above; recover, then check the write-back.
                recovery = learned.recovery if learned is not None else _recover(
                    dep, plan, pruned, options, context, Path(workdir), input_shapes, limits, progress)
                plan, pruned = recovery.plan, recovery.model
                cost_after = measure_cost(pruned, input_shapes)
                _check_model(pruned)
                candidate.write_bytes(pruned.SerializeToString())
                _verify_write_back(candidate, recovery.check_inputs, recovery.check_outputs, limits)
        with stages.stage("benchmark"):
            latency = fidelity = None
            if options.benchmark:
                result = benchmark(model_path, candidate, input_shapes, runs=options.benchmark_runs,
                                   threads=options.threads, seed=options.seed, limits=limits)
                latency, fidelity = result.latency, result.fidelity
            else:
                inputs = make_inputs(model, input_shapes, options.seed)
                fidelity = compare_outputs(run_model(model_path, inputs, limits=limits),
                                           run_model(candidate, inputs, limits=limits))
            evaluation = None
            if held_out is not None:
                from workers.evaluation import held_out_evaluation

                evaluation = held_out_evaluation(model_path, candidate, held_out, split=HELD_OUT_SPLIT, limits=limits)
                if recovery is not None:
                    pruned_only = Path(workdir) / "pruned_only.onnx"
                    pruned_only.write_bytes(recovery.pruned_only.SerializeToString())
                    after_pruning = held_out_evaluation(model_path, pruned_only, held_out, split=HELD_OUT_SPLIT,
                                                        limits=limits).after
                    evaluation = evaluation.model_copy(update={
                        "after_pruning": after_pruning, "finetune": _finetune_report(options, context, recovery)})
        with stages.stage("report"):
            groups, frozen = _group_reports(dep, plan, cost_before)
            output_sha = file_sha256(candidate)
            os.replace(candidate, output_path)
    report = PruneReport(
        onnxprune_version=_version(),
        model_sha256=model_sha,
        output_sha256=output_sha,
        options=given.model_dump(),
        input_shapes=input_shapes,
        macs=BeforeAfter(before=cost_before.macs, after=cost_after.macs),
        params=BeforeAfter(before=cost_before.params, after=cost_after.params),
        latency_ms=latency,
        fidelity=fidelity,
        groups=groups,
        frozen=frozen,
        stage_seconds=_merged(stages.seconds, recovery.seconds if recovery is not None else {}),
        layers=_layer_reports(prepared, pruned, cost_before, cost_after),
        evaluation=evaluation,
        sensitivity=sensitivity,
        group_ratios=auto.ratios if auto is not None else {},
        warnings=_auto_notes(auto, options) + _speed_notes(latency) + _target_notes(latency_choice, latency),
        learned=_learned_report(learned, options),
        round_to=int(options.round_to),
        round_to_source=round_note,
        latency_target=latency_choice.report if latency_choice is not None else None,
    )
    return PipelineResult(report=report, plan=plan, dependency=dep)
