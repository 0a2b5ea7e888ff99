"""onnxruntime runs of uploaded models: deterministic inputs, single runs, latency and fidelity.

Every onnxruntime session lives in a sandboxed child process (``workers.sandbox``). A benchmark
builds both sessions with identical options, warms each up, then times them interleaved
(A, B, A, B, ...) on the same inputs, so drift in machine load hits both models alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.loading import load_model, parse_model
from onnxprune.graphops.shapes import graph_inputs, resolve_input_shapes
from onnxprune.workers.ort_models import FedModel, run_fed
from onnxprune.workers.output_compare import numeric_values, structure
from onnxprune.workers.report import Fidelity, Latency, LatencyStats
from onnxprune.workers.sandbox import RunnerError, RunnerLimits, inside_sandbox, run_in_child
from onnxprune.workers.speed import compare_timings

if TYPE_CHECKING:  # onnxruntime itself is imported only in the child process
    import onnxruntime

__all__ = ["BenchmarkResult", "RunnerError", "RunnerLimits", "benchmark", "make_inputs", "run_model", "run_models"]

Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class BenchmarkResult:
    latency: Latency
    fidelity: Fidelity | None  # None when only one model was benchmarked


def make_inputs(
    model: str | Path | onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0
) -> Inputs:
    """Deterministic random inputs for every graph input: floats standard normal, integers 0 or 1
    (valid token ids, attention masks and token types: a BERT mask of 2 overflows its
    ``(1 - mask) * -3.4e38`` to infinity), booleans fair coins. Symbolic dims not in ``input_shapes`` resolve as in
    ``graphops.shapes.resolve_input_shapes`` (batch 1)."""
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    shapes = resolve_input_shapes(proto, input_shapes)
    rng = np.random.default_rng(seed)
    inputs: Inputs = {}
    for value in graph_inputs(proto):
        elem_type = value.type.tensor_type.elem_type
        if elem_type in (0, onnx.TensorProto.STRING):
            raise ModelRejected(f"input {value.name!r} is not a numeric tensor; benchmarks need numeric inputs")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
        shape = tuple(shapes[value.name])
        if dtype == np.bool_:
            inputs[value.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            inputs[value.name] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            inputs[value.name] = rng.standard_normal(shape).astype(dtype)
    return inputs


def run_model(model_path: Path, inputs: Mapping[str, np.ndarray], *, limits: RunnerLimits = RunnerLimits()) -> Inputs:
    """All outputs of one onnxruntime run, by output name (in a sandboxed child process)."""
    return run_models([model_path], inputs, limits=limits)[0]


def run_models(
    models: Sequence[Path | FedModel],
    inputs: Mapping[str, np.ndarray],
    *,
    threads: int = 1,
    limits: RunnerLimits = RunnerLimits(),
) -> list[Inputs]:
    """The outputs of one run of each model on the same ``inputs``, in one sandboxed call. Fed models
    (their weights are inputs: a session holds none) run side by side, one per core; model files
    one after another, each session living only while its model runs."""
    sources = [model if isinstance(model, FedModel) else str(model) for model in models]
    return run_in_child(_run_each, (sources, dict(inputs), threads), limits=limits)


def benchmark(
    original: Path,
    pruned: Path | None,
    input_shapes: Mapping[str, Sequence[int]] | None,
    *,
    runs: int = 30,
    warmup: int = 5,
    threads: int = 1,
    seed: int = 0,
    limits: RunnerLimits = RunnerLimits(),
    cleaned: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> BenchmarkResult:
    """Latency of ``original`` (and ``pruned``, interleaved) and, with both, output fidelity.

    ``cleaned``, the original after the pipeline's graph cleanup alone (``workers.cleanup``), is timed
    in the same interleaved rounds, so the speed-up of pruning alone is read against it. ``progress`` hears
    the rounds done, every tenth of them, inside a job's sandbox (a large model's benchmark takes minutes)."""
    if runs < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"benchmark needs runs >= 1, warmup >= 0, threads >= 1 (got {runs}, {warmup}, {threads})")
    if cleaned is not None and pruned is None:
        raise ValueError("a cleaned-up baseline needs a pruned model to compare it with")
    inputs = make_inputs(original, input_shapes, seed)
    paths = [str(path) for path in (original, pruned, cleaned) if path is not None]
    heard = progress if progress is not None and inside_sandbox() else None  # a callable cannot cross processes
    timings, outputs = run_in_child(_time_sessions, (paths, inputs, runs, warmup, threads, heard), limits=limits)
    stats = [_latency_stats(ms) for ms in timings]
    change = compare_timings(timings[0], timings[1], seed=seed) if pruned is not None else None
    latency = Latency(
        before=stats[0], after=stats[1] if pruned is not None else None, threads=threads, warmup=warmup, change=change
    )
    if cleaned is not None:
        latency.cleaned = stats[2]
        latency.pruning_change = compare_timings(timings[2], timings[1], seed=seed)
        latency.cleanup_change = compare_timings(timings[0], timings[2], seed=seed)
    fidelity = compare_outputs(outputs[0], outputs[1]) if pruned is not None else None
    return BenchmarkResult(latency=latency, fidelity=fidelity)


def compare_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> Fidelity:
    """Max abs diff and cosine similarity, over all outputs flattened together and per output.

    Outputs are matched by name, or by position when the names differ; an output whose shape
    changed has infinite difference and cosine 0. Maps and sequences (ZipMap) count by value;
    string outputs are left out."""
    pairs = _match_outputs(reference, candidate)
    per_output: dict[str, dict[str, float]] = {}
    flat_ref, flat_cand = [], []
    shapes_match = True
    for name, ref, cand in pairs:
        ref64, cand64 = numeric_values(ref), numeric_values(cand)
        if ref64 is None:  # a string label: not compared (workers.output_compare)
            continue
        if cand64 is None or structure(ref) != structure(cand):
            shapes_match = False
            per_output[name] = {"max_abs_diff": float("inf"), "cosine_similarity": 0.0}
            continue
        per_output[name] = {"max_abs_diff": _max_abs_diff(ref64, cand64), "cosine_similarity": _cosine(ref64, cand64)}
        flat_ref.append(ref64)
        flat_cand.append(cand64)
    if not shapes_match or not flat_ref:
        return Fidelity(max_abs_diff=float("inf"), cosine_similarity=0.0, outputs=per_output)
    all_ref, all_cand = np.concatenate(flat_ref), np.concatenate(flat_cand)
    return Fidelity(
        max_abs_diff=_max_abs_diff(all_ref, all_cand), cosine_similarity=_cosine(all_ref, all_cand), outputs=per_output
    )


def _match_outputs(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if set(reference) == set(candidate):
        return [(name, reference[name], candidate[name]) for name in reference]
    if len(reference) != len(candidate):
        raise RunnerError(
            f"the pruned model has {len(candidate)} outputs, the original {len(reference)}; cannot compare them"
        )
    return [(name, ref, cand) for (name, ref), cand in zip(reference.items(), candidate.values())]


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(a, b) / norms)


def _latency_stats(milliseconds: list[float]) -> LatencyStats:
    values = np.asarray(milliseconds)
    return LatencyStats(
        p50=float(np.percentile(values, 50)),
        p90=float(np.percentile(values, 90)),
        p10=float(np.percentile(values, 10)),
        mean=float(values.mean()),
        runs=len(milliseconds),
        min=float(values.min()),
    )


# ---- what runs in the child process ----------------------------------------------------------


def _session(path: str, threads: int, prepack: bool = True, timing: bool = True) -> onnxruntime.InferenceSession:
    return session_from_bytes(Path(path).read_bytes(), threads, prepack=prepack, timing=timing)


def session_from_bytes(
    data: bytes, threads: int, optimization: str = "all", *, prepack: bool = True, timing: bool = True
) -> onnxruntime.InferenceSession:
    """A CPU session with the deploy settings (child process only); ``timing``: it times latency, so
    it keeps onnxruntime's waits as deployed (``workers.ort_sessions.cpu_session``)."""
    from onnxprune.workers.ort_sessions import cpu_session

    parse_model(data)  # refuses external data before onnxruntime could follow its paths
    return cpu_session(data, threads=threads, optimization=optimization, prepack=prepack, timing=timing)


def _run_each(models: list[str | FedModel], inputs: Inputs, threads: int) -> list[Inputs]:
    def run(model: str | FedModel) -> Inputs:
        return run_fed(model, inputs, threads) if isinstance(model, FedModel) else _run_file(model, inputs, threads)

    from onnxprune.workers.job_threads import current, usable_cpus

    budget = current()  # in a job: its share of the CPU, not every core the process may run on
    cores = budget.threads if budget is not None else int(usable_cpus())
    side_by_side = min(len(models), max(cores // threads, 1)) if all(isinstance(m, FedModel) for m in models) else 1
    if side_by_side <= 1:
        return [run(model) for model in models]
    with ThreadPoolExecutor(side_by_side) as pool:  # onnxruntime releases the GIL while it runs
        return list(pool.map(run, models))


def _run_file(path: str, inputs: Inputs, threads: int) -> Inputs:
    session = _session(path, threads, prepack=False, timing=False)
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def _time_sessions(
    paths: list[str],
    inputs: Inputs,
    runs: int,
    warmup: int,
    threads: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[list[float]], list[Inputs]]:
    sessions = [_session(path, threads) for path in paths]
    names = [[output.name for output in session.get_outputs()] for session in sessions]
    outputs = []
    for session, output_names in zip(sessions, names):
        for _ in range(warmup):
            session.run(output_names, inputs)
        outputs.append(dict(zip(output_names, session.run(output_names, inputs))))
    timings: list[list[float]] = [[] for _ in sessions]
    for run in range(runs):
        # Two models alternate (each always follows the other); three rotate their order every round,
        # else one would always run right after the slow original (7% slower when identical to the next).
        shift = run % len(sessions) if len(sessions) > 2 else 0
        for index in [*range(shift, len(sessions)), *range(shift)]:
            session = sessions[index]
            start = time.perf_counter_ns()
            session.run(names[index], inputs)
            timings[index].append((time.perf_counter_ns() - start) / 1e6)
        if progress is not None and (run + 1) % max(1, runs // 10) == 0:
            progress(run + 1)
    return timings, outputs
