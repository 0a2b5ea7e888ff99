"""The one pipeline every pruning job runs, whoever starts it (CLI, embedded service, Celery).

load -> validate -> analyze -> score -> select -> apply -> verify -> benchmark -> report.
The verify stage runs the pruned model against the masked original (the oracle) in a sandboxed
onnxruntime; a model that fails it is never written: a broken model is worse than none.
"""

from __future__ import annotations

import hashlib
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
from graphops.errors import GraphOpsError
from graphops.loading import load_model, validate_model
from graphops.masking import mask_removed_channels
from graphops.plan import PruningPlan
from graphops.prepare import prepare_model
from graphops.scoring import Scores, score_groups
from graphops.selection import select_by_flops, select_by_ratio
from graphops.shapes import resolve_input_shapes
from graphops.surgery import apply_plan
from workers.benchmark import benchmark, compare_outputs, make_inputs, run_model
from workers.options import PruneOptions
from workers.report import BeforeAfter, FrozenReport, GroupReport, PruneReport
from workers.sandbox import RunnerLimits

Progress = Callable[[str, float], None]

# Where each stage ends, as a fraction of the whole job (benchmarking dominates on big models).
STAGE_END = {
    "load": 0.05, "validate": 0.08, "analyze": 0.2, "score": 0.25, "select": 0.3,
    "apply": 0.45, "verify": 0.6, "benchmark": 0.95, "report": 1.0,
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def run_pipeline(
    model_path: Path,
    output_path: Path,
    options: PruneOptions,
    *,
    plan: PruningPlan | None = None,
    progress: Progress | None = None,
    limits: RunnerLimits = RunnerLimits(),
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
    with stages.stage("score"):
        scores = score_groups(dep, options.criterion, seed=options.seed) if plan is None else None
    with stages.stage("select"):
        if plan is None:
            plan = _select(dep, options, scores, cost_before)
        else:
            plan.check(dep)
    with stages.stage("apply"):
        pruned = apply_plan(dep, plan)
        cost_after = measure_cost(pruned, input_shapes)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnxprune-", dir=output_path.parent) as workdir:
        candidate = Path(workdir) / "pruned.onnx"
        with stages.stage("verify"):
            try:
                onnx.checker.check_model(pruned, full_check=True)
            except onnx.checker.ValidationError as exc:
                raise VerificationFailed(f"pruned model fails onnx.checker: {str(exc).splitlines()[0]}") from exc
            candidate.write_bytes(pruned.SerializeToString())
            _verify_against_oracle(dep, plan, candidate, Path(workdir), input_shapes, options.seed, limits)
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
        with stages.stage("report"):
            groups, frozen = _group_reports(dep, plan, cost_before)
            output_sha = file_sha256(candidate)
            os.replace(candidate, output_path)
    report = PruneReport(
        onnxprune_version=_version(),
        model_sha256=model_sha,
        output_sha256=output_sha,
        options=options.model_dump(),
        input_shapes=input_shapes,
        macs=BeforeAfter(before=cost_before.macs, after=cost_after.macs),
        params=BeforeAfter(before=cost_before.params, after=cost_after.params),
        latency_ms=latency,
        fidelity=fidelity,
        groups=groups,
        frozen=frozen,
        stage_seconds=stages.seconds,
    )
    return PipelineResult(report=report, plan=plan, dependency=dep)
