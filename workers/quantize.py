"""Post-training int8 quantization of the pruned model with onnxruntime's quantizer.

Pruning removes channels; int8 makes each remaining multiply-accumulate cheaper, and the two
compound. We use onnxruntime's own static quantizer (QDQ format, per-channel int8 weights, uint8
activations, calibration by min-max, entropy or percentile) rather than writing one: its QDQ
graphs are what onnxruntime's int8 kernels fuse. Calibration runs the user's graph, so it happens
in the sandboxed child process (``workers.sandbox``) like every other run of it.

uint8 activations with int8 weights (U8S8) is onnxruntime's fast path on x86; without VNNI the
AVX2 kernels can saturate, which ``reduce_range`` (7-bit weights) avoids at a small accuracy cost.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter

from onnxprune.graphops import input_shapes
from onnxprune.graphops.dequantized import first_quantization_node
from onnxprune.graphops.errors import ModelRejected
from onnxprune.workers.sandbox import RunnerLimits, run_in_child

# Calibration samples: min-max ranges settle after a few hundred images.
CALIBRATION_SAMPLES = 256
_FEED_BATCH = 32
QDQ_OPSET = 13


@dataclass(frozen=True)
class QuantizeSettings:
    mode: str  # "int8": static QDQ with calibration; "dynamic": weights only, activations at run time
    calibration_method: str = "minmax"  # "minmax", "entropy" or "percentile"


def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI (int8 dot products without saturation); Linux only, else False."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def calibration_batches(inputs: Mapping[str, np.ndarray], batch: int | None) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of ``batch`` samples (a fixed batch dim) or up to ``_FEED_BATCH`` (a symbolic one)."""
    count = len(next(iter(inputs.values())))
    size = batch or _FEED_BATCH
    for start in range(0, count - size + 1 if batch else count, size):
        yield {name: array[start : start + size] for name, array in inputs.items()}


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The first input's batch dim when the model fixes it, else None."""
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
        return None
    return None


def check_not_quantized(model: onnx.ModelProto) -> None:
    """``--quantize`` on a QDQ model would quantize it twice (onnxruntime's quantizer then writes an invalid
    model); such a model is pruned in its own precision without ``--quantize``."""
    node = first_quantization_node(model)
    if node is not None:
        raise ModelRejected(
            f"model is already quantized ({node.op_type} node {node.name!r}): --quantize applies "
            "to float models; prune it without --quantize, it stays in its own precision"
        )


def quantize(
    model_path: Path,
    output_path: Path,
    settings: QuantizeSettings,
    calibration: Mapping[str, np.ndarray] | None,
    *,
    limits: RunnerLimits,
) -> dict[str, int | bool]:
    """Quantize ``model_path`` into ``output_path`` in a sandboxed child; returns what was quantized.

    ``calibration``: model inputs with a leading sample axis (static mode only)."""
    calibration_path = None
    if settings.mode == "int8":
        if not calibration:
            raise ValueError("static int8 quantization needs calibration inputs")
        calibration_path = output_path.with_suffix(".calibration.npz")
        arrays: dict[str, Any] = {name: np.asarray(array) for name, array in calibration.items()}
        np.savez(calibration_path, **arrays)
    reduce_range = not cpu_has_vnni()
    result = run_in_child(
        _quantize_in_child,
        (
            str(model_path),
            str(output_path),
            settings.mode,
            settings.calibration_method,
            None if calibration_path is None else str(calibration_path),
            reduce_range,
        ),
        limits=limits,
    )
    if calibration_path is not None:
        calibration_path.unlink(missing_ok=True)
    return {**result, "reduce_range": reduce_range}


def _quantize_in_child(
    model_path: str, output_path: str, mode: str, method: str, calibration_path: str | None, reduce_range: bool
) -> dict[str, int]:
    inputs = None
    if calibration_path is not None:
        with np.load(calibration_path) as archive:
            inputs = {name: archive[name] for name in archive.files}
    return quantize_file(model_path, output_path, mode, method, inputs, reduce_range)


def quantized_bytes(model: onnx.ModelProto, mode: str, inputs: Mapping[str, np.ndarray]) -> bytes:
    """``model`` quantized in THIS process exactly as :func:`quantize` would, for timing: call it only
    where the user's graph may run (the sandboxed child). Calibration is min-max on ``inputs``: the
    method and the inputs change the scales, never the graph, so the latency is the deployed one's."""
    with tempfile.TemporaryDirectory(prefix="onnxprune-quantize-") as folder:
        source, output = Path(folder) / "model.onnx", Path(folder) / "model.int8.onnx"
        source.write_bytes(model.SerializeToString())
        quantize_file(str(source), str(output), mode, "minmax", inputs if mode == "int8" else None, not cpu_has_vnni())
        return output.read_bytes()


def quantize_file(
    model_path: str,
    output_path: str,
    mode: str,
    method: str,
    inputs: Mapping[str, np.ndarray] | None,
    reduce_range: bool,
) -> dict[str, int]:
    """onnxruntime's quantizer on ``model_path``, in this process; what it quantized."""
    from onnxprune.workers.ort_sessions import quiet_onnxruntime

    quiet_onnxruntime()  # the quantizer's own sessions (pre-processing, calibration) log errors only
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    source = onnx.load(model_path)
    opset = next((o.version for o in source.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < QDQ_OPSET:  # per-channel QDQ (DequantizeLinear's axis) needs opset 13
        source = onnx.version_converter.convert_version(source, QDQ_OPSET)
        model_path = output_path + ".opset.onnx"
        onnx.save(source, model_path)
    prepared = output_path + ".pre.onnx"
    try:  # shape inference and graph optimisation as the quantizer expects; not every graph takes it
        quant_pre_process(model_path, prepared, skip_symbolic_shape=True)
    except Exception:  # noqa: BLE001 - the quantizer works (less well) on the graph as it is
        prepared = model_path
    if mode == "dynamic":
        quantize_dynamic(
            prepared, output_path, per_channel=True, reduce_range=reduce_range, weight_type=QuantType.QInt8
        )
    else:
        if not inputs:
            raise ValueError("static int8 quantization needs calibration inputs")
        model = onnx.load(prepared, load_external_data=False)
        samples = dict(inputs)

        class Reader(CalibrationDataReader):  # type: ignore[misc]
            def __init__(self) -> None:
                self._feeds = calibration_batches(samples, fixed_batch(model))

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._feeds, None)

        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        quantize_static(
            prepared,
            output_path,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
        )
    quantized = onnx.load(output_path, load_external_data=False)
    kinds = [node.op_type for node in quantized.graph.node]
    return {
        "quantize_nodes": kinds.count("QuantizeLinear"),
        "dequantize_nodes": kinds.count("DequantizeLinear"),
        "integer_ops": sum(kind in ("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear") for kind in kinds),
    }


def sample_inputs(inputs: Mapping[str, np.ndarray], limit: int = CALIBRATION_SAMPLES) -> dict[str, np.ndarray]:
    """At most ``limit`` samples, evenly strided so every class of a sorted data set is seen."""
    count = len(next(iter(inputs.values())))
    if count <= limit:
        return dict(inputs)
    index = np.linspace(0, count - 1, limit).round().astype(int)
    return {name: np.asarray(array)[index] for name, array in inputs.items()}


def generated_inputs(one_sample: Mapping[str, np.ndarray], count: int, seed: int) -> dict[str, np.ndarray]:
    """Standard-normal samples shaped like ``one_sample`` (batch 1): calibration without data, a proxy.
    At most as many as fit the bound on test inputs together (a huge image calibrates on fewer)."""
    per_sample = sum(math.prod(array.shape[1:]) for array in one_sample.values())
    count = max(1, min(count, input_shapes.MAX_TOTAL_INPUT_ELEMENTS // max(per_sample, 1)))
    rng = np.random.default_rng(seed)
    return {
        name: rng.standard_normal((count, *array.shape[1:])).astype(array.dtype) for name, array in one_sample.items()
    }
