"""The CLI prunes a QDQ model as a whole process and writes a QDQ model that passes the oracle."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import version_converter

from onnxprune.graphops.plan import PruningPlan
from onnxprune.workers.latency import channel_step
from tests.support import qdq_models
from tests.support.cli import onnxprune
from tests.support.oracle import analyse, assert_prune_matches_oracle, initializer_arrays
from tests.support.small_models import chain_model

pytestmark = pytest.mark.integration  # the pipeline, the CLI or a sandbox, in processes of their own

ROOT = Path(__file__).resolve().parents[2]


def qdq_counts(model: onnx.ModelProto) -> tuple[int, int]:
    kinds = Counter(node.op_type for node in model.graph.node)
    return kinds["QuantizeLinear"], kinds["DequantizeLinear"]


def prune_and_check(source: Path, tmp_path: Path, *args: str) -> dict:
    """Prune with the CLI, then replay its plan through the oracle; returns the report."""
    result = onnxprune(
        "prune",
        source,
        "-o",
        "out.onnx",
        "--plan-out",
        "plan.json",
        "--report",
        "report.json",
        "--no-benchmark",
        "--round-to",
        "1",
        *args,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    original, pruned = onnx.load(source), onnx.load(tmp_path / "out.onnx")
    assert qdq_counts(pruned) == qdq_counts(original)
    weights = {name: value for name, value in initializer_arrays(pruned).items() if value.ndim >= 2}
    assert weights and all(value.dtype in (np.int8, np.uint8) for value in weights.values()), {
        name: value.dtype for name, value in weights.items()
    }
    analysed = analyse(original)
    plan = PruningPlan.from_json((tmp_path / "plan.json").read_text())
    assert plan.removed_channels > 0
    assert_prune_matches_oracle(original, plan, analysed=analysed, rtol=1e-5)
    return json.loads((tmp_path / "report.json").read_text())


def test_cli_prunes_a_small_qdq_model(tmp_path):
    source = tmp_path / "qdq.onnx"
    onnx.save(qdq_models.quantize_qdq(qdq_models.residual_net(), tmp_path, per_channel=True), source)
    report = prune_and_check(source, tmp_path, "--ratio", "0.5")
    assert report["macs"]["after"] < report["macs"]["before"]
    assert report["params"]["after"] < report["params"]["before"]


def test_a_qdq_model_keeps_counts_on_the_int8_kernels_step_by_default(tmp_path):
    """x -Conv(64)-Relu-Conv(64)-Relu-Conv(16)-> y, quantized: 'auto' rounds it to the int8 step
    (``workers.latency.channel_step``), which on x86 is 16 where float convs take 8 with AVX2."""
    rng = np.random.default_rng(1)
    feeds = [{"input": rng.standard_normal((1, 16, 8, 8)).astype(np.float32)} for _ in range(4)]
    source = tmp_path / "qdq.onnx"
    onnx.save(qdq_models.quantize_qdq(chain_model(width=64, size=8), tmp_path, per_channel=True, feeds=feeds), source)
    result = onnxprune("prune", source, "-o", "out.onnx", "--ratio", "0.3", "--report", "report.json",
                       "--no-benchmark", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    step, why = channel_step(int8=True)
    assert report["round_to"] == step and report["round_to_source"].startswith(f"auto: {why}")
    kept = [group["channels_after"] for group in report["groups"] if group["channels_before"] == 64]
    assert len(kept) == 2 and all(count < 64 and count % step == 0 for count in kept), kept


@pytest.mark.slow
def test_cli_prunes_the_real_resnet20_quantized_to_qdq(tmp_path, shared_models_dir):
    """The shared ResNet-20 (opset 9) converted to opset 13 and quantized per channel by onnxruntime."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    float13 = tmp_path / "resnet20_13.onnx"
    model = version_converter.convert_version(onnx.load(shared_models_dir / "onnc_resnet20.onnx"), 13)
    onnx.save(model, float13)
    rng = np.random.default_rng(0)
    feeds = [{model.graph.input[0].name: rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self):
            return next(self._feeds, None)

    source = tmp_path / "qdq.onnx"
    quantize_static(str(float13), str(source), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    report = prune_and_check(source, tmp_path, "--flops-target", "0.3")
    assert report["macs"]["after"] <= 0.72 * report["macs"]["before"]


def test_quantize_option_on_a_qdq_model_is_refused_with_one_line(tmp_path):
    """Quantizing a QDQ model again would make an invalid model: a user error (exit 2), before any pruning."""
    source = tmp_path / "qdq.onnx"
    onnx.save(qdq_models.quantize_qdq(qdq_models.residual_net(), tmp_path, per_channel=True), source)
    result = onnxprune(
        "prune", source, "-o", "out.onnx", "--ratio", "0.5", "--quantize", "int8", "--no-benchmark", cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip()
    errors = [line for line in message.splitlines() if not line.startswith("[")]  # progress lines off a TTY
    assert len(errors) == 1 and "already quantized" in errors[0] and "DequantizeLinear" in errors[0]
    assert not (tmp_path / "out.onnx").exists()
