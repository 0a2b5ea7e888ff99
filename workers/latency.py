"""Measuring the latency model of a user's model in onnxruntime (``graphops.latency_table``).

Each channel group is pruned alone to a few counts on its step grid (``selection.group_step``: the
kernel's channel step in the group's units, so attention heads are timed by head count), and the whole model is
timed against the original, interleaved, in ONE sandboxed child (surgery and sessions both happen
there; the parent never runs the user's graph). Groups are measured in order of MACs, most first,
until a time budget is spent; the rest get curves estimated from their MACs at the rate measured
on the others. A few off-step counts of the largest groups find the staircase step. Tables are
cached on disk per (model hash, onnxruntime version, deploy settings, CPU model); a job's sandbox
only reads that cache (its new tables are published by its parent, ``workers.latency_cache``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.graphops.cost import ModelCost
from onnxprune.graphops.dependency import ChannelGroup, DependencyGraph
from onnxprune.graphops.dequantized import first_quantization_node
from onnxprune.graphops.latency_table import (
    LatencyCurve,
    LatencyTable,
    grid_counts,
    monotone,
    probe_slowdowns,
    staircase_step,
)
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.selection import MacsModel, Scores, _candidates, choose_kept, group_step
from onnxprune.workers.fileio import atomic_write_text
from onnxprune.workers.latency_cache import OUTBOX_ENV, LatencyCache, default_root
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.sandbox import RunnerLimits, run_in_child
from onnxprune.workers.speed import ratio_interval

# Latency of a variant: this percentile of its runs. 0, the fastest run: a CPU-bound inference never
# runs faster than its undisturbed time, while a busy neighbour's preemptions turn some runs of a 2 ms
# model into 30 ms ones (measured at load 15 on 2 cores), so the minimum is the robust estimate.
QUANTILE = 0.0
ESTIMATOR = (
    "fastest-run, rates within [1/4, 3] of the median shrunk to the prior (3 groups' weight), "
    "exact MACs per count above the pinned floor, counts in units (heads by head count)"
)
PRIOR_WEIGHT = 3.0  # part of the cache key: change it with the fit

Variant = tuple[str, int, dict[str, list[int]]]  # group, channel count, kept channels
Pair = tuple[list[float], list[float]]  # interleaved runs: (the original, the other model)
Measured = tuple[list[float], list[Pair]]  # baseline runs, (before, after) per variant

__all__ = [
    "LatencySettings",
    "cached_table",
    "cpu_model",
    "measure_latency_table",
    "channel_step",
    "resolve_round_to",
    "runs_int8",
    "vector_width",
]


@dataclass(frozen=True)
class LatencySettings:
    """The deploy settings latency is measured under, and how much measuring may cost."""

    threads: int = 1
    optimization: str = "all"  # onnxruntime graph optimisation level (workers.ort_sessions.OPTIMIZATION_LEVELS)
    runs: int = 9  # interleaved pairs (original, variant) per variant
    warmup: int = 2
    budget_s: float = 60.0  # wall time for all measurements; unmeasured groups are estimated from MACs
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    probe_groups: int = 2  # largest groups whose off-step counts find the staircase step
    # "int8" or "dynamic" (--quantize): every model is timed as it is deployed, quantized
    # (``workers.quantize.quantized_bytes``), and the float original once more as the reference.
    quantize: str = "none"

    @classmethod
    def of(cls, options: PruneOptions) -> LatencySettings:
        """The settings a job's latency is measured under (what its latency target applies to)."""
        return cls(threads=options.threads, budget_s=options.latency_budget_s, quantize=options.quantize)


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def vector_width() -> tuple[int, str]:
    """fp32 lanes of the widest vector unit onnxruntime's conv kernels use here, and why.

    MLAS blocks NCHWc convolutions by 16 channels with AVX-512 and by 8 with AVX2; channel counts
    off those multiples lose the blocked kernel (measured: ResNet-20 at -50% MACs runs 1.83x
    faster rounded to 16, 1.2x slower unrounded, on an AVX-512 Xeon). Elsewhere (ARM NEON, 128-bit)
    4 lanes."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if "avx512f" in flags:
        return 16, "CPU vector width: AVX-512, 16 fp32 lanes"
    if "avx2" in flags or "avx" in flags:
        return 8, "CPU vector width: AVX2, 8 fp32 lanes"
    return 4, "CPU vector width: 128-bit (SSE or NEON), 4 fp32 lanes"


# MLAS's int8 GEMM (QLinearConv, which onnxruntime fuses QDQ convs into) packs its weights in panels of
# 16 output columns on x86 and computes whole panels: on an AVX2 EPYC, one 3x3 conv at 40x40 with 64
# input channels took 0.17, 0.33, 0.33, 0.48, 0.48, 0.63, 0.63 ms for 16, 24, 32, 40, 48, 56, 64 output
# channels (8: 0.23 ms), where the float conv grew in steps of 8 (benchmarks/results/qdq_detector.md).
# Input channels cost in proportion in both precisions on multiples of 4 (22 and 46 ran slower than 24
# and 48), which a step of 16 keeps (and its quarter steps, ``graphops.selection.grid_counts``).
INT8_COLUMN_STEP = 16


def channel_step(int8: bool) -> tuple[int, str]:
    """The conv kernels' channel step here when no latency table says otherwise, and why: the CPU's
    vector width for float convs, MLAS's int8 column panel (on x86) for a model that runs int8."""
    width, why = vector_width()
    if int8 and width >= 8:  # x86 (AVX2 or AVX-512); int8 steps on ARM are not measured
        return max(width, INT8_COLUMN_STEP), (
            f"int8 convs: MLAS's quantized GEMM computes output channels in panels of {INT8_COLUMN_STEP}"
        )
    return width, why


def runs_int8(model: onnx.ModelProto, quantize: str) -> bool:
    """Whether a job's result runs on int8 kernels: the model is already QDQ, or ``--quantize int8``
    quantizes it (their channel step differs from the float kernels': :func:`channel_step`)."""
    return quantize == "int8" or first_quantization_node(model) is not None


def table_start_step(dep: DependencyGraph, settings: LatencySettings) -> tuple[int, str]:
    """The grid a latency table times counts on before its probes find the staircase: the int8 kernels'
    for a QDQ model or one timed as ``--quantize int8`` deploys it."""
    return channel_step(runs_int8(dep.model, settings.quantize))


def resolve_round_to(
    options: PruneOptions, model_sha: str, input_shapes: dict[str, list[int]], *, int8: bool = False
) -> tuple[PruneOptions, str]:
    """Options with ``round_to`` a number, and where it came from: 'auto' takes the staircase step of
    a latency table measured before for this model and settings, else the conv kernels' step
    (:func:`channel_step`), which for a model that runs int8 (``int8``: already QDQ, or
    ``--quantize int8``) is the int8 kernels'."""
    if options.round_to != "auto":
        return options, "given"
    table = cached_table(model_sha, input_shapes, LatencySettings.of(options))
    if table is not None:
        step, source = table.step, f"auto: latency table ({table.step_source})"
    else:
        step, why = channel_step(int8)
        source = f"auto: {why}"
    return options.model_copy(update={"round_to": step}), source


def _cache_dir() -> Path:
    return LatencyCache(default_root()).tables


def _new_tables_dir() -> Path:
    """Where a newly measured table goes: in a job's sandbox, its outbox (the parent validates and
    publishes it, ``workers.latency_cache``); elsewhere (the library called directly), the cache."""
    outbox = os.environ.get(OUTBOX_ENV)
    return Path(outbox) if outbox else _cache_dir()


def table_key(model_sha: str, input_shapes: dict[str, list[int]], settings: LatencySettings) -> str:
    import onnxruntime

    what = {
        "model": model_sha,
        "onnxruntime": onnxruntime.__version__,
        "cpu": cpu_model(),
        "input_shapes": input_shapes,
        "threads": settings.threads,
        "optimization": settings.optimization,
        "fractions": settings.fractions,
        "runs": settings.runs,
        "onnxprune": version_or_unknown(),
        "estimator": ESTIMATOR,
        # only when set, so that the keys of float tables measured before stay valid
        **({"quantize": settings.quantize} if settings.quantize != "none" else {}),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def version_or_unknown() -> str:
    try:
        return version("onnxprune")
    except Exception:  # not installed (a source checkout)
        return "0+unknown"


def cached_table_path(model_sha: str, input_shapes: dict[str, list[int]], settings: LatencySettings) -> Path:
    """Where the table for this model and these settings is cached on this machine."""
    return _cache_dir() / f"{table_key(model_sha, input_shapes, settings)}.json"


def cached_table(model_sha: str, input_shapes: dict[str, list[int]], settings: LatencySettings) -> LatencyTable | None:
    """The table measured before for this model and these settings on this machine, if any."""
    name = f"{table_key(model_sha, input_shapes, settings)}.json"
    for folder in dict.fromkeys((_new_tables_dir(), _cache_dir())):  # this job's own first
        try:
            return LatencyTable.from_json((folder / name).read_text())
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def measure_latency_table(
    dep: DependencyGraph,
    scores: Scores,
    cost: ModelCost,
    model_sha: str,
    settings: LatencySettings = LatencySettings(),
    *,
    exclude: tuple[str, ...] = (),
    limits: RunnerLimits = RunnerLimits(),
    use_cache: bool = True,
    seed: int = 0,
) -> LatencyTable:
    """The latency model of ``dep.model`` under ``settings`` (from the cache when measured before)."""
    input_shapes = dict(dep.input_shapes or {})
    step0, source0 = table_start_step(dep, settings)
    groups = _by_macs(dep, scores, cost, exclude)
    table = cached_table(model_sha, input_shapes, settings) if use_cache else None
    if table is not None and not missing_curves(table, dep, groups, step0, settings.fractions):
        return table
    if table is not None:  # measured again under the same key: keep what the cached table covered
        groups = _with_cached_groups(groups, table, dep, scores, cost)
    started = time.perf_counter()
    variants, probes = plan_variants(dep, scores, groups, settings, step0)
    from onnxprune.workers.benchmark import make_inputs

    inputs = make_inputs(dep.model, input_shapes, seed)
    child_limits = RunnerLimits(
        memory_mib=limits.memory_mib, timeout_s=settings.budget_s + 120.0, max_result_mib=limits.max_result_mib
    )
    measured, reference = run_in_child(_measure_variants, (dep, variants, inputs, settings), limits=child_limits)
    table = _table(dep, groups, cost, variants, measured, probes, settings, step0, source0, model_sha, reference)
    table = replace(table, seconds=round(time.perf_counter() - started, 2))
    if use_cache:
        path = _new_tables_dir() / f"{table.key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, table.to_json())
    return table


def missing_curves(
    table: LatencyTable, dep: DependencyGraph, groups: list[int], step: int, fractions: tuple[float, ...]
) -> list[str]:
    """Groups this job may cut that ``table`` has no curve for although they have counts to time: a
    table measured for a job that left them whole (``--prune-kinds neuron``, ``--exclude``) would
    otherwise price them at no saving, and they would silently stay whole."""
    return [
        dep.groups[i].id
        for i in groups
        if dep.groups[i].id not in table.curves
        and grid_counts(dep.groups[i].channels, group_step(dep.groups[i], step), fractions, len(dep.groups[i].pinned))
    ]


def uncovered_groups(
    table: LatencyTable,
    dep: DependencyGraph,
    scores: Scores,
    cost: ModelCost,
    settings: LatencySettings,
    exclude: tuple[str, ...] = (),
) -> list[str]:
    """Groups a cut with ``exclude`` (and ``dep``'s kind limits) may take that ``table`` has no curve for
    (:func:`missing_curves`). The cache key names neither the kind limits nor ``--exclude``: a table cached
    by a job that left groups whole prices them at no saving, and a cut compared on it is mispredicted."""
    return missing_curves(
        table, dep, _by_macs(dep, scores, cost, exclude), table_start_step(dep, settings)[0], settings.fractions
    )


def plan_variants(
    dep: DependencyGraph, scores: Scores, groups: list[int], settings: LatencySettings, step: int
) -> tuple[list[Variant], list[tuple[str, int, int]]]:
    """What to time, in order: each group (largest first) at its grid counts, and for the first
    ``probe_groups`` groups wide enough, a middle multiple ``m`` minus 1 and minus half a step.
    Probes are (group, m, offset): measured at ``m - offset``."""
    variants: list[Variant] = []
    probes: list[tuple[str, int, int]] = []
    for index in groups:
        group = dep.groups[index]
        counts = grid_counts(group.channels, group_step(group, step), settings.fractions, len(group.pinned))
        for count in counts:
            variants.append((group.id, count, _keep(dep, index, scores, count, step)))
        middle = [c for c in counts if c >= 2 * step and c - step // 2 >= len(group.pinned)]  # probes above the floor
        # the staircase is the conv kernels' step in channels: probed only on groups counted on it
        on_step = group_step(group, step) == step
        if len({g for g, _, _ in probes}) < settings.probe_groups and middle and on_step:
            m = middle[len(middle) // 2]
            for offset in sorted({1, step // 2} - {0}):
                variants.append((group.id, m - offset, _keep(dep, index, scores, m - offset, step)))
                probes.append((group.id, m, offset))
    return variants, probes


def table_from_timings(
    dep: DependencyGraph,
    scores: Scores,
    cost: ModelCost,
    measured: Measured,
    settings: LatencySettings,
    step: int,
    *,
    model_sha: str = "",
    exclude: tuple[str, ...] = (),
    reference: Pair | None = None,
) -> LatencyTable:
    """The table from timings of :func:`plan_variants`' variants (in order): the fitting half of
    :func:`measure_latency_table`, apart so that it can be checked on synthetic timings.
    ``reference``: interleaved (deployed original, float original) runs, for a quantized table."""
    groups = _by_macs(dep, scores, cost, exclude)
    variants, probes = plan_variants(dep, scores, groups, settings, step)
    return _table(
        dep, groups, cost, variants, measured, probes, settings, step, f"vector width {step}", model_sha, reference
    )


def _by_macs(dep: DependencyGraph, scores: Scores, cost: ModelCost, exclude: tuple[str, ...]) -> list[int]:
    return _largest_first(dep, cost, _candidates(dep, scores, exclude))


def _largest_first(dep: DependencyGraph, cost: ModelCost, groups: Iterable[int]) -> list[int]:
    """``groups`` (indices) by the MACs of their nodes, largest first: the order they are timed in."""
    node_macs = {node.name: node.macs for node in cost.nodes}
    return sorted(groups, key=lambda i: -sum(node_macs.get(n, 0) for n in dep.groups[i].nodes))


def _with_cached_groups(
    groups: list[int], table: LatencyTable, dep: DependencyGraph, scores: Scores, cost: ModelCost
) -> list[int]:
    """``groups`` and those ``table`` has curves for, largest first. The key names neither the kind limits
    nor ``--exclude``, so jobs that leave different groups whole share one table: were each to replace it
    with its own groups' curves, they would keep measuring it again in turn."""
    cached = [
        i
        for i, group in enumerate(dep.groups)
        if group.id in table.curves and group.id in scores and group.prunable and i not in groups
    ]
    return _largest_first(dep, cost, [*groups, *cached])


def _keep(dep: DependencyGraph, index: int, scores: Scores, count: int, step: int) -> dict[str, list[int]]:
    """Group ``index`` at ``count`` as a plan keeps it on the job's ``step`` (its Split sections on it too)."""
    group = dep.groups[index]
    count = max(count, len(group.pinned), 1)
    return {group.id: choose_kept(dep, index, scores[group.id], count, round_to=step)}


def _table(
    dep: DependencyGraph,
    groups: list[int],
    cost: ModelCost,
    variants: list[Variant],
    measured: Measured,
    probes: list[tuple[str, int, int]],
    settings: LatencySettings,
    step0: int,
    source0: str,
    model_sha: str,
    reference: Pair | None = None,
) -> LatencyTable:
    """Curves from the measurements: per group, ms saved per MAC removed, fitted over its grid
    counts (least squares through the origin) and kept within [1/4, 3] times the median rate of all
    groups (itself at least half the all-MACs prior, baseline / MACs; with fewer than three groups,
    at most 3x the prior); groups the budget did not
    reach get the median rate. The curve is then evaluated on every multiple of the step."""
    baseline_runs, results = measured
    baseline = float(np.percentile(baseline_runs, QUANTILE))
    ms: dict[tuple[str, int], float] = {}
    widths = []
    for (group_id, count, _), (before, after) in zip(variants, results):
        ratio, low, high = ratio_interval(before, after, quantile=QUANTILE)
        ms[(group_id, count)] = baseline * ratio
        widths.append(baseline * (high - low) / 2.0)
    noise = float(np.median(widths)) if widths else 0.0
    macs = MacsModel(dep, {node.name: node.macs for node in cost.nodes})

    def removed_macs(index: int, count: int) -> float:
        """MACs removed with group ``index`` alone at ``count`` (not linear in the count: a conv whose
        input and output are both in the group shrinks on both sides; pinned channels stay)."""
        group = dep.groups[index]
        return float(
            macs.total
            - macs.macs(PruningPlan.from_keep(dep, _keep(dep, index, {group.id: _scores(group)}, count, step0)))
        )

    fitted = set()  # groups with counts to measure at (one narrower than the step has none)
    fits = {}
    offsets = {(g, m - d) for g, m, d in probes}
    for index in groups:
        group = dep.groups[index]
        counts = grid_counts(group.channels, group_step(group, step0), settings.fractions, len(group.pinned))
        if not counts:
            continue
        fitted.add(group.id)
        pairs = [(removed_macs(index, c), baseline - ms[(group.id, c)]) for c in counts if (group.id, c) in ms]
        if pairs and removed_macs(index, counts[0]) > 0:
            removed, saved = np.array(pairs).T
            fits[group.id] = max(0.0, float(removed @ saved / (removed @ removed)))
    prior = baseline / max(macs.total, 1)  # all time spent in MACs: the rate before measuring
    # The typical rate: the measured groups' median, shrunk towards the prior as if the prior were
    # three more groups (one measured group of 63 must not set the rate of the other 62).
    measured_rate = float(np.median(list(fits.values()))) if fits else prior
    global_rate = max((len(fits) * measured_rate + PRIOR_WEIGHT * prior) / (len(fits) + PRIOR_WEIGHT), 0.5 * prior)
    curves = {}
    for index in groups:
        group = dep.groups[index]
        if group.id not in fitted:
            continue
        measured_group = group.id in fits
        # Measured rates between a quarter and three times the typical one: removing MACs never
        # costs time, and a single disturbed timing must not promise (or deny) a free lunch.
        ceiling = 3.0 * min(global_rate, prior) if len(fits) < 3 else 3.0 * global_rate  # few groups: no median
        rate = min(max(fits[group.id], 0.25 * global_rate), ceiling) if measured_group else global_rate
        units = group_step(group, step0)  # heads of 16-channel multiples: every head count
        counts = list(range(units, group.channels, units)) + [group.channels]
        values = [max(0.0, baseline - rate * removed_macs(index, c)) for c in counts]
        points = {c: round(v, 5) for (g, c), v in ms.items() if g == group.id and (g, c) not in offsets}
        curve_probes = {c: v for (g, c), v in ms.items() if g == group.id and (g, c) in offsets}
        curves[group.id] = LatencyCurve(
            group.id, group.channels, tuple(counts), monotone(counts, values), measured_group, curve_probes, points
        )
    measured_probes = [(m, ms[(g, m)], {d: ms[(g, m - d)]}) for g, m, d in probes if (g, m) in ms and (g, m - d) in ms]
    step = staircase_step(measured_probes, step0, noise)
    slower = probe_slowdowns(measured_probes)
    source = source0 + (
        f"; off-step probes ran {', '.join(f'{r:.2f}x' for r in slower)} the time of the multiple "
        f"above (noise {noise:.3f} ms)"
        if slower
        else "; not probed"
    )
    if step != step0:
        source = f"measured: latency drops at every multiple of {step} (start step {step0})"
    float_original = None
    if reference is not None:  # the float original, timed interleaved with the quantized one
        float_original = baseline * ratio_interval(reference[0], reference[1], quantile=QUANTILE)[0]
    return LatencyTable(
        key=table_key(model_sha, dict(dep.input_shapes or {}), settings),
        baseline_ms=baseline,
        noise_ms=noise,
        step=step,
        step_source=source,
        curves=curves,
        settings=json.loads(json.dumps(asdict(settings))),
        quantize=settings.quantize,
        float_original_ms=float_original,
    )


def _scores(group: ChannelGroup) -> np.ndarray:
    return np.arange(group.channels, dtype=np.float64)  # which channels go does not change the MACs


# ---- what runs in the child process ----------------------------------------------------------


def _measure_variants(
    dep: DependencyGraph, variants: list[Variant], inputs: dict[str, np.ndarray], settings: LatencySettings
) -> tuple[Measured, Pair | None]:
    """Baseline timings and, per variant until the budget is spent, interleaved (before, after) ms;
    with ``settings.quantize``, every model quantized first, and (quantized, float) runs of the original."""
    from onnxprune.graphops.surgery import apply_plan
    from onnxprune.workers.benchmark import session_from_bytes

    def deployed(model: onnx.ModelProto) -> Any:
        if settings.quantize == "none":
            data = model.SerializeToString()
        else:
            from onnxprune.workers.quantize import quantized_bytes

            data = quantized_bytes(model, settings.quantize, inputs)
        return session_from_bytes(data, settings.threads, settings.optimization)

    deadline = time.perf_counter() + settings.budget_s
    original = deployed(dep.model)
    names = [o.name for o in original.get_outputs()]
    for _ in range(settings.warmup):
        original.run(names, inputs)
    baseline: list[float] = []
    for _ in range(settings.runs):
        baseline.append(_timed(original, names, inputs))
    reference = None
    if settings.quantize != "none":
        floating = session_from_bytes(dep.model.SerializeToString(), settings.threads, settings.optimization)
        reference = _interleaved(original, floating, names, inputs, settings)
        baseline.extend(reference[0])
        del floating
    results = []
    for _, _, keep in variants:
        if time.perf_counter() > deadline:
            break
        session = deployed(apply_plan(dep, PruningPlan.from_keep(dep, keep)))
        before, after = _interleaved(original, session, names, inputs, settings)
        baseline.extend(before)
        results.append((before, after))
        del session
    return (baseline, results), reference


def _interleaved(
    original: Any, other: Any, names: list[str], inputs: dict[str, np.ndarray], settings: LatencySettings
) -> Pair:
    for _ in range(settings.warmup):
        other.run(names, inputs)
    before: list[float] = []
    after: list[float] = []
    for _ in range(settings.runs):
        before.append(_timed(original, names, inputs))
        after.append(_timed(other, names, inputs))
    return before, after


def _timed(session: Any, names: list[str], inputs: dict[str, np.ndarray]) -> float:
    start = time.perf_counter_ns()
    session.run(names, inputs)
    return (time.perf_counter_ns() - start) / 1e6
