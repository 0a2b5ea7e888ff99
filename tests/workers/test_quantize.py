"""Prune, then quantize: the int8 model runs in onnxruntime, stays close to the float pruned model on
calibration data, and the float pruned model is kept (and still passes the oracle) beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import float_output_path, run_pipeline
from onnxprune.workers.quantize import calibration_batches
from tests.support.small_models import residual_model

# Integration: the pipeline, the CLI or a sandbox; the pipeline's stages run in this process, as in a
# job's sandbox (tests/support/job_sandbox.py).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stages_in_the_job_process")]


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory) -> tuple[Path, Path]:
    """The residual test model (batch 1) and 96 inputs with labels from its own predictions."""
    folder = tmp_path_factory.mktemp("quantize")
    model_path = folder / "model.onnx"
    onnx.save(residual_model(), model_path)
    x = np.random.default_rng(0).standard_normal((96, 3, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    labels = np.array([session.run(None, {"input": x[i : i + 1]})[0].argmax() for i in range(len(x))])
    np.savez(folder / "data.npz", input=x, labels=labels)
    return model_path, folder / "data.npz"


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_int8_after_pruning_runs_and_stays_close_to_the_float_pruned_model(model_and_data, tmp_path):
    model_path, data = model_and_data
    out = tmp_path / "small.onnx"

    result = run_pipeline(
        model_path, out, PruneOptions(ratio=0.25, quantize="int8", benchmark_runs=3, round_to=1), data=data
    )

    quantized, floating = onnx.load(out), onnx.load(float_output_path(out))
    kinds = [node.op_type for node in quantized.graph.node]
    assert kinds.count("QuantizeLinear") > 0 and kinds.count("DequantizeLinear") > 0
    assert result.float_output == float_output_path(out)
    x = np.load(data)["input"][:16]
    assert _cosine(_outputs(out, x), _outputs(float_output_path(out), x)) > 0.98
    report = result.report.quantization
    assert report is not None and report.mode == "int8" and report.calibration_source == "data"
    assert report.calibration_samples == 58  # the training split (validation and held-out samples left out)
    assert report.fidelity_to_float is not None and report.fidelity_to_float.cosine_similarity > 0.98
    assert report.float_latency_ms is not None and report.float_held_out is not None
    assert result.report.evaluation is not None  # of the quantized model, against the original
    assert not any(node.op_type == "QuantizeLinear" for node in floating.graph.node)
    assert result.report.macs.after < result.report.macs.before


def test_without_data_int8_calibrates_on_generated_inputs_and_says_so(model_and_data, tmp_path):
    model_path, _ = model_and_data
    result = run_pipeline(model_path, tmp_path / "q.onnx", PruneOptions(ratio=0.25, quantize="int8", benchmark=False))

    assert result.report.quantization.calibration_source == "generated inputs"
    assert any("generated inputs" in warning for warning in result.report.warnings)


def test_dynamic_quantization_needs_no_calibration(model_and_data, tmp_path):
    model_path, _ = model_and_data
    result = run_pipeline(
        model_path, tmp_path / "d.onnx", PruneOptions(ratio=0.25, quantize="dynamic", benchmark=False)
    )

    report = result.report.quantization
    assert report.mode == "dynamic" and report.calibration_samples == 0 and report.calibration_source is None
    ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])


def test_calibration_feeds_respect_a_fixed_batch():
    inputs = {"x": np.arange(10, dtype=np.float32).reshape(10, 1)}
    assert [len(feed["x"]) for feed in calibration_batches(inputs, 4)] == [4, 4]  # no ragged last feed
    assert [len(feed["x"]) for feed in calibration_batches(inputs, None)] == [10]


def test_a_model_quantized_in_the_qoperator_format_is_refused_with_the_way_forward(model_and_data, tmp_path):
    from onnxruntime.quantization import QuantFormat, quantize_static

    from onnxprune.graphops.errors import ModelRejected
    from onnxprune.graphops.loading import load_model, validate_model

    model_path, data = model_and_data
    x = np.load(data)["input"]

    class Reader:
        feeds = iter([{"input": x[i : i + 1]} for i in range(8)])

        def get_next(self):
            return next(self.feeds, None)

    qoperator = tmp_path / "qop.onnx"
    quantize_static(str(model_path), str(qoperator), Reader(), quant_format=QuantFormat.QOperator)
    with pytest.raises(ModelRejected, match="QOperator format .*--quantize int8"):
        validate_model(load_model(qoperator))
