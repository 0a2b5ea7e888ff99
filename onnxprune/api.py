"""The Python API: ``prune``, ``analyze``, ``bench``, ``sensitivity``.

Thin over ``workers.job_process.run_job_process`` (the pipeline in a sandboxed child process),
``workers.analysis``, ``workers.benchmark`` and ``workers.sensitivity``, like the CLI: the library adds
only the conversions a pipeline wants (a ``ModelProto`` or arrays in, a ``ModelProto`` out). The
pipeline works on files (the sandbox reads them), so in-memory models and data pass through a
temporary directory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxprune.graphops.loading import load_model
from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.analysis_summary import ModelAnalysis, summarize_model
from onnxprune.workers.benchmark import BenchmarkResult
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.report import PruneReport, SensitivityReport

ModelLike = str | Path | onnx.ModelProto
DataLike = str | Path | Mapping[str, np.ndarray]
StageProgress = Callable[[str, float], None]


@dataclass(frozen=True)
class PruneResult:
    """The pruned model, the report of what changed, and the plan (kept channels per group)."""

    model: onnx.ModelProto = field(repr=False)
    report: PruneReport
    plan: PruningPlan
    path: Path | None = None  # where the model was written, when ``output`` was given


@contextmanager
def _as_file(model: ModelLike, workdir: Path, name: str) -> Iterator[Path]:
    if isinstance(model, onnx.ModelProto):
        path = workdir / name
        path.write_bytes(model.SerializeToString())
        yield path
    else:
        yield Path(model)


def _data_file(data: DataLike | None, workdir: Path) -> Path | None:
    if data is None or isinstance(data, (str, Path)):
        return None if data is None else Path(data)
    path = workdir / "data.npz"
    np.savez(path, **{name: np.asarray(array) for name, array in data.items()})  # type: ignore[arg-type]
    return path


def prune(
    model: ModelLike,
    output: str | Path | None = None,
    *,
    data: DataLike | None = None,
    plan: PruningPlan | None = None,
    sensitivity: SensitivityReport | None = None,
    progress: StageProgress | None = None,
    options: PruneOptions | Mapping[str, object] | None = None,
    **fields: object,
) -> PruneResult:
    """Prune ``model`` and return the pruned ``ModelProto``, its report and its plan.

    Options are ``PruneOptions`` fields as keywords (``ratio=0.3``, ``criterion="l2"``,
    ``flops_target=0.5``, ``finetune_steps=300`` ...), nested by strategy or not
    (``strategies={"recovery": {"finetune": {"lr": 0.01}}}``), or a whole ``options=`` (a
    ``PruneOptions`` or a config mapping, as the REST API takes it). ``data`` is an
    ``.npz`` path or a mapping of arrays (one per model input, optional ``labels``). With ``output``
    the model is also written there. Raises ``graphops.errors.ModelRejected`` for models or data
    that cannot be pruned, ``pydantic.ValidationError`` for bad options.
    """
    from onnxprune.workers.job_process import JobLimits, JobRequest, run_job_process

    if options is not None and fields:
        raise TypeError("pass either options= or option keywords, not both")
    from onnxprune.workers.capabilities import torch_installed
    from onnxprune.workers.options import with_data_defaults
    from onnxprune.workers.precision import is_quantized_file

    chosen = PruneOptions.model_validate(options if options is not None else fields)
    with tempfile.TemporaryDirectory(prefix="onnxprune-api-") as tmp:
        workdir = Path(tmp)
        target = Path(output) if output is not None else workdir / "pruned.onnx"
        with _as_file(model, workdir, "model.onnx") as model_path:
            # With data and no criterion: taylor (l1 without torch or for a QDQ model), as the CLI does.
            quantized = (
                data is not None and "criterion" not in chosen.model_fields_set and is_quantized_file(model_path)
            )
            chosen, _ = with_data_defaults(
                chosen, data_given=data is not None, torch_available=torch_installed(), quantized=quantized
            )
            request = JobRequest(
                model_path, target, chosen, data=_data_file(data, workdir), plan=plan, sensitivity=sensitivity
            )
            # The same sandboxed child as the CLI's and the service's jobs: the user's graph never
            # runs in the caller's process.
            result = run_job_process(request, workdir / "job", limits=JobLimits.from_environment(), progress=progress)
        pruned = onnx.load(str(target))
    return PruneResult(
        model=pruned, report=result.report, plan=result.plan, path=Path(output) if output is not None else None
    )


def analyze(model: ModelLike, input_shapes: Mapping[str, Sequence[int]] | None = None) -> ModelAnalysis:
    """Channel groups that can be pruned together, frozen groups with reasons, MACs and params."""
    with tempfile.TemporaryDirectory(prefix="onnxprune-api-") as tmp, _as_file(model, Path(tmp), "model.onnx") as path:
        return summarize_model(path, input_shapes)


def bench(
    model: ModelLike,
    other: ModelLike | None = None,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    runs: int = 50,
    warmup: int = 5,
    threads: int = 1,
) -> BenchmarkResult:
    """onnxruntime latency of ``model`` (and ``other``, interleaved) and, with two, output fidelity."""
    from onnxprune.workers.benchmark import benchmark

    with tempfile.TemporaryDirectory(prefix="onnxprune-api-") as tmp:
        workdir = Path(tmp)
        with _as_file(model, workdir, "a.onnx") as first:
            if other is None:
                return benchmark(first, None, input_shapes, runs=runs, warmup=warmup, threads=threads)
            with _as_file(other, workdir, "b.onnx") as second:
                return benchmark(first, second, input_shapes, runs=runs, warmup=warmup, threads=threads)


def sensitivity(
    model: ModelLike,
    data: DataLike | None = None,
    *,
    synthetic: int | None = None,
    ratios: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    criterion: str = "l1",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    workers: int | None = None,
) -> SensitivityReport:
    """Prune each group alone at each ratio and measure accuracy (with labels) or fidelity on ``data``,
    or, with ``synthetic=N`` instead of data, output fidelity on N random inputs (a proxy)."""
    from onnxprune.graphops.errors import ModelRejected
    from onnxprune.roundtrip.data import load_dataset
    from onnxprune.workers.evaluation import synthetic_dataset
    from onnxprune.workers.sensitivity import measure_sensitivity

    if (data is None) == (synthetic is None):
        raise ModelRejected("sensitivity needs either data or synthetic=N (random inputs), not both or neither")
    with tempfile.TemporaryDirectory(prefix="onnxprune-api-") as tmp:
        workdir = Path(tmp)
        with _as_file(model, workdir, "model.onnx") as model_path:
            proto = load_model(model_path)
            data_path = _data_file(data, workdir)
            dataset = (
                load_dataset(data_path, proto, input_shapes)
                if data_path is not None
                else synthetic_dataset(proto, input_shapes, synthetic or 0)
            )
            return measure_sensitivity(
                model_path,
                dataset,
                ratios=ratios,
                criterion=criterion,
                input_shapes=input_shapes,
                workers=workers,
                synthetic=synthetic is not None,
            )
