"""Which output of a model holds YOLO-style detections, and in which layout (numpy only).

Ultralytics exports (YOLOv8, YOLO11) write one output ``[batch, 4 + classes, anchors]``: per anchor a
box (centre x, centre y, width, height, in input pixels) and one sigmoid score per class, no
objectness; some converters transpose it to ``[batch, anchors, 4 + classes]``. Both the report
(``workers.detection``: agreement of detections) and recovery (``roundtrip.objective``: distillation
weighted by the teacher's confidence) need to know which output that is. ``auto`` recognises it from
the original's outputs: a 3-D float output with more anchors than channels, class scores within
[0, 1] and no negative width or height; ``yolo`` declares it and checks the shape only. Before
anything runs (no values yet), ``auto`` asks the graph instead: the output must be a YOLO shape whose
scores come from a Sigmoid through data movement only (:func:`scores_from_sigmoid`), so a transformer's
``[batch, tokens, hidden]`` output is not taken for one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.graphops.errors import ModelRejected

DETECTOR_MODES = ("auto", "yolo", "none")
BOX_VALUES = 4  # cx, cy, w, h
_SCORE_SLACK = 1e-4  # sigmoid scores computed in float32 may round a hair outside [0, 1]


@dataclass(frozen=True)
class YoloLayout:
    """Output ``index`` holds ``classes`` class scores after 4 box values; ``anchors_last``:
    ``[batch, 4 + classes, anchors]`` (Ultralytics), else ``[batch, anchors, 4 + classes]``."""

    index: int
    classes: int
    anchors_last: bool

    @property
    def description(self) -> str:
        shape = "[batch, 4 + classes, anchors]" if self.anchors_last else "[batch, anchors, 4 + classes]"
        return f"YOLO {shape}, {self.classes} classes, boxes cx, cy, w, h"

    def anchor_major(self, raw: np.ndarray) -> np.ndarray:
        """``[batch, anchors, 4 + classes]``, whichever layout ``raw`` came in."""
        return np.swapaxes(raw, 1, 2) if self.anchors_last else raw


def _shape_layout(index: int, shape: Sequence[int]) -> YoloLayout | None:
    if len(shape) != 3:
        return None
    channels_axis_1, channels_axis_2 = shape[1], shape[2]
    if BOX_VALUES < channels_axis_1 < channels_axis_2:
        return YoloLayout(index, channels_axis_1 - BOX_VALUES, anchors_last=True)
    if BOX_VALUES < channels_axis_2 < channels_axis_1:
        return YoloLayout(index, channels_axis_2 - BOX_VALUES, anchors_last=False)
    return None


def _values_fit(layout: YoloLayout, raw: np.ndarray) -> bool:
    rows = layout.anchor_major(raw)
    sizes, scores = rows[..., 2:BOX_VALUES], rows[..., BOX_VALUES:]
    return bool(
        np.isfinite(rows).all()
        and sizes.min() >= 0
        and scores.min() >= -_SCORE_SLACK
        and scores.max() <= 1 + _SCORE_SLACK
    )


def _refusal(shapes: Sequence[Sequence[object]]) -> ModelRejected:
    return ModelRejected(
        f"--detector yolo: no output has the YOLO layout [batch, 4 + classes, anchors] or "
        f"[batch, anchors, 4 + classes] (outputs: {', '.join(str(list(s)) for s in shapes)})"
    )


def yolo_shaped_output(shapes: Sequence[Sequence[int | str | None] | None], mode: str) -> YoloLayout | None:
    """From the graph's output shapes alone (before anything runs): the first output a YOLO head could
    be, or None. ``mode`` 'yolo' refuses a model none of whose outputs can be one (every shape known and
    none of the layout), so a wrong declaration fails in seconds rather than after pruning."""
    if mode not in DETECTOR_MODES:
        raise ValueError(f"detector mode {mode!r} is not one of {DETECTOR_MODES}")
    if mode == "none":
        return None
    known = True
    for index, shape in enumerate(shapes):
        if shape is None or not all(isinstance(d, int) for d in shape):
            known = False
            continue
        layout = _shape_layout(index, [int(d) for d in shape])  # type: ignore[arg-type]
        if layout is not None:
            return layout
    if mode == "yolo" and known:
        raise _refusal([s for s in shapes if s is not None])
    return None


def find_yolo_layout(outputs: Sequence[np.ndarray], mode: str) -> YoloLayout | None:
    """The detection output among ``outputs`` (the original's, on real samples), or None.

    ``mode`` 'none' never finds one; 'yolo' takes the first output of a YOLO shape and refuses a
    model without one; 'auto' also checks the values (an unrelated 3-D output is not a detector).
    """
    if mode not in DETECTOR_MODES:
        raise ValueError(f"detector mode {mode!r} is not one of {DETECTOR_MODES}")
    if mode == "none":
        return None
    for index, raw in enumerate(outputs):
        array = np.asarray(raw)
        if not np.issubdtype(array.dtype, np.floating):
            continue
        layout = _shape_layout(index, array.shape)
        if layout is not None and (mode == "yolo" or _values_fit(layout, array)):
            return layout
    if mode == "yolo":
        raise _refusal([np.shape(raw) for raw in outputs])
    return None


# Ops that only move, join or relabel values: a score passing through them is still a sigmoid's.
_DATA_MOVEMENT = frozenset({"Concat", "Reshape", "Transpose", "Identity", "Flatten", "Squeeze", "Unsqueeze", "Split"})
_SIGMOID_SEARCH_DEPTH = 8


def scores_from_sigmoid(graph: onnx.GraphProto, output: str) -> bool:
    """Whether ``output`` is made, through data movement only, from a Concat (of boxes and scores)
    one of whose parts a Sigmoid computes, within a few ops: the graph's own word that some of the
    values are probabilities, where no value has been computed yet. YOLOv8/11 end in
    ``Concat(boxes, Sigmoid(classes))``, YOLOX in ``Transpose(Concat(Reshape(Concat(box, Sigmoid,
    Sigmoid))))``; a transformer's last LayerNormalization or Add is neither."""
    producers = {name: node for node in graph.node for name in node.output}
    frontier, seen, joined = [output], {output}, False
    for _ in range(_SIGMOID_SEARCH_DEPTH):
        parents: list[str] = []
        for name in frontier:
            node = producers.get(name)
            if node is None:
                continue
            if node.op_type == "Sigmoid" and joined:
                return True
            if node.op_type not in _DATA_MOVEMENT:
                continue
            joined = joined or node.op_type == "Concat"
            parents.extend(_unseen(node.input, seen))
        frontier = parents
    return False


def _unseen(names: Iterable[str], seen: set[str]) -> list[str]:
    fresh = [name for name in names if name and name not in seen]
    seen.update(fresh)
    return fresh
