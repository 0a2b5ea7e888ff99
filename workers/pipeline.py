"""The one pipeline every pruning job runs, whoever starts it (CLI, embedded service, Celery).

analyse -> schedule (select, apply, verify, recover: ``workers.strategies``) -> measure -> report.
Every surgery is checked against the oracle in a sandboxed onnxruntime before anything else sees
it, and the result is written only at the end, atomically: a broken model is worse than none.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.kernel_steps import kernel_steps_note, with_kernel_steps
from onnxprune.graphops.kinds import check_kinds_present, check_macs_reachable, limit_groups
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.selection import check_exclude_patterns
from onnxprune.graphops.surgery import declare_shapes_like
from onnxprune.roundtrip.data import SPLIT_RULES
from onnxprune.roundtrip.detector_outputs import yolo_shaped_output
from onnxprune.workers.analysis import Analysis, analyse_model, output_shapes
from onnxprune.workers.benchmark import benchmark, compare_outputs, run_models
from onnxprune.workers.capabilities import require_capabilities
from onnxprune.workers.cleanup import cleanup_changed
from onnxprune.workers.default_criterion import resolve_default_criterion
from onnxprune.workers.fileio import file_sha256, float_output_path
from onnxprune.workers.latency import resolve_round_to, runs_int8
from onnxprune.workers.options import MacsTarget, PruneOptions
from onnxprune.workers.precision import check_precision
from onnxprune.workers.report import Fidelity, HeldOutEvaluation, Latency, PruneReport, SensitivityReport
from onnxprune.workers.reporting import build_report
from onnxprune.workers.sandbox import RunnerLimits
from onnxprune.workers.stages import STAGE_END, Progress, Stages
from onnxprune.workers.strategies import Job, Outcome, choose_schedule
from onnxprune.workers.strategies.finish import choose_finish
from onnxprune.workers.verification import ORACLE_RTOL, VerificationFailed, write_model

__all__ = ["ORACLE_RTOL", "STAGE_END", "PipelineResult", "VerificationFailed", "float_output_path", "run_pipeline"]

HELD_OUT_SPLIT = SPLIT_RULES["held_out"]  # the one split: roundtrip.data.split_data


@dataclass
class PipelineResult:
    report: PruneReport
    plan: PruningPlan
    dependency: DependencyGraph = field(repr=False)
    float_output: Path | None = None  # with --quantize: the float pruned model, beside the quantized one


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
    started: float | None = None,
) -> PipelineResult:
    """Prune ``model_path`` into ``output_path`` (written atomically) and report what changed.
    ``started`` (``time.monotonic()``): when ``--time-budget`` began (None: now); the job process passes
    when it was asked for, so that starting it, its imports and the analysis count too.

    Raises :class:`graphops.errors.ModelRejected` for models we cannot or may not prune (a user
    error) and other exceptions for failures of our own or of the machine.
    """
    output_path = Path(output_path)
    require_capabilities(options, has_data=data is not None, plan_given=plan is not None)
    stages = Stages(progress)
    analysis = analyse_model(Path(model_path), options.input_shapes, stage=stages.stage, data_file=data)
    check_exclude_patterns(options.exclude, (node.name for node in analysis.prepared.graph.node))
    yolo_shaped_output(output_shapes(analysis), options.detector)  # a wrong --detector yolo fails here
    check_precision(analysis.original, options, has_data=data is not None, plan_given=plan is not None)
    analysis = with_kind_limits(analysis, options, plan_given=plan is not None)
    options, analysis, criterion_notes = resolve_default_criterion(analysis, options)
    schedule = choose_schedule(options, plan, has_data=data is not None)
    int8 = runs_int8(analysis.original, options.quantize)
    resolved, round_to_source = resolve_round_to(options, analysis.sha256, analysis.input_shapes, int8=int8)
    if options.round_to == "auto":  # MLP widths and heads on their kernel's step, convs on the job's
        analysis = replace(analysis, dep=with_kernel_steps(analysis.dep))
        round_to_source += kernel_steps_note(analysis.dep)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnxprune-", dir=output_path.parent) as workdir:
        job = Job(
            analysis,
            resolved,
            stages,
            Path(workdir),
            limits,
            data_path=data,
            sensitivity=sensitivity,
            round_to_source=round_to_source,
            criterion_notes=criterion_notes,
        )
        if started is not None:
            job.started = min(job.started, started)
        outcome = schedule.run(job)
        finish = choose_finish(options)
        # The original's form: intermediate shapes declared only where it declared them (graphops.surgery).
        artifacts = finish.finish(job, declare_shapes_like(outcome.model, analysis.original))
        with stages.stage("benchmark"):
            latency, fidelity = _speed_and_fidelity(job, artifacts.result)
            evaluation = _held_out(job, outcome, artifacts.result)
            artifacts = finish.measure(job, artifacts, evaluate_float=evaluation is not None)
        with stages.stage("report"):
            report = build_report(
                job,
                outcome,
                artifacts,
                output_sha256=artifacts.sha256 or file_sha256(artifacts.result),
                latency=latency,
                fidelity=fidelity,
                evaluation=evaluation,
            )
            float_output = None
            if artifacts.float_result is not None:
                float_output = float_output_path(output_path)
                os.replace(artifacts.float_result, float_output)
            os.replace(artifacts.result, output_path)
    return PipelineResult(report=report, plan=outcome.plan, dependency=analysis.dep, float_output=float_output)


def with_kind_limits(analysis: Analysis, options: PruneOptions, *, plan_given: bool = False) -> Analysis:
    """The analysis whose groups carry the options' per-kind limits (``graphops.kinds``), refused
    where they name what the model lacks or put a MACs target out of reach."""
    limits = options.kind_limits
    if not limits.limits_anything:
        return analysis
    check_kinds_present(analysis.dep, limits)
    dep = limit_groups(analysis.dep, limits)
    target = options.target
    if isinstance(target, MacsTarget) and not plan_given:
        check_macs_reachable(dep, limits, analysis.node_macs, target.fraction)
    return replace(analysis, dep=dep)


def _speed_and_fidelity(job: Job, candidate: Path) -> tuple[Latency | None, Fidelity]:
    """Latency of both models (interleaved) when asked for; output fidelity always.

    Without the benchmark, fidelity compares outputs the checks already have: the original's from
    the first oracle run, the candidate's from the last when the candidate is the model it passed.
    Only what is missing runs (the original for a learned search, the result after recovery or
    quantization), in one sandboxed call on the same inputs."""
    options, original = job.options, job.analysis.path
    if options.benchmark:
        cleaned = None
        if cleanup_changed(job.analysis.original, job.analysis.prepared):  # time the cleanup's own part too
            cleaned = job.workdir / "cleaned.onnx"
            write_model(job.analysis.prepared, cleaned)
        result = benchmark(
            original,
            candidate,
            job.analysis.input_shapes,
            runs=options.benchmark_runs,
            threads=options.threads,
            seed=options.seed,
            limits=job.limits,
            cleaned=cleaned,
            progress=lambda done: job.stages.within("benchmark", done / options.benchmark_runs),
        )
        return result.latency, result.fidelity  # type: ignore[return-value]  # two models: fidelity is set
    verified = job.verified
    reference = job.reference_outputs
    outputs = verified.outputs if verified is not None and verified.path == candidate else None
    if reference is None or outputs is None:
        missing = [path for path, known in ((original, reference), (candidate, outputs)) if known is None]
        ran = run_models(missing, job.check_inputs, limits=job.limits)
        reference = reference if reference is not None else ran.pop(0)
        outputs = outputs if outputs is not None else ran.pop(0)
    return None, compare_outputs(reference, outputs)


def _held_out(job: Job, outcome: Outcome, candidate: Path) -> HeldOutEvaluation | None:
    """Accuracy (labels) or fidelity on samples no strategy trained or selected on: before, after
    pruning alone (when recovery changed the weights) and after recovery."""
    held_out = job.held_out
    if held_out is None:
        return None
    from onnxprune.workers.evaluation import held_out_evaluation

    original, evaluator = job.analysis.path, job.held_out_evaluator
    evaluation = held_out_evaluation(
        original,
        candidate,
        held_out,
        split=HELD_OUT_SPLIT,
        limits=job.limits,
        detector=job.options.detector,
        detection_confidence=job.options.detection_confidence,
        evaluator=evaluator,
    )
    if outcome.pruned_only is None:
        return evaluation
    pruned_only = job.workdir / "pruned_only.onnx"
    pruned_only.write_bytes(outcome.pruned_only.SerializeToString())
    after_pruning = held_out_evaluation(
        original,
        pruned_only,
        held_out,
        split=HELD_OUT_SPLIT,
        limits=job.limits,
        detector=job.options.detector if evaluation.detections is not None else "none",
        detection_confidence=job.options.detection_confidence,
        evaluator=evaluator,
    )
    update: dict[str, object] = {"after_pruning": after_pruning.after}
    if evaluation.detections is not None and after_pruning.detections is not None:
        update["detections"] = evaluation.detections.model_copy(
            update={"after_pruning_map50": after_pruning.detections.map50}
        )
    return evaluation.model_copy(update=update)
