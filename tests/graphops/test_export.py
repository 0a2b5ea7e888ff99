"""Exporting onnx-graphsurgeon graphs (each weight copied once) and the decoded weights they share.

    x -> Conv(a) -> Relu -> Conv(b) -> Add(a) -> Relu -> Conv(c) -> GAP -> Flatten -> Gemm(10)

(``tests.support.small_models.residual_model``), plus constants of the types a model may hold.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, numpy_helper

from onnxprune.graphops.export import export_model
from onnxprune.graphops.masking import masked_graph
from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from onnxprune.graphops.weights import ModelWeights
from tests.support.oracle import analyse
from tests.support.small_models import residual_model

# Constants of every kind write_constant handles: raw numeric types, and what onnx converts (strings).
CONSTANT_CASES = {
    "float32": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "float16": np.linspace(-1, 1, 6, dtype=np.float16),
    "int8": np.arange(-4, 4, dtype=np.int8),
    "int64": np.array([1, -1, 7], dtype=np.int64),
    "bool": np.array([True, False, True]),
    "scalar": np.array(2.5, dtype=np.float32),
    "strings": np.array(["a", "bc"], dtype=object),
}


def test_export_writes_what_onnx_graphsurgeon_writes():
    model = residual_model()
    graph = gs.import_onnx(model)
    conv = next(node for node in graph.nodes if node.op == "Conv")
    conv.inputs[1].values = np.asarray(conv.inputs[1].values) * 2  # one changed weight, the rest untouched
    ours, theirs = export_model(graph, model), gs.export_onnx(graph, do_type_check=False)

    assert [n.SerializeToString() for n in ours.graph.node] == [n.SerializeToString() for n in theirs.graph.node]
    assert {i.name: numpy_helper.to_array(i).tobytes() for i in ours.graph.initializer} == {
        i.name: numpy_helper.to_array(i).tobytes() for i in theirs.graph.initializer
    }
    assert list(ours.opset_import) == list(model.opset_import) and ours.ir_version == model.ir_version
    assert not ours.graph.value_info  # inferred again by callers: onnx-graphsurgeon's go stale
    onnx.checker.check_model(ours, full_check=True)


def test_untouched_initializers_are_copied_byte_for_byte():
    model = residual_model()
    exported = export_model(gs.import_onnx(model), model)
    before = {i.name: i.SerializeToString() for i in model.graph.initializer}
    assert {i.name: i.SerializeToString() for i in exported.graph.initializer} == before


@pytest.mark.parametrize("name", list(CONSTANT_CASES))
def test_changed_constants_of_every_type_round_trip(name):
    values = CONSTANT_CASES[name]
    graph = gs.Graph(name="constants")
    graph.nodes = [gs.Node("Identity", inputs=[gs.Constant(name, values)], outputs=[gs.Variable("out")])]
    template = onnx.helper.make_model(onnx.helper.make_graph([], "t", [], []))
    exported = export_model(graph, template)

    (tensor,) = exported.graph.initializer
    decoded = numpy_helper.to_array(tensor)
    assert tensor.name == name and tensor.data_type == onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
    assert decoded.shape == values.shape and decoded.tolist() == values.tolist()


def test_weights_are_decoded_once_read_only_and_shared_with_graphs():
    model = residual_model()
    weights = ModelWeights(model)
    name = model.graph.initializer[0].name
    first = weights.array(name)

    assert weights.array(name) is first and not first.flags.writeable
    with pytest.raises(ValueError):
        first[...] = 0  # a pass that changes values must copy
    graph = weights.bind(gs.import_onnx(model))
    bound = {t.name: t.values for t in graph.tensors().values() if isinstance(t, gs.Constant)}
    assert all(weights.shares(n, values) for n, values in bound.items())
    weights.release()
    assert weights.array(name) is not first and np.array_equal(weights.array(name), first)


def test_masking_leaves_untouched_constants_on_the_shared_arrays():
    analysed = analyse(residual_model())
    dep = analysed.dep
    plan = select_by_ratio(dep, score_groups(dep, "l1"), 0.5)
    weights = ModelWeights(dep.model)
    graph = masked_graph(dep, plan, weights)
    constants = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    changed = [t.name for t in constants if t.name in weights and not weights.shares(t.name, t.values)]
    untouched = [t.name for t in constants if weights.shares(t.name, t.values)]

    # the consumers of removed channels (conv b, conv c, the classifier) are masked copies; the rest is shared
    assert changed and untouched
    for name in changed:
        assert np.count_nonzero(np.asarray(weights.array(name)) != graph.tensors()[name].values) > 0


def test_an_exported_model_keeps_weight_types_it_was_given():
    model = residual_model()
    graph = gs.import_onnx(model)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor.values.dtype == np.float32:
            tensor.values = tensor.values.astype(np.float16)
    exported = export_model(graph, model)
    assert {i.data_type for i in exported.graph.initializer} == {TensorProto.FLOAT16}
