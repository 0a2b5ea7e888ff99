"""Loading and static validation of untrusted models: what is refused, and with which message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.loading import (
    ValidationLimits,
    load_model,
    parse_model,
    validate_model,
)
from onnxprune.graphops.versions import supported_ir_versions, supported_opsets
from tests.support.needs import shared_model
from tests.support.real_models import REAL_MODEL_CASES


def conv_model(extra_nodes=(), extra_inits=(), opset: int = 13, elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv(w[4,3,3,3]) -> y, plus whatever a test adds."""
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")] + list(extra_nodes)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", elem_type, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", elem_type, None)],
        initializer=[weight, *extra_inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def rejected(model: onnx.ModelProto, limits: ValidationLimits | None = None) -> str:
    with pytest.raises(ModelRejected) as info:
        validate_model(model, limits or ValidationLimits())
    message = str(info.value)
    assert "\n" not in message
    return message


def int64(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def scalar(name: str, value: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.int64), name)


# ---- load_model -------------------------------------------------------------------------------


def test_a_valid_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(conv_model(), path)
    assert load_model(path).graph.node[0].name == "conv"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "model file is empty"),
        (bytes(range(256)) * 8, "not an ONNX model"),
        (b"hello, this is a text file\n" * 10, "not an ONNX model"),
        (helper.make_graph([], "g", [], []).SerializeToString() + b"\x00", "not an ONNX model"),
    ],
    ids=["empty", "random-bytes", "text", "graph-not-model"],
)
def test_files_that_are_not_models_are_rejected(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelRejected, match=reason):
        load_model(path)


def test_a_truncated_model_is_reported_as_truncated(tmp_path: Path) -> None:
    data = conv_model().SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelRejected, match="truncated or corrupt"):
        load_model(path)


def test_external_data_is_refused_without_opening_the_path(tmp_path: Path) -> None:
    model = conv_model()
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../etc/passwd")
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelRejected, match="tensor 'w' .* external file; only single-file models"):
        load_model(path)


def test_files_over_max_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(conv_model(), path)
    with pytest.raises(ModelRejected, match="more than the limit of 100 bytes"):
        load_model(path, max_bytes=100)
    assert load_model(path, max_bytes=path.stat().st_size).graph.node


# ---- validate_model: tensors ------------------------------------------------------------------


def test_a_plain_conv_model_is_valid() -> None:
    validate_model(conv_model())


def test_an_initializer_declaring_more_elements_than_it_holds_is_rejected() -> None:
    huge = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[10**6, 10**6])
    assert "tensor 'huge' (initializer) declares" in rejected(conv_model(extra_inits=[huge]))
    short = TensorProto(name="short", data_type=TensorProto.FLOAT, dims=[4], raw_data=b"\x00" * 8)
    message = rejected(conv_model(extra_inits=[short]))
    assert message == (
        "tensor 'short' (initializer) declares dims [4] (4 float elements) but holds 8 bytes of raw data"
    )
    typed = TensorProto(name="typed", data_type=TensorProto.INT64, dims=[3], int64_data=[1, 2])
    assert "holds 2 values in int64_data" in rejected(conv_model(extra_inits=[typed]))


def test_a_constant_node_tensor_is_checked_like_an_initializer() -> None:
    bad = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[1000, 1000])
    constant = helper.make_node("Constant", [], ["c_out"], name="const", value=bad)
    assert "attribute 'value' of node 'const'" in rejected(conv_model([constant]))


def test_total_initializer_bytes_are_limited() -> None:
    message = rejected(conv_model(), ValidationLimits(max_initializer_bytes=100))
    assert "exceed the limit of 100 bytes (reached at tensor 'w')" in message


def test_node_count_is_limited() -> None:
    relus = [helper.make_node("Relu", ["y"], [f"r{i}"]) for i in range(5)]
    assert rejected(conv_model(relus), ValidationLimits(max_nodes=4)) == "model has 6 nodes, more than the limit of 4"


def test_float16_models_are_accepted() -> None:
    validate_model(conv_model(elem_type=TensorProto.FLOAT16))


def test_bfloat16_models_are_rejected_clearly() -> None:
    message = rejected(conv_model(elem_type=TensorProto.BFLOAT16))
    assert message.startswith("bfloat16 models cannot be run by onnxruntime on CPU to verify them")


# ---- validate_model: generated tensors --------------------------------------------------------

GENERATORS = {
    "ConstantOfShape": (
        [helper.make_node("ConstantOfShape", ["s"], ["big"], name="gen")],
        [int64("s", [65536, 65536])],
    ),
    "Expand": (
        [helper.make_node("Expand", ["y", "s"], ["big"], name="gen")],
        [int64("s", [1, 4, 65536, 65536])],
    ),
    "Tile": ([helper.make_node("Tile", ["y", "r"], ["big"], name="gen")], [int64("r", [1, 1, 65536, 65536])]),
    "Range": (
        [helper.make_node("Range", ["a", "b", "d"], ["big"], name="gen")],
        [scalar("a", 0), scalar("b", 10**12), scalar("d", 1)],
    ),
}


@pytest.mark.parametrize("op_type", sorted(GENERATORS))
def test_constant_shapes_that_generate_huge_tensors_are_rejected(op_type: str) -> None:
    nodes, inits = GENERATORS[op_type]
    message = rejected(conv_model(nodes, inits))
    assert message.startswith(f"{op_type} node 'gen' would generate")
    assert message.endswith(f"more than the limit of {2**28}")


def test_a_small_constant_of_shape_is_fine() -> None:
    node = helper.make_node("ConstantOfShape", ["s"], ["small"], name="gen")
    validate_model(conv_model([node], [int64("s", [64, 64])]))


# ---- validate_model: ops, opsets, structure ---------------------------------------------------


def test_custom_domains_are_rejected_naming_domain_and_op() -> None:
    custom = helper.make_node("FancyOp", ["y"], ["z"], name="fancy", domain="com.example")
    assert rejected(conv_model([custom])) == (
        "node 'fancy' uses op 'FancyOp' from custom domain 'com.example'; "
        "only standard ONNX ops and onnxruntime's com.microsoft ops are supported"
    )


def _if_node(with_conv: bool) -> onnx.NodeProto:
    if with_conv:
        body_nodes = [helper.make_node("Conv", ["y", "w"], ["inner"])]
    else:
        body_nodes = [helper.make_node("Identity", ["y"], ["inner"])]
    branch = helper.make_graph(
        body_nodes, "branch", [], [helper.make_tensor_value_info("inner", TensorProto.FLOAT, None)]
    )
    return helper.make_node("If", ["cond"], ["out"], name="branchy", then_branch=branch, else_branch=branch)


def test_control_flow_around_convs_is_rejected() -> None:
    cond = numpy_helper.from_array(np.array(True), "cond")
    message = rejected(conv_model([_if_node(with_conv=True)], [cond]))
    assert message.startswith("If node 'branchy' has Conv inside its")
    assert "control flow around prunable convs" in message
    validate_model(conv_model([_if_node(with_conv=False)], [cond]))


def test_a_model_without_convs_is_rejected() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    assert rejected(model) == "model has no Conv, ConvTranspose, Gemm or MatMul to prune"


@pytest.mark.parametrize("opset", [supported_opsets()[""][0] - 1, supported_opsets()[""][1] + 1])
def test_opsets_outside_onnxruntime_support_are_rejected(opset: int) -> None:
    low, high = supported_opsets()[""]
    assert (
        rejected(conv_model(opset=opset))
        == f"model uses ai.onnx opset {opset}; onnxruntime supports opsets {low}-{high}"
    )


def test_the_newest_supported_versions_are_the_newest_onnx_and_onnxruntime_both_run() -> None:
    """The range follows the installed releases: the top is accepted by both, one above by one of them."""
    _low, high = supported_opsets()[""]
    high_ir = supported_ir_versions()[1]
    newest = _typed_conv_model(opset=high, ir_version=high_ir)
    onnx.checker.check_model(newest)
    ort.InferenceSession(newest.SerializeToString(), providers=["CPUExecutionProvider"])
    validate_model(newest)
    assert _both_run(newest)
    assert not _both_run(_typed_conv_model(opset=high + 1, ir_version=high_ir))
    assert not _both_run(_typed_conv_model(opset=high, ir_version=high_ir + 1))


def test_the_supported_opsets_are_not_a_table_of_an_older_onnxruntime() -> None:
    """onnxruntime 1.32 runs opset 27; a stale table said 26 and refused such models."""
    if tuple(int(p) for p in ort.__version__.split(".")[:2]) >= (1, 32):
        assert supported_opsets()[""][1] >= 27


def _typed_conv_model(opset: int, ir_version: int) -> onnx.ModelProto:
    model = conv_model(opset=opset)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6]))
    model.ir_version = ir_version
    return model


def _both_run(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model)
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - either library refusing is what we check
        return False
    return True


def test_parse_model_refuses_external_data_in_subgraph_constants() -> None:
    tensor = TensorProto(name="t", data_type=TensorProto.FLOAT, dims=[1], data_location=TensorProto.EXTERNAL)
    tensor.external_data.add(key="location", value="/etc/shadow")
    model = conv_model([helper.make_node("Constant", [], ["c"], name="k", value=tensor)])
    with pytest.raises(ModelRejected, match="tensor 't' \\(attribute 'value' of node 'k'\\)"):
        parse_model(model.SerializeToString())


# ---- the real models users upload -------------------------------------------------------------


@pytest.mark.parametrize("file", [case.file for case in REAL_MODEL_CASES])
def test_every_shared_model_passes_validation(file: str) -> None:
    validate_model(load_model(shared_model(file)))
