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
from tests.support.detection_models import export_detector

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
    export_detector(TinyDetector(), path, 32)
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


def test_without_data_the_report_says_the_detections_were_not_checked_and_how_to_check_them(detector, tmp_path):
    result = onnxprune(
        "prune", detector, "-o", "out.onnx", "--ratio", "0.5", "--no-benchmark", "--report", "report.json",
        cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["evaluation"] is None
    (note,) = [w for w in report["warnings"] if w.startswith("detections not checked")]
    assert "'output0'" in note and "--data" in note and "mAP50" in note
    assert "detections not checked" in result.stdout + result.stderr


def test_without_data_and_detector_none_there_is_no_detection_note(detector, tmp_path):
    result = onnxprune(
        "prune", detector, "-o", "out.onnx", "--ratio", "0.5", "--no-benchmark", "--report", "report.json",
        "--detector", "none", cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert not [w for w in json.loads((tmp_path / "report.json").read_text())["warnings"] if "detections" in w]


def test_declaring_yolo_on_a_model_without_a_yolo_output_fails_at_once_in_one_line(tmp_path):
    model = tmp_path / "classifier.onnx"
    torch.onnx.export(
        torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1)).eval(),
        (torch.zeros(1, 3, 6, 6),),
        str(model),
        input_names=["images"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
    )  # one output [1, 2, 4, 4]: 4-D, no YOLO layout

    result = onnxprune("prune", model, "-o", "out.onnx", "--ratio", "0.5", "--detector", "yolo", cwd=tmp_path)

    assert result.returncode == 2
    *progress, error = result.stderr.strip().splitlines()  # progress lines, then one error line
    assert error.startswith("error: --detector yolo: no output has the YOLO layout"), result.stderr
    assert "(outputs: [1, 2, 4, 4])" in error
    assert progress[-1].endswith("analyze")  # refused right after the analysis, before any scoring
    assert not (tmp_path / "out.onnx").exists()
