"""YOLO-shaped detection tables: a detector whose detections are known exactly (they do not depend on
the input), so a drop in mAP can be computed by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Anchors: (cx, cy, w, h, score of class 0, score of class 1). Boxes are 100 x 100, far apart (no NMS
# between them); the last anchors are background (scores below every threshold).
ORIGINAL = [
    (100, 100, 100, 100, 0.9, 0.0),  # P, class 0
    (400, 100, 100, 100, 0.8, 0.0),  # Q, class 0
    (100, 400, 100, 100, 0.0, 0.7),  # R, class 1
    (400, 400, 100, 100, 0.0, 0.0),
    (250, 250, 30, 30, 0.0001, 0.0),
    *[(250, 250, 30, 30, 0.0, 0.0)] * 4,  # a detector has more anchors than values per anchor
]


def table_model(rows: list[tuple[float, ...]], *, anchors_last: bool = True) -> onnx.ModelProto:
    table = np.array(rows, np.float32).T[None]  # [1, 4 + C, A]
    if not anchors_last:
        table = table.transpose(0, 2, 1)
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["means"], keepdims=1, axes=[1, 2, 3]),
        helper.make_node("Reshape", ["means", "per_sample"], ["mean"]),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "table"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "yolo_table",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", *table.shape[1:]])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "zero"),
            numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "per_sample"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def export_detector(module: object, path: Path, side: int) -> Path:
    """A torch detector exported as Ultralytics does: input ``images`` [N, 3, side, side], output ``output0``,
    batch symbolic (torch is imported here: the table models above need none)."""
    import torch

    torch.onnx.export(
        module.eval(),  # type: ignore[attr-defined]
        (torch.zeros(1, 3, side, side),),
        str(path),
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes={"images": {0: "N"}, "output0": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    return path
