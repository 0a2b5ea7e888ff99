"""Recovery distils a detector for its detections: boxes where the original is confident, scores everywhere.

Two anchors in the YOLO layout ``[batch, 4 + classes, anchors]``: anchor 0 is a detection (class 0 at
0.8, a 20 x 20 box), anchor 1 is background (best score 0.01, under BOX_CONFIDENCE).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from onnxprune.roundtrip.data import Batch
from onnxprune.roundtrip.detector_outputs import YoloLayout
from onnxprune.roundtrip.objective import BOX_CONFIDENCE, detection_loss, make_objective
from tests.support.detection_models import ORIGINAL, table_model

LAYOUT = YoloLayout(index=0, classes=2, anchors_last=True)


def head(anchor0: tuple[float, ...], anchor1: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor([anchor0, anchor1], dtype=torch.float64).T[None]  # [1, 6, 2]


TEACHER = head((50, 50, 20, 20, 0.8, 0.0), (10, 10, 20, 20, 0.01, 0.0))


def test_a_student_equal_to_the_teacher_has_no_box_loss_and_the_scores_minimum():
    assert float(detection_loss(TEACHER.clone(), TEACHER, LAYOUT)) == pytest.approx(0.0, abs=1e-9)


def test_box_error_counts_where_the_teacher_detects_weighted_by_its_confidence():
    # cx 2 px off on a 20 px box: L1 relative to the box's size is 0.1, weighted 0.8 / 0.8 (the only
    # anchor above BOX_CONFIDENCE).
    student = head((52, 50, 20, 20, 0.8, 0.0), (10, 10, 20, 20, 0.01, 0.0))

    assert float(detection_loss(student, TEACHER, LAYOUT)) == pytest.approx(0.1, abs=1e-9)


def test_box_error_where_the_teacher_sees_background_costs_nothing():
    assert 0.01 < BOX_CONFIDENCE
    student = head((50, 50, 20, 20, 0.8, 0.0), (90, -40, 300, 1, 0.01, 0.0))

    assert float(detection_loss(student, TEACHER, LAYOUT)) == pytest.approx(0.0, abs=1e-9)


def test_a_background_anchor_that_starts_scoring_costs_its_bernoulli_divergence():
    student = head((50, 50, 20, 20, 0.8, 0.0), (10, 10, 20, 20, 0.5, 0.0))
    t, s = 0.01, 0.5
    divergence = t * np.log(t / s) + (1 - t) * np.log((1 - t) / (1 - s))

    # Per unit of the teacher's total score (clamped to at least 1): 0.81 -> 1.
    assert float(detection_loss(student, TEACHER, LAYOUT)) == pytest.approx(divergence, rel=1e-4)


def test_the_transposed_layout_gives_the_same_loss():
    student = head((52, 50, 20, 20, 0.8, 0.0), (10, 10, 20, 20, 0.3, 0.0))
    transposed = YoloLayout(index=0, classes=2, anchors_last=False)

    expected = detection_loss(student, TEACHER, LAYOUT)
    assert float(detection_loss(student.transpose(1, 2), TEACHER.transpose(1, 2), transposed)) == pytest.approx(
        float(expected)
    )


@pytest.mark.parametrize(("mode", "recognised"), [("auto", True), ("yolo", True), ("none", False)])
def test_the_objective_distils_a_recognised_detector_with_the_detection_loss(mode, recognised):
    model = table_model(ORIGINAL)
    onnx.checker.check_model(model)
    sample = Batch({"images": np.zeros((2, 3, 8, 8), np.float32)}, None, np.arange(2))

    objective = make_objective(model, sample, use_labels=False, detector=mode)

    assert (objective.detector == YoloLayout(0, 2, anchors_last=True)) is recognised
    teacher = objective.teacher_outputs(sample)
    moved = teacher[0].clone()
    moved[:, 0, 0] += 10  # anchor 0's cx 10 px off (a 100 px box, score 0.9)
    loss = float(objective.loss([moved], sample, teacher))
    if recognised:
        assert loss == pytest.approx(0.1 * 0.9 / (0.9 + 0.8 + 0.7), rel=1e-5)  # weighted over P, Q, R
    else:
        assert loss > 0


def conv_chain() -> onnx.ModelProto:
    """x -> Conv a -> Relu -> Conv b -> Relu -> Conv c -> Sigmoid -> y (3 -> 4 -> 4 -> 2 channels)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shapes = {"a": (4, 3, 1, 1), "b": (4, 4, 1, 1), "c": (2, 4, 1, 1)}
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), f"w_{n}") for n, s in shapes.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w_a"], ["ya"], name="a"),
        helper.make_node("Relu", ["ya"], ["ra"]),
        helper.make_node("Conv", ["ra", "w_b"], ["yb"], name="b"),
        helper.make_node("Relu", ["yb"], ["rb"]),
        helper.make_node("Conv", ["rb", "w_c"], ["yc"], name="c"),
        helper.make_node("Sigmoid", ["yc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_the_head_is_the_last_linear_layers_before_the_detection_output():
    from onnxprune.roundtrip.reconstruction import head_layers

    model = conv_chain()

    assert head_layers(model, "y", depth=1) == {"c"}
    assert head_layers(model, "y", depth=2) == {"c", "b"}
    assert head_layers(model, "y", depth=5) == {"c", "b", "a"}


def test_head_layers_are_refit_although_they_lost_no_input_channel():
    from onnxprune.roundtrip.reconstruction import layers_to_refit

    model = conv_chain()
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    weights = {init.name: init for init in pruned.graph.initializer}
    # a keeps 3 of its 4 filters, so b loses an input channel; c loses none.
    weights["w_a"].CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weights["w_a"])[:3], "w_a"))
    weights["w_b"].CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weights["w_b"])[:, :3], "w_b"))

    assert [n.name for n in layers_to_refit(model, pruned)[0]] == ["b"]
    assert [n.name for n in layers_to_refit(model, pruned, also={"c"})[0]] == ["b", "c"]
