"""A model already quantized (QDQ) cannot take the paths that run the graph in PyTorch (data-driven
scores, reconstruction, fine-tuning): one line says why and what works instead, before any work is
done: exit 2 from the CLI (here), 422 at upload (tests/service/test_upload_validation.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.workers.options import PruneOptions
from onnxprune.workers.precision import QuantizedModelRejected, check_precision
from onnxprune.workers.strategies import round_trip_reason
from tests.support import qdq_models
from tests.support.cli import onnxprune

REFUSED_CASES = [
    # (id, prune flags, the reason the message names); all with --data
    ("taylor", ["--criterion", "taylor", "--ratio", "0.5"], "criterion 'taylor'"),
    ("reconstruction by default", ["--ratio", "0.5"], "layer-wise reconstruction (the default recovery"),
    ("fine-tuning", ["--ratio", "0.5", "--recovery", "finetune", "--finetune-steps", "5"], "fine-tuning"),
    ("time budget", ["--ratio", "0.5", "--recovery", "none", "--time-budget", "30"], "under the time budget"),
]


@pytest.fixture(scope="module")
def qdq_and_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qdq-refusals")
    onnx.save(qdq_models.quantize_qdq(qdq_models.residual_net(), folder, per_channel=True), folder / "qdq.onnx")
    x = np.random.default_rng(0).standard_normal((40, *qdq_models.INPUT_SHAPE[1:])).astype(np.float32)
    np.savez(folder / "data.npz", x=x, labels=np.arange(40) % 10)
    return folder / "qdq.onnx", folder / "data.npz"


@pytest.mark.parametrize("flags, reason", [c[1:] for c in REFUSED_CASES], ids=[c[0] for c in REFUSED_CASES])
def test_the_cli_refuses_a_qdq_model_on_a_pytorch_path_in_one_line(qdq_and_data, tmp_path, flags, reason):
    source, data = qdq_and_data
    done = onnxprune("prune", source, "-o", "out.onnx", "--data", data, "--round-to", "1", *flags, cwd=tmp_path)

    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(errors) == 1 and "already quantized (DequantizeLinear node" in errors[0]
    assert reason in errors[0] and "no integer arithmetic" in errors[0]
    assert "criterion 'l1' or 'l2', recovery 'none'" in errors[0] and "quantize 'int8'" in errors[0]
    assert not any(f"% {stage}" in done.stderr for stage in ("score", "select", "apply"))  # before any work
    assert not (tmp_path / "out.onnx").exists()


def test_what_the_refusal_suggests_works(qdq_and_data, tmp_path):
    source, data = qdq_and_data
    done = onnxprune(
        "prune", source, "-o", "out.onnx", "--data", data, "--round-to", "1", "--ratio", "0.5",
        "--criterion", "l1", "--recovery", "none", "--no-benchmark", cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-2000:]
    assert any(node.op_type == "DequantizeLinear" for node in onnx.load(tmp_path / "out.onnx").graph.node)


def test_the_check_refuses_only_quantized_models_on_pytorch_paths():
    qdq, float_model = qdq_models.per_channel_activation_net(), qdq_models.residual_net()
    taylor = PruneOptions(criterion="taylor", ratio=0.5)

    check_precision(float_model, taylor, has_data=True)  # a float model may take any path
    check_precision(qdq, PruneOptions(ratio=0.5), has_data=False)  # no data: no recovery, l1 scores
    check_precision(qdq, PruneOptions(ratio=0.5, recovery="none"), has_data=True)
    with pytest.raises(QuantizedModelRejected, match="criterion 'taylor' runs the graph in PyTorch"):
        check_precision(qdq, taylor, has_data=True)
    with pytest.raises(QuantizedModelRejected, match="layer-wise reconstruction"):
        check_precision(qdq, taylor, has_data=True, plan_given=True)  # a saved plan: no scores, still recovery
    assert round_trip_reason(taylor.model_copy(update={"recovery": "none"}), has_data=True, plan_given=True) is None
