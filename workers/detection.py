"""A detector judged by its detections: does the pruned model still find the original's boxes?

Output cosine says little about a detector (a box 197 px off and a score 0.01 lower weigh the same).
Users read detectors by mAP, so the report gives the pruned model's mAP50 and mAP50-95 with the
**original's detections as ground truth**, on held-out samples: 1.0 when it finds every box the
original finds, at the same place and class, ranked above its own extra boxes. Per image, as
Ultralytics predicts: each anchor keeps its best class, scores above a threshold, class-wise NMS
(IoU 0.7), at most 300 boxes. Ground truth: the original's boxes scoring at least ``confidence``
(0.25, Ultralytics' predict default); the pruned model's boxes down to 0.001 (its validation
default) are ranked by score. AP is COCO's (101-point interpolated precision, IoU 0.5 and 0.5:0.95),
per class, averaged over the classes the original detected.

NMS is onnxruntime's NonMaxSuppression op (``center_point_box`` 1 takes cx, cy, w, h as they come);
AP is pycocotools' COCOeval, the reference implementation, with one area range and 300 detections
per image. Both run where the models' outputs are, in the sandboxed child.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxprune.roundtrip.detector_outputs import BOX_VALUES, YoloLayout, find_yolo_layout

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

GROUND_TRUTH_CONFIDENCE = 0.25  # Ultralytics' predict default: what a user would call a detection
RANKED_CONFIDENCE = 0.001  # Ultralytics' val default: low-score boxes still count for the PR curve
NMS_IOU = 0.7  # Ultralytics' default for predict and val
MAX_DETECTIONS = 300


@dataclass(frozen=True)
class Detections:
    """One image's boxes (x1, y1, x2, y2, input pixels), scores and class indices, best first."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


@cache
def _nms_session() -> InferenceSession:
    """A one-node graph, ours: NonMaxSuppression over ``[1, anchors, 4]`` centre boxes and ``[1, classes, anchors]``."""
    import onnx
    from onnx import TensorProto, helper

    from onnxprune.workers.ort_sessions import cpu_session

    node = helper.make_node(
        "NonMaxSuppression", ["boxes", "scores", "limit", "iou", "threshold"], ["selected"], center_point_box=1
    )
    graph = helper.make_graph(
        [node],
        "class_wise_nms",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, None, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, None, None]),
            helper.make_tensor_value_info("limit", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("threshold", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return cpu_session(model.SerializeToString())


def decode(rows: np.ndarray, confidence: float, *, iou: float = NMS_IOU) -> Detections:
    """One image's ``[anchors, 4 + classes]`` rows to its detections after class-wise NMS."""
    scores = rows[:, BOX_VALUES:]
    best = scores.argmax(axis=1)
    conf = scores[np.arange(len(rows)), best]
    keep = np.flatnonzero(conf >= confidence)
    if not len(keep):
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    centres = rows[keep, :BOX_VALUES].astype(np.float32)
    masked = np.zeros((scores.shape[1], len(keep)), np.float32)  # each anchor scored for its best class only
    masked[best[keep], np.arange(len(keep))] = conf[keep]
    (selected,) = _nms_session().run(
        None,
        {
            "boxes": centres[None],
            "scores": masked[None],
            "limit": np.array([MAX_DETECTIONS], np.int64),
            "iou": np.array([iou], np.float32),
            "threshold": np.array([0.0], np.float32),
        },
    )
    index = selected[:, 2]
    order = np.argsort(-conf[keep][index], kind="stable")[:MAX_DETECTIONS]
    index = index[order]
    cx, cy, w, h = centres[index].T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return Detections(boxes, conf[keep][index].astype(np.float32), best[keep][index].astype(np.int64))


def decode_all(raw: np.ndarray, layout: YoloLayout, confidence: float) -> list[Detections]:
    rows = layout.anchor_major(np.asarray(raw, np.float32))
    return [decode(image, confidence) for image in rows]


def _coco_boxes(boxes: np.ndarray) -> np.ndarray:
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)


def average_precision(
    truth: Sequence[Detections], ranked: Sequence[Detections], classes: int
) -> dict[int, tuple[float, float]]:
    """Per class the original detected: (AP at IoU 0.5, AP over IoU 0.5:0.95), COCO-style.

    ``truth``: the ground-truth boxes per image; ``ranked``: the detections judged, per image.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    annotations: list[dict[str, Any]] = []
    for image, found in enumerate(truth):
        for box, label in zip(_coco_boxes(found.boxes), found.classes):
            w, h = float(box[2]), float(box[3])
            if not (w > 0 and h > 0):  # a degenerate box (a misdeclared output) is nothing to find
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCOeval reads id 0 as "unmatched"
                    "image_id": image,
                    "category_id": int(label) + 1,
                    "bbox": [float(v) for v in box],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    present = sorted({int(a["category_id"]) for a in annotations})
    if not present:
        return {}
    rows = [
        np.column_stack([np.full(len(found.scores), image), _coco_boxes(found.boxes), found.scores, found.classes + 1])
        for image, found in enumerate(ranked)
    ]
    results = np.concatenate(rows) if rows else np.zeros((0, 7))
    if not len(results):
        return {category - 1: (0.0, 0.0) for category in present}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground = COCO()
        ground.dataset = {
            "images": [{"id": image} for image in range(len(truth))],
            "annotations": annotations,
            "categories": [{"id": category} for category in range(1, classes + 1)],
        }
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(results.astype(np.float64)), iouType="bbox")
        evaluation.params.catIds = present
        evaluation.params.areaRng = [[0.0, 1e10]]
        evaluation.params.areaRngLbl = ["all"]
        evaluation.params.maxDets = [MAX_DETECTIONS]
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, :, 0, 0]  # [IoU thresholds, recall points, classes]
    return {  # COCOeval writes -1 for a class with no ground truth it counts: not a class to average
        category - 1: (float(np.mean(precision[0, :, k])), float(np.mean(precision[:, :, k])))
        for k, category in enumerate(present)
        if (precision[:, :, k] >= 0).all()
    }


def detection_agreement(
    reference: np.ndarray, candidate: np.ndarray, layout: YoloLayout, confidence: float = GROUND_TRUTH_CONFIDENCE
) -> dict[str, Any]:
    """mAP50 and mAP50-95 of ``candidate``'s detections against ``reference``'s, per class, as plain data."""
    truth = decode_all(reference, layout, confidence)
    ranked = decode_all(candidate, layout, min(RANKED_CONFIDENCE, confidence))
    kept = [found.scores >= confidence for found in ranked]
    per_class = average_precision(truth, ranked, layout.classes)
    classes: dict[str, dict[str, Any]] = {}
    for label, (ap50, ap50_95) in per_class.items():
        classes[str(label)] = {
            "boxes": sum(int(np.sum(found.classes == label)) for found in truth),
            "detections": sum(int(np.sum(found.classes[k] == label)) for found, k in zip(ranked, kept)),
            "ap50": round(ap50, 6),
            "ap50_95": round(ap50_95, 6),
        }
    return {
        "layout": layout.description,
        "classes": layout.classes,
        "images": len(truth),
        "confidence": confidence,
        "nms_iou": NMS_IOU,
        "reference_boxes": sum(len(found.scores) for found in truth),
        "candidate_boxes": int(sum(int(np.sum(k)) for k in kept)),
        "map50": round(float(np.mean([v[0] for v in per_class.values()])), 6) if per_class else None,
        "map50_95": round(float(np.mean([v[1] for v in per_class.values()])), 6) if per_class else None,
        "per_class": classes,
    }


def find_layout(outputs: Mapping[str, np.ndarray], mode: str) -> tuple[str, YoloLayout] | None:
    """The detection output's name and layout among a model's named outputs, or None."""
    names = list(outputs)
    layout = find_yolo_layout([outputs[name] for name in names], mode)
    return None if layout is None else (names[layout.index], layout)
