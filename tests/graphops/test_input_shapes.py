"""Symbolic image sizes: pruned without --input-shape, at a probe size that is chosen and reported.

segmentation-style:  input (1 x 3 x H x W) -> conv (8) -> relu -> conv (8) -> relu -> conv (2) -> output
classifier:          input (1 x 3 x H x W) -> conv (4, stride 2) -> relu -> Flatten -> Gemm (4*8*8 -> 5)
"""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.input_shapes import DEFAULT_PROBE_SIZE, choose_input_shapes
from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import run_pipeline
from tests.support.oracle import analyse, assert_prune_matches_oracle
from tests.support.zoo import GraphBuilder

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")


def _symbolic_input(name: str = "input") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"])


def segmentation_model() -> onnx.ModelProto:
    g = GraphBuilder(3)
    y = g.node("Relu", [g.conv("input", 3, 8)])
    y = g.node("Relu", [g.conv(y, 8, 8)])
    return _with_output(g, [_symbolic_input()], g.conv(y, 8, 2, 1), "segmentation", ["batch", 2, "height", "width"])


def flatten_classifier(features: int = 4 * 8 * 8) -> onnx.ModelProto:
    """Only 16x16 inputs fit its Gemm (4 channels x 8 x 8 after the stride-2 conv)."""
    g = GraphBuilder(4)
    y = g.node("Relu", [g.conv("input", 3, 4, stride=2)])
    flat = g.node("Flatten", [y], axis=1)
    out = g.node("Gemm", [flat, g.random("fc_W", [5, features], 0.1)], transB=1)
    return _with_output(g, [_symbolic_input()], out, "classifier", ["batch", 5])


def _with_output(g: GraphBuilder, inputs, output: str, name: str, shape) -> onnx.ModelProto:
    outputs = [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, shape)]
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_symbolic_spatial_dims_are_probed_at_the_default_size_and_said_so():
    choice = choose_input_shapes(segmentation_model())

    assert choice.shapes == {"input": [1, 3, DEFAULT_PROBE_SIZE, DEFAULT_PROBE_SIZE]}
    assert len(choice.notes) == 1 and "default probe size" in choice.notes[0] and "224" in choice.notes[0]


def test_a_fixed_size_layer_decides_the_probe_size():
    choice = choose_input_shapes(flatten_classifier())

    assert choice.shapes == {"input": [1, 3, 16, 16]}
    assert "every layer's shape is known" in choice.notes[0]


def test_the_models_metadata_decides_the_probe_size():
    model = segmentation_model()
    onnx.helper.set_model_props(model, {"image_size": "[96, 128]"})

    choice = choose_input_shapes(model)

    assert choice.shapes == {"input": [1, 3, 96, 128]}
    assert "metadata 'image_size'" in choice.notes[0]


def test_input_shape_still_overrides_the_probe():
    choice = choose_input_shapes(segmentation_model(), {"input": [2, 3, 40, 60]})

    assert choice.shapes == {"input": [2, 3, 40, 60]} and choice.notes == []


def test_with_data_the_symbolic_dims_are_the_datas_at_batch_1_and_said_so():
    choice = choose_input_shapes(segmentation_model(), from_data={"input": [30, 3, 40, 60]})

    assert choice.shapes == {"input": [1, 3, 40, 60]}
    assert len(choice.notes) == 1 and "1x3x40x60 (the data's arrays, batch 1" in choice.notes[0]


def test_input_shape_wins_over_the_data_and_data_that_does_not_fit_is_left_to_the_loader():
    given = choose_input_shapes(segmentation_model(), {"input": [1, 3, 32, 32]}, {"input": [30, 3, 40, 60]})
    one_channel = choose_input_shapes(segmentation_model(), from_data={"input": [30, 1, 40, 60]})

    assert given.shapes == {"input": [1, 3, 32, 32]} and given.notes == []
    assert one_channel.shapes == {"input": [1, 3, DEFAULT_PROBE_SIZE, DEFAULT_PROBE_SIZE]}  # the loader refuses it
    assert "default probe size" in one_channel.notes[0]


def test_a_model_no_probe_size_fits_asks_for_input_shape():
    model = flatten_classifier(features=4 * 7 * 9)  # no square image fits this Gemm

    with pytest.raises(ModelRejected, match="pass --input-shape input:Nx3xNxN"):
        choose_input_shapes(model)


def test_a_dynamic_size_segmentation_model_prunes_without_input_shape_and_stays_dynamic():
    model = segmentation_model()
    analysed = analyse(model)
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.5)

    result = assert_prune_matches_oracle(model, plan, analysed=analysed)

    assert plan.removed_channels > 0
    dims = result.pruned.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]


def test_the_job_report_says_which_size_was_probed(tmp_path):
    path = tmp_path / "segmentation.onnx"
    onnx.save(segmentation_model(), path)

    result = run_pipeline(path, tmp_path / "out.onnx", PruneOptions(ratio=0.5, benchmark=False, round_to=1))

    assert result.report.input_shapes == {"input": [1, 3, 224, 224]}
    assert any("probe size" in warning for warning in result.report.warnings)
    assert result.report.macs.after < result.report.macs.before
