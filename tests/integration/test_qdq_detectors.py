"""QDQ detectors prune: YOLO-style blocks quantized by onnxruntime satisfy the oracle.

The oracle compares a QDQ model's pruned and masked versions without their activations' rounding
(``graphops.unrounded``): float sums in another order cross QuantizeLinear's rounding boundaries,
and the integer steps that makes spread through the layers after it (on the real QDQ YOLOv8n,
3e-2 of the output without onnxruntime's optimisations) although the surgery is right.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_flops, select_by_ratio
from onnxprune.graphops.unrounded import unrounded_model
from tests.support import qdq_models
from tests.support.needs import SHARED_HINT, shared_dir, shared_model, unavailable
from tests.support.oracle import (
    analyse,
    apply_plan,
    assert_prune_matches_oracle,
    initializer_arrays,
    mask_removed_channels,
    random_feeds,
    relative_error,
    run_model,
)


def op_counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def assert_still_int8(model: onnx.ModelProto) -> None:
    """Every conv weight still comes out of a DequantizeLinear of int8 data."""
    arrays = initializer_arrays(model)
    behind = {node.output[0]: node.input[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    for node in model.graph.node:
        if node.op_type == "Conv":
            data = arrays[behind[node.input[1]]]
            assert data.dtype == np.int8, f"{node.name}: weight stored as {data.dtype}"


@pytest.fixture(scope="module")
def qdq_yolo_block(tmp_path_factory) -> onnx.ModelProto:
    return qdq_models.quantize_qdq(
        qdq_models.yolo_block_net(width=32),
        tmp_path_factory.mktemp("yolo_block"),
        per_channel=True,
        feeds=qdq_models.yolo_calibration_feeds(),
    )


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_qdq_yolo_block_pruned_satisfies_the_oracle(qdq_yolo_block: onnx.ModelProto, ratio: float):
    analysed = analyse(qdq_yolo_block)
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), ratio)
    # The C2f Split halves, the SPPF pool Concat and the neck Concat prune with their producers.
    assert {"c2f_cv1", "sppf_cv1", "fuse", "box1", "cls1"} <= {g for g, keep in plan.keep.items() if keep}
    assert plan.removed_channels > 0

    pruned = assert_prune_matches_oracle(qdq_yolo_block, plan, analysed=analysed).pruned

    assert op_counts(pruned)["QuantizeLinear"] == op_counts(qdq_yolo_block)["QuantizeLinear"]
    assert_still_int8(pruned)


def test_unrounded_model_clamps_where_the_pairs_were():
    """A per-channel activation pair becomes its per-channel clamp; weights stay quantized."""
    model = qdq_models.per_channel_activation_net()
    unrounded = unrounded_model(model)

    assert unrounded is not None
    counts = op_counts(unrounded)
    assert counts["QuantizeLinear"] == 0 and counts["Max"] == counts["Min"] == 1
    assert counts["DequantizeLinear"] == 2  # the two weights'
    arrays = initializer_arrays(model)
    scale, zero = arrays["a_s"].astype(np.float64), arrays["a_z"].astype(np.float64)
    bounds = initializer_arrays(unrounded)
    np.testing.assert_allclose(bounds["c1_dq__low"].ravel(), -zero * scale, rtol=1e-6)
    np.testing.assert_allclose(bounds["c1_dq__high"].ravel(), (255 - zero) * scale, rtol=1e-6)
    assert bounds["c1_dq__low"].shape == (1, 6, 1, 1)
    # Apart from rounding (at most half a step of the coarsest scale per value) it computes what the model does.
    feeds = random_feeds(model, {"x": list(qdq_models.INPUT_SHAPE)})
    quantized, smooth = run_model(model, feeds)[0], run_model(unrounded, feeds)[0]
    assert 0 < relative_error(quantized, smooth) < 0.05


def test_unrounded_oracle_still_catches_a_wrong_activation_scale():
    """Slicing the per-channel activation scales with the wrong channels shows in the clamps."""
    model = qdq_models.per_channel_activation_net()
    analysed = analyse(model)
    keep = [0, 2, 3, 5]
    plan = PruningPlan.from_keep(analysed.dep, {"conv1": keep})
    pruned, masked = apply_plan(analysed.dep, plan), mask_removed_channels(analysed.dep, plan)
    wrong = onnx.ModelProto.FromString(pruned.SerializeToString())
    pair = [node for node in wrong.graph.node if node.name in ("c1_q", "c1_dq")]
    misread = initializer_arrays(model)["a_s"][[1, 2, 3, 4]] / 4  # the wrong channels' scales, clamping sooner
    for init in wrong.graph.initializer:
        if any(init.name == node.input[1] for node in pair):
            init.CopyFrom(onnx.numpy_helper.from_array(misread, init.name))
    feeds = random_feeds(model, {"x": list(qdq_models.INPUT_SHAPE)})
    reference = run_model(unrounded_model(masked), feeds)[0]

    assert relative_error(reference, run_model(unrounded_model(pruned), feeds)[0]) < 1e-5
    assert relative_error(reference, run_model(unrounded_model(wrong), feeds)[0]) > 1e-2


@pytest.mark.slow
def test_quantized_shared_yolov8n_pruned_by_macs_satisfies_the_oracle(tmp_path: Path):
    """The shared YOLOv8n quantized by onnxruntime on 4 real photos, -30% MACs: the masked and pruned
    models differ by 3e-2 when their rounding is compared, by float noise when it is not."""
    photos = shared_dir() / "data" / "imagenet-sample-500"
    if not photos.is_dir():
        unavailable(f"photos not found at {photos}; {SHARED_HINT}")
    path = qdq_models.quantize_detector(shared_model("nudenet_yolov8n_320.onnx"), photos, tmp_path)
    analysed = analyse(path)
    plan = select_by_flops(analysed.dep, score_groups(analysed.dep, "l1"), 0.3, round_to=8)

    pruned = assert_prune_matches_oracle(analysed.original, plan, analysed=analysed).pruned

    assert_still_int8(pruned)


def test_unrounded_model_of_unnamed_nodes_is_valid():
    """Exporters may leave nodes unnamed: the clamps are named after the tensors they produce."""
    model = qdq_models.per_channel_activation_net()
    for node in model.graph.node:
        node.name = ""
    feeds = random_feeds(model, {"x": list(qdq_models.INPUT_SHAPE)})

    unrounded = unrounded_model(model)

    assert unrounded is not None
    onnx.checker.check_model(unrounded, full_check=True)
    assert relative_error(run_model(model, feeds)[0], run_model(unrounded, feeds)[0]) < 0.05
