"""How the final model is written: as the float model recovery left, or quantized after it.

Quantizing is the last step, after pruning and recovery (``workers.quantize``); the float pruned
model is kept beside the quantized one and measured with it, so the report shows what each step
cost and gained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnx

from onnxprune.workers.benchmark import benchmark, compare_outputs, make_inputs, run_models
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.quantize import (
    CALIBRATION_SAMPLES,
    QuantizeSettings,
    fixed_batch,
    generated_inputs,
    quantize,
    sample_inputs,
)
from onnxprune.workers.report import QuantizationReport
from onnxprune.workers.strategies.base import Job
from onnxprune.workers.strategies.needs import Given
from onnxprune.workers.strategies.registry import StrategyOptions, own, register, registered


@dataclass
class Artifacts:
    result: Path  # the job's model
    float_result: Path | None = None  # the pruned float model, when the result is quantized
    quantization: QuantizationReport | None = None
    notes: tuple[str, ...] = ()
    sha256: str | None = None  # of ``result``, when known from writing it


class Finish(Protocol):
    def finish(self, job: Job, model: onnx.ModelProto) -> Artifacts: ...

    def measure(self, job: Job, artifacts: Artifacts, evaluate_float: bool) -> Artifacts: ...


class QuantizeOptions(StrategyOptions):
    quantize: Literal["none", "int8", "dynamic"] = own("quantize")
    calibration_method: Literal["minmax", "entropy", "percentile"] = own("calibration_method")


@register("finish", "float", position=100)
class KeepFloat:
    """The float model recovery left, as it is (every job that does not quantize)."""

    @classmethod
    def wanted(cls, options: PruneOptions, given: Given) -> bool:
        return True

    @classmethod
    def build(cls, options: PruneOptions) -> KeepFloat:
        return cls()

    def finish(self, job: Job, model: onnx.ModelProto) -> Artifacts:
        path, sha256 = job.written(model, job.workdir / "result.onnx")
        return Artifacts(path, sha256=sha256)

    def measure(self, job: Job, artifacts: Artifacts, evaluate_float: bool) -> Artifacts:
        return artifacts


@register("finish", "quantize", options=QuantizeOptions, report="quantization", position=10)
@dataclass
class Quantize:
    settings: QuantizeSettings

    @classmethod
    def wanted(cls, options: PruneOptions, given: Given) -> bool:
        return QuantizeOptions.of(options).quantize != "none"

    @classmethod
    def build(cls, options: PruneOptions) -> Quantize:
        own_options = QuantizeOptions.of(options)
        if own_options.quantize == "none":
            raise ValueError("quantize 'none' has no quantizer")
        return cls(QuantizeSettings(mode=own_options.quantize, calibration_method=own_options.calibration_method))

    def finish(self, job: Job, model: onnx.ModelProto) -> Artifacts:
        float_path, float_sha256 = job.written(model, job.workdir / "result.float.onnx")
        result = job.workdir / "result.onnx"
        with job.stages.stage("quantize"):
            calibration, source = self._calibration(job)
            static = self.settings.mode == "int8"
            info = quantize(float_path, result, self.settings, calibration if static else None, limits=job.limits)
            probe = _probe(calibration, fixed_batch(model))
            fidelity = compare_outputs(*run_models([float_path, result], probe, limits=job.limits))
        notes = (
            ()
            if source == "data" or not static
            else (
                "quantize int8: calibrated on generated inputs (no data given); activation ranges may not match real "
                "inputs: pass --data for calibration",
            )
        )
        report = QuantizationReport(
            mode=self.settings.mode,
            reduce_range=bool(info["reduce_range"]),
            calibration_method=self.settings.calibration_method if static else None,
            calibration_samples=len(next(iter(calibration.values()))) if static else 0,
            calibration_source=source if static else None,
            quantize_nodes=int(info["quantize_nodes"]),
            dequantize_nodes=int(info["dequantize_nodes"]),
            fidelity_to_float=fidelity,
            float_output_sha256=float_sha256,
        )
        return Artifacts(result, float_path, report, notes)

    def measure(self, job: Job, artifacts: Artifacts, evaluate_float: bool) -> Artifacts:
        """The float pruned model's latency and held-out metric, for the report beside the quantized one."""
        if artifacts.quantization is None or artifacts.float_result is None:
            return artifacts
        update: dict[str, object] = {}
        options = job.options
        if options.benchmark:
            timing = benchmark(
                job.analysis.path,
                artifacts.float_result,
                job.analysis.input_shapes,
                runs=options.benchmark_runs,
                threads=options.threads,
                seed=options.seed,
                limits=job.limits,
            )
            update["float_latency_ms"] = timing.latency.after
        held_out = job.held_out
        if evaluate_float and held_out is not None:
            from onnxprune.workers.evaluation import held_out_evaluation

            update["float_held_out"] = held_out_evaluation(
                job.analysis.path,
                artifacts.float_result,
                held_out,
                split="",
                limits=job.limits,
                evaluator=job.held_out_evaluator,
            ).after
        quantization = artifacts.quantization.model_copy(update=update)
        return Artifacts(artifacts.result, artifacts.float_result, quantization, artifacts.notes)

    def _calibration(self, job: Job) -> tuple[dict[str, np.ndarray], str]:
        """Inputs of the training split (never the held-out samples), else generated ones."""
        if job.splits is not None:
            return sample_inputs(job.splits.train.inputs), "data"
        one = make_inputs(job.analysis.original, job.analysis.input_shapes, job.options.seed)
        return generated_inputs(one, CALIBRATION_SAMPLES, job.options.seed), "generated inputs"


def _probe(calibration: dict[str, np.ndarray], batch: int | None) -> dict[str, np.ndarray]:
    """A few calibration samples in the batch the model accepts, to compare quantized and float outputs."""
    size = batch or min(8, len(next(iter(calibration.values()))))
    return {name: array[:size] for name, array in calibration.items()}


def choose_finish(options: PruneOptions) -> Finish:
    """The first registered finish the job wants (quantizing when asked; else the float model)."""
    classes: list[Any] = [entry.cls for entry in registered("finish")]
    finish: Finish = next(cls for cls in classes if cls.wanted(options, Given())).build(options)
    return finish
