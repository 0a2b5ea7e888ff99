"""A detector is judged by its detections: mAP against the original's boxes, COCO-style.

The models here are YOLO-shaped tables: the output ``[N, 4 + classes, anchors]`` is a constant
(boxes cx, cy, w, h and class scores per anchor) that does not depend on the input, so the
original's detections are known exactly and a second table with moved boxes gives a drop that can
be computed by hand.

    images [N, 3, 8, 8] --ReduceMean, Reshape--> [N, 1, 1] --*0--> + table [1, 4 + C, A] --> output0 [N, 4 + C, A]
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.graphops.errors import ModelRejected
from onnxprune.roundtrip.data import Dataset
from onnxprune.roundtrip.detector_outputs import YoloLayout, find_yolo_layout, yolo_shaped_output
from onnxprune.workers.evaluation import held_out_evaluation
from onnxprune.workers.quality_warnings import quality_warnings
from onnxprune.workers.report import DetectionAgreement, HeldOutEvaluation
from tests.support.detection_models import ORIGINAL, table_model

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")

CLASSES = 2


def shifted(dx_per_anchor: list[float]) -> list[tuple[float, ...]]:
    return [(cx + dx, *rest) for (cx, *rest), dx in zip(ORIGINAL, dx_per_anchor)]


def evaluate(tmp_path, candidate_rows, *, anchors_last: bool = True, detector: str = "auto") -> HeldOutEvaluation:
    original, candidate = tmp_path / "original.onnx", tmp_path / "candidate.onnx"
    onnx.save(table_model(ORIGINAL, anchors_last=anchors_last), original)
    onnx.save(table_model(candidate_rows, anchors_last=anchors_last), candidate)
    images = np.random.default_rng(0).uniform(0, 1, (3, 3, 8, 8)).astype(np.float32)
    return held_out_evaluation(original, candidate, Dataset({"images": images}, None), split="all", detector=detector)


@pytest.mark.parametrize("anchors_last", [True, False], ids=["[N, 4+C, A]", "[N, A, 4+C]"])
def test_the_original_against_itself_has_map_one_on_every_class(tmp_path, anchors_last):
    found = evaluate(tmp_path, ORIGINAL, anchors_last=anchors_last).detections

    assert found is not None and found.classes == CLASSES and found.images == 3
    assert found.reference_boxes == found.candidate_boxes == 9  # P, Q and R on each of 3 images
    assert found.map50 == pytest.approx(1.0) and found.map50_95 == pytest.approx(1.0)
    assert {k: (c.boxes, c.ap50) for k, c in found.per_class.items()} == {"0": (6, 1.0), "1": (3, 1.0)}


def test_moved_boxes_lose_exactly_the_iou_thresholds_they_fall_below(tmp_path):
    # P moves 20 px: IoU (100 - 20) / (100 + 20) = 2/3, a match at IoU 0.5 ... 0.65 (4 of COCO's 10 thresholds).
    # Q moves 50 px: IoU 50 / 150 = 1/3, never a match. R stays.
    # Class 0, two true boxes: P ranks first (0.9 > 0.8), so precision is 1 up to recall 0.5 and recall
    # never reaches 1; COCO's 101-point interpolation reads precision 1 at recall 0, 0.01, ..., 0.50: 51/101.
    found = evaluate(tmp_path, shifted([20, 50] + [0] * 7)).detections
    class0_ap50 = 51 / 101

    assert found is not None
    assert found.per_class["0"].ap50 == pytest.approx(class0_ap50, abs=1e-6)
    assert found.per_class["0"].ap50_95 == pytest.approx(0.4 * class0_ap50, abs=1e-6)
    assert found.per_class["1"].ap50 == pytest.approx(1.0) and found.per_class["1"].ap50_95 == pytest.approx(1.0)
    assert found.map50 == pytest.approx((class0_ap50 + 1) / 2, abs=1e-6)
    assert found.map50_95 == pytest.approx((0.4 * class0_ap50 + 1) / 2, abs=1e-6)


def test_a_detection_lost_below_the_confidence_is_a_miss_and_counted(tmp_path):
    rows = [row if i != 2 else (*row[:4], 0.0, 0.0) for i, row in enumerate(ORIGINAL)]  # R no longer scores

    found = evaluate(tmp_path, rows).detections

    assert found is not None and found.candidate_boxes == 6 and found.per_class["1"].ap50 == 0.0
    assert found.map50 == pytest.approx(0.5)


def test_a_degenerate_reference_box_is_not_ground_truth_and_map_stays_within_0_and_1(tmp_path):
    """A misdeclared output (``--detector yolo`` on values that are not boxes) can give a negative width;
    COCOeval would count no ground truth for that class and write -1, which averaged in made mAP < 0."""
    rows = [row if i != 2 else (row[0], row[1], -100.0, *row[3:]) for i, row in enumerate(ORIGINAL)]  # R: w < 0
    original, candidate = tmp_path / "original.onnx", tmp_path / "candidate.onnx"
    onnx.save(table_model(rows), original)
    onnx.save(table_model(rows), candidate)
    images = np.random.default_rng(0).uniform(0, 1, (3, 3, 8, 8)).astype(np.float32)

    found = held_out_evaluation(original, candidate, Dataset({"images": images}, None), split="all", detector="yolo")

    assert found.detections is not None and set(found.detections.per_class) == {"0"}
    assert found.detections.map50 == pytest.approx(1.0)


def test_detector_none_judges_outputs_only(tmp_path):
    assert evaluate(tmp_path, ORIGINAL, detector="none").detections is None


def test_auto_leaves_a_3d_output_that_is_not_a_detectors_alone():
    rng = np.random.default_rng(0)
    hidden_states = rng.normal(size=(2, 16, 64)).astype(np.float32)  # negative "scores": not sigmoid outputs

    assert find_yolo_layout([hidden_states], "auto") is None
    assert find_yolo_layout([hidden_states], "yolo") == YoloLayout(0, 12, anchors_last=True)


def test_declaring_yolo_on_a_model_without_such_an_output_is_a_clear_error():
    with pytest.raises(ModelRejected, match=r"--detector yolo: no output has the YOLO layout.*\[2, 10\]"):
        find_yolo_layout([np.zeros((2, 10), np.float32)], "yolo")


# Graph output shapes (before anything runs) -> the output a YOLO head could be, per --detector mode.
SHAPE_CASES = [
    ([(1, 22, 2100)], "auto", YoloLayout(0, 18, anchors_last=True)),
    ([(1, 1000), (1, 2100, 22)], "yolo", YoloLayout(1, 18, anchors_last=False)),
    ([(1, 22, 2100)], "none", None),
    ([(1, 1000)], "auto", None),
    ([(1, "n", 2100)], "yolo", None),  # not known before running: judged on the outputs later
]


@pytest.mark.parametrize(("shapes", "mode", "expected"), SHAPE_CASES)
def test_the_output_shapes_say_which_output_could_be_a_yolo_head(shapes, mode, expected):
    assert yolo_shaped_output(shapes, mode) == expected


def test_declaring_yolo_when_every_output_shape_is_known_and_none_fits_is_refused_before_running():
    with pytest.raises(ModelRejected, match=r"--detector yolo: no output has the YOLO layout.*\[1, 2, 4, 4\]"):
        yolo_shaped_output([(1, 2, 4, 4)], "yolo")


def agreement(map50: float | None) -> DetectionAgreement:
    return DetectionAgreement(
        output="output0",
        layout="YOLO",
        classes=2,
        images=50,
        confidence=0.25,
        nms_iou=0.7,
        reference_boxes=40,
        candidate_boxes=31,
        map50=map50,
        map50_95=None if map50 is None else map50 / 2,
    )


@pytest.mark.parametrize(
    ("map50", "expected"),
    [(0.95, None), (0.62, "mAP50 0.6200 (< 0.9; 40 boxes of the original, 31 of the pruned"), (None, "no detection")],
)
def test_the_fidelity_warning_judges_a_detector_by_its_map(map50, expected):
    # A cosine drop of 0.05 would warn a non-detector; a detector is judged by its detections instead.
    evaluation = HeldOutEvaluation(
        metric="fidelity", source="original outputs", samples=50, split="every fifth", before=1.0, after=0.95
    ).model_copy(update={"detections": agreement(map50)})

    notes = quality_warnings(None, evaluation, data_given=True, recovered=True, max_drop=None)

    assert notes == [] if expected is None else (len(notes) == 1 and expected in notes[0])


def test_the_cli_line_reads_like_an_accuracy_line():
    from onnxprune.service.cli import _detection_row

    assert _detection_row(agreement(0.62)) == (
        "detections mAP50 (held out)",
        "1.0000",
        "0.6200 (50-95 0.3100)",
        "40 -> 31 boxes",
    )
    assert _detection_row(agreement(None))[2] == "original found none"


def test_the_probes_detection_loss_is_zero_on_the_original_and_weighs_a_moved_box_by_its_score(tmp_path):
    from onnxprune.workers.evaluation import make_evaluator

    paths = []
    for name, rows in {"same": ORIGINAL, "moved": shifted([20] + [0] * 8)}.items():
        onnx.save(table_model(rows), tmp_path / f"{name}.onnx")
        paths.append(tmp_path / f"{name}.onnx")
    images = np.random.default_rng(0).uniform(0, 1, (3, 3, 8, 8)).astype(np.float32)
    evaluator = make_evaluator(paths[0], Dataset({"images": images}, None))

    same, moved = evaluator.detection_losses(paths, "auto")
    # P (score 0.9) moved 20 px of its 100: L1 0.2, weighted by 0.9 over the detecting scores 0.9 + 0.8 + 0.7.
    assert same == pytest.approx(0.0, abs=1e-7) and moved == pytest.approx(0.9 * 0.2 / 2.4, rel=1e-5)
    assert evaluator.detection_losses(paths, "none") == [None, None]
