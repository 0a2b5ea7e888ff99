"""A detector's head is distilled alone, on the features of the pruned model computed once
(``roundtrip.head_distillation``): the head learns what its drifted inputs now mean, nothing else moves.

    images [N, 3, 16, 16] -> stem conv (8) -> ReLU -> [head: conv 3x3 (8) -> ReLU -> conv 1x1 (4 + 2)]
        -> [N, 6, 64]: boxes sigmoid(xy) * 16, softplus(wh) * 4; classes sigmoid

The "pruned" model is the original with its stem's weights disturbed: the head's inputs drift, as after
pruning the layers before it, and its class scores with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.roundtrip.data import Dataset
from onnxprune.roundtrip.detector_outputs import YoloLayout
from onnxprune.roundtrip.reconstruction import head_layers
from tests.support.detection_models import export_detector
from tests.support.oracle import run_model

torch = pytest.importorskip("torch")

LAYOUT = YoloLayout(index=0, classes=2, anchors_last=True)


class SmallDetector(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, 2, 1)
        self.features = torch.nn.Conv2d(8, 8, 3, 1, 1)
        self.out = torch.nn.Conv2d(8, 6, 1)
        with torch.no_grad():
            self.out.weight *= 4.0  # scores spread across (0, 1)

    def forward(self, images):
        raw = self.out(torch.relu(self.features(torch.relu(self.stem(images))))).flatten(2)
        xy = torch.sigmoid(raw[:, :2]) * 16
        wh = torch.nn.functional.softplus(raw[:, 2:4]) * 4
        return torch.cat([xy, wh, torch.sigmoid(raw[:, 4:])], dim=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    torch.manual_seed(0)
    path = export_detector(SmallDetector(), Path(tmp_path_factory.mktemp("small")) / "small.onnx", 16)
    original = onnx.load(path)
    disturbed = onnx.ModelProto()
    disturbed.CopyFrom(original)
    stem = next(n for n in disturbed.graph.node if n.op_type == "Conv").input[1]
    for init in disturbed.graph.initializer:
        if init.name == stem:
            weight = numpy_helper.to_array(init)
            noise = np.random.default_rng(1).normal(scale=0.5 * weight.std(), size=weight.shape)
            init.CopyFrom(numpy_helper.from_array((weight + noise).astype(np.float32), init.name))
    return original, disturbed


def splits() -> tuple[Dataset, Dataset]:
    rng = np.random.default_rng(0)
    return Dataset({"images": rng.random((48, 3, 16, 16), dtype=np.float32)}, None), Dataset(
        {"images": rng.random((16, 3, 16, 16), dtype=np.float32)}, None
    )


def test_the_head_starts_from_the_first_head_layers_input(models):
    from onnxprune.roundtrip.head_distillation import head_inputs

    model = models[0]
    head = head_layers(model, "output0", depth=2)
    first = [n for n in model.graph.node if n.op_type == "Conv"][1]  # the head's 3x3 conv

    assert head_inputs(model, head) == [first.input[0]]


def test_distilling_the_head_lowers_the_detection_loss_and_changes_only_the_head(models):
    from onnxprune.roundtrip.head_distillation import distil_head
    from onnxprune.roundtrip.objective import detection_loss

    original, disturbed = models
    train, validation = splits()

    def targets(dataset: Dataset) -> torch.Tensor:
        return torch.from_numpy(run_model(original, dataset.inputs)[0])

    head = head_layers(disturbed, "output0", depth=2)
    result = distil_head(disturbed, head, LAYOUT, train, validation, targets, steps=150)

    def loss(model: onnx.ModelProto, dataset: Dataset) -> float:
        out = torch.from_numpy(run_model(model, dataset.inputs)[0])
        return float(detection_loss(out, targets(dataset), LAYOUT))

    assert result.steps == 150 and result.samples == len(train)
    assert result.loss_before is not None and result.loss_after is not None
    assert result.loss_after < 0.8 * result.loss_before
    assert loss(result.model, validation) == pytest.approx(result.loss_after, rel=1e-3)  # what onnxruntime computes
    assert loss(result.model, validation) < loss(disturbed, validation)
    head_weights = {name for node in disturbed.graph.node if node.name in head for name in node.input[1:]}
    before = {init.name: numpy_helper.to_array(init) for init in disturbed.graph.initializer}
    after = {init.name: numpy_helper.to_array(init) for init in result.model.graph.initializer}
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert changed and changed <= head_weights
    onnx.checker.check_model(result.model, full_check=True)


def test_a_deadline_already_past_keeps_the_weights_it_was_given(models):
    from onnxprune.roundtrip.head_distillation import distil_head

    original, disturbed = models
    train, validation = splits()
    wanted = lambda dataset: torch.from_numpy(run_model(original, dataset.inputs)[0])  # noqa: E731

    result = distil_head(
        disturbed, head_layers(disturbed, "output0", 2), LAYOUT, train, validation, wanted, deadline=0.0
    )

    assert result.steps == 0 and result.loss_before is None and result.loss_after is None
    assert [i.raw_data for i in result.model.graph.initializer] == [i.raw_data for i in disturbed.graph.initializer]
