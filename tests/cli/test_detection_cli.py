"""A detector through the CLI with a folder of photos: pruned, recovered, and judged by its detections.

A tiny YOLO-style detector (two strided convs and a 1x1 head over an 8 x 8 grid, 64 anchors):

    images [N, 3, 32, 32] -> Conv s2 -> ReLU -> Conv s2 -> ReLU -> Conv 1x1 (4 + 2) -> [N, 6, 64]
        -> boxes: sigmoid(xy) * 32, softplus(wh) * 8; classes: sigmoid -> Concat -> output0 [N, 6, 64]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.cli import onnxprune

torch = pytest.importorskip("torch")


class TinyDetector(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, 2, 1), torch.nn.ReLU()
        )
        self.head = torch.nn.Conv2d(16, 6, 1)

    def forward(self, images):
        raw = self.head(self.body(images)).flatten(2)
        xy = torch.sigmoid(raw[:, :2]) * 32
        wh = torch.nn.functional.softplus(raw[:, 2:4]) * 8
        return torch.cat([xy, wh, torch.sigmoid(raw[:, 4:])], dim=1)


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("detector") / "tiny_yolo.onnx"
    torch.onnx.export(
        TinyDetector().eval(),
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes={"images": {0: "N"}, "output0": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def test_a_folder_of_photos_prunes_recovers_and_judges_a_detector(detector, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(10):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(photos / f"{index}.jpg")

    result = onnxprune(
        "prune", detector, "-o", "out.onnx", "--ratio", "0.5", "--data", photos, "--finetune-steps", "2",
        "--detection-confidence", "0.05", "--no-benchmark", "--report", "report.json", "--report-html", "page.html",
        cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    found = json.loads((tmp_path / "report.json").read_text())["evaluation"]["detections"]
    assert found["output"] == "output0" and found["classes"] == 2 and found["images"] == 2
    assert found["reference_boxes"] > 0 and 0.0 <= found["map50"] <= 1.0
    assert 0.0 <= found["after_pruning_map50"] <= 1.0  # the pruned weights before fine-tuning
    assert "detections mAP50 (held out)" in result.stdout
    assert "Detections vs the original" in (tmp_path / "page.html").read_text()
