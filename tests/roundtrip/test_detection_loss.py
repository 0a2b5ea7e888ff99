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
from onnxprune.roundtrip.objective import (
    BOX_CONFIDENCE,
    LOGIT_WEIGHT,
    detection_loss,
    make_objective,
    sampled_detection_loss,
    score_logits,
)
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


def test_a_collapsed_score_still_pulls_its_logit_back_towards_the_teachers():
    # The teacher scores anchor 0 at 0.8; the student's score slid to sigmoid(-20) (2e-9), below the clamp
    # a KL on probabilities needs: only the logit-space term still gives a gradient, and upwards.
    logit = torch.tensor(-20.0, dtype=torch.float64, requires_grad=True)
    student = head((50, 50, 20, 20, 0.0, 0.0), (10, 10, 20, 20, 0.01, 0.0))
    student = torch.cat([student[:, :4], torch.stack([torch.sigmoid(logit)[None], student[0, 4, 1:]], 1)[None],
                         student[:, 5:]], 1)  # fmt: skip

    detection_loss(student, TEACHER, LAYOUT).backward()

    teacher_logit = float(np.log(0.8 / 0.2))
    assert -20 < teacher_logit - 1  # the Huber error's linear part: slope -1, over 2 classes, weighted 0.8 / 0.8
    assert float(logit.grad) == pytest.approx(-LOGIT_WEIGHT / 2, rel=1e-3)


def test_score_logits_invert_the_sigmoid_down_to_tiny_scores():
    z = torch.tensor([-25.0, -20.0, -2.0, 0.0, 3.0], dtype=torch.float64)

    assert torch.allclose(score_logits(torch.sigmoid(z)), z, rtol=1e-6)


def test_the_sampled_detection_loss_has_no_expected_gradient_at_the_teacher_and_weighs_uncertain_scores():
    # Student == teacher: drawn labels average to the teacher's scores, so the gradient averages to ~0;
    # its spread is p(1 - p): large where the teacher scores 0.5, tiny where it scores 1e-4 (background).
    teacher = head((50, 50, 20, 20, 0.5, 1e-4), (10, 10, 20, 20, 1e-4, 1e-4))
    logits = score_logits(teacher[:, 4:].clone()).requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    grads = []
    for _ in range(400):
        student = torch.cat([teacher[:, :4], torch.sigmoid(logits)], 1)
        (grad,) = torch.autograd.grad(sampled_detection_loss(student, teacher, LAYOUT, generator), logits)
        grads.append(grad[0])
    grads_ = torch.stack(grads)  # [draws, classes, anchors]

    assert float(grads_.mean(0).abs().max()) < 0.06
    assert float(grads_[:, 0, 0].std()) == pytest.approx(0.5, rel=0.1)
    assert float(grads_[:, 0, 1].std()) < 0.02


def test_the_sampled_detection_loss_moves_no_box_where_the_teacher_sees_background():
    teacher = head((50, 50, 20, 20, 0.8, 0.0), (10, 10, 20, 20, 0.01, 0.0))
    student = teacher.clone().requires_grad_(True)

    (grad,) = torch.autograd.grad(sampled_detection_loss(student, teacher, LAYOUT, torch.Generator()), student)

    assert torch.all(grad[0, :4, 1] == 0) and torch.any(grad[0, :4, 0] != 0)


def test_a_detectors_taylor_scores_come_from_the_detection_sampled_loss():
    model = table_model(ORIGINAL)
    sample = Batch({"images": np.zeros((2, 3, 8, 8), np.float32)}, None, np.arange(2))
    objective = make_objective(model, sample, use_labels=False, detector="auto")
    outputs = objective.teacher_outputs(sample)

    loss = objective.sampled_loss(outputs, sample, outputs, torch.Generator().manual_seed(3))
    expected = sampled_detection_loss(outputs[0], outputs[0], objective.detector, torch.Generator().manual_seed(3))

    assert float(loss) == pytest.approx(float(expected))


def test_the_class_logit_layers_of_a_head_have_one_filter_per_class():
    from onnxprune.roundtrip.reconstruction import score_layers

    model = conv_chain()  # c: 2 filters, b: 4

    assert score_layers(model, {"b", "c"}, classes=2) == {"c"}
    assert score_layers(model, {"b"}, classes=2) == set()


def test_a_heads_refit_rows_include_every_position_the_original_detects():
    from onnxprune.roundtrip.reconstruction import MAX_ROWS, _scored_positions, score_maps

    logits = torch.full((2, 3, 100, 100), -9.0)  # 10,000 positions, 2 samples: 6,000 rows each
    logits[0, 1, 7, 7] = logits[1, 2, 99, 0] = 1.0  # one detection per sample
    maps = score_maps({"cls": logits})

    positions = _scored_positions(maps[(100, 100)], samples=2, seed=0)

    assert positions.shape == (2, MAX_ROWS // 2)
    assert 7 * 100 + 7 in positions[0] and 99 * 100 in positions[1]
    assert all(len(set(row)) == len(row) for row in positions)  # no position twice


def sigmoid_head() -> onnx.ModelProto:
    """images [N, 3, 4, 4] -> Conv 1x1 (3 -> 6) -> Reshape [N, 6, 16] -> Sigmoid -> output0: a YOLO-shaped
    head (4 box values and 2 class scores for 16 anchors, all in [0, 1])."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(size=(6, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "w"], ["conv"], name="head"),
            helper.make_node("Reshape", ["conv", "shape"], ["flat"]),
            helper.make_node("Sigmoid", ["flat"], ["output0"]),
        ],
        "sigmoid_head",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [2, 6, 16])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([2, 6, 16], np.int64), "shape")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_detectors_fine_tuning_step_is_bounded_by_the_gradient_clip():
    from onnxprune.roundtrip.data import Dataset
    from onnxprune.roundtrip.executor import OnnxModule
    from onnxprune.roundtrip.training import DETECTOR_GRAD_NORM, finetune

    images = np.random.default_rng(1).normal(scale=100.0, size=(2, 3, 4, 4)).astype(np.float32)
    data = Dataset({"images": images}, None)
    teacher = sigmoid_head()
    objective = make_objective(teacher, next(data.batches(2)), use_labels=False, detector="auto")
    student = OnnxModule(teacher)
    with torch.no_grad():
        student.tensor("w").mul_(-1.0)  # every score and box on the wrong side of the teacher's
    before = student.tensor("w").detach().clone()
    outputs = student.run({"images": images}, outputs=objective.tensors)
    (gradient,) = torch.autograd.grad(objective.loss(outputs, next(data.batches(2)), objective.teacher_outputs(
        next(data.batches(2)))), [student.named_trainable()["w"]])  # fmt: skip
    # (large inputs: a large gradient on the weight)
    assert float(gradient.norm()) > DETECTOR_GRAD_NORM  # unclipped, one step of lr 1 would move it that far

    finetune(student, objective, data, steps=1, lr=1.0, batch_size=2)

    # Nesterov SGD's first step moves by (1 + momentum) x the (clipped) gradient.
    assert float((student.tensor("w").detach() - before).norm()) <= 1.9 * DETECTOR_GRAD_NORM * 1.0001
