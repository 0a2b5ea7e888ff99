"""The real models in ``../shared/models`` (exported by other people's tools) and what each needs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.support.needs import shared_model
from tests.support.oracle import Analysed, analyse


@dataclass(frozen=True)
class RealModel:
    file: str
    input_shapes: dict[str, list[int]] | None = None
    # Whether some channel group must be prunable (every one of these has plain conv chains).
    expect_prunable: bool = True
    marks: tuple = ()

    def param(self, *marks: pytest.MarkDecorator) -> object:
        """A test case for this model. Every test of one model runs on one xdist worker (``--dist loadgroup``),
        so the model is analysed once (``analysed_real``; light_resnet50 takes ~15 s), not once per worker."""
        group = pytest.mark.xdist_group(f"real-model-{self.file}")
        return pytest.param(self, id=self.file.removesuffix(".onnx"), marks=[*self.marks, *marks, group])


REAL_MODEL_CASES = [
    RealModel("onnc_resnet20.onnx"),
    # Folding its 239 ConstantOfShape weight generators takes ~15 s.
    RealModel("light_resnet50.onnx", marks=(pytest.mark.slow,)),
    RealModel("mediapipe-pytorch_blazeface.onnx"),
    # Symbolic N, H and W: probed at 224x224 (graphops.input_shapes), no --input-shape needed.
    RealModel("paddle_ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    RealModel("pytorch_tutorial_super_resolution.onnx"),
    RealModel("tf2onnx_ai8x_cifar100.onnx", {"input_1:0": [1, 3, 32, 32]}),
    RealModel("ultraface_version-RFB-320.onnx"),
    RealModel("winml_mnist_cntk.onnx"),
    # Only the batch is symbolic: the ConvTranspose output_shape attributes pin the image at 720x720.
    RealModel("winml_style_mosaic.onnx", {"inputImage": [1, 3, 720, 720]}),
    RealModel("yolox_nano.onnx"),
    # Ultralytics YOLOv8n: symbolic height and width (320 in its metadata), C2f blocks (Split + Concat),
    # an anchor-free head whose box and class branches meet in a Concat before the DFL decoding.
    RealModel("nudenet_yolov8n_320.onnx", {"images": [1, 3, 320, 320]}),
]


REAL_MODEL_PARAMS = [case.param() for case in REAL_MODEL_CASES]


# Models whose preprocessing expects raw pixels: standard-normal inputs drive their instance norms
# and box decoders into float32 cancellation, where onnxruntime itself strays from a float64 run.
PIXEL_INPUTS = {"winml_style_mosaic.onnx", "yolox_nano.onnx"}

_ANALYSED: dict[str, Analysed] = {}


def analysed_real(case: RealModel) -> Analysed:
    """Each real model analysed once per test process (folding, shape inference and the dependency graph take
    seconds on the larger ones); the oracle, the executor and the recovery tests all read the same one, and
    none changes it (surgery and the executor work on copies)."""
    if case.file not in _ANALYSED:
        _ANALYSED[case.file] = analyse(shared_model(case.file), case.input_shapes)
    return _ANALYSED[case.file]
