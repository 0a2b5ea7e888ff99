"""Which output is a YOLO head before anything runs: the shape, and for 'auto' the graph's Sigmoid."""

from __future__ import annotations

import onnx
import pytest

from onnxprune.roundtrip.detector_outputs import scores_from_sigmoid
from onnxprune.workers.analysis import analyse_model, detector_output
from tests.support.needs import shared_model
from tests.support.qdq_models import yolo_block_net
from tests.support.transformer_models import minilm_path


@pytest.mark.parametrize("file", ["nudenet_yolov8n_320.onnx", "yolox_nano.onnx"])
def test_real_yolo_exports_have_sigmoid_scores_behind_their_output(file):
    model = onnx.load(shared_model(file), load_external_data=False)

    assert scores_from_sigmoid(model.graph, model.graph.output[0].name)


def test_a_yolo_head_reshaped_after_its_concat_is_still_recognised():
    model = yolo_block_net()

    assert scores_from_sigmoid(model.graph, model.graph.output[0].name)


def test_a_transformers_hidden_states_are_not_taken_for_a_detector_by_auto():
    """[1, 128, 384] has a YOLO head's shape (more 'anchors' than values); no Sigmoid made it."""
    analysis = analyse_model(minilm_path(), {"input_ids": [1, 128], "attention_mask": [1, 128]})

    assert detector_output(analysis, "auto") is None
    assert detector_output(analysis, "yolo") is not None  # declared: the shape is enough
