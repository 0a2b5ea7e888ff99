"""An onnx-graphsurgeon graph written out as a model, each weight copied once.

``gs.export_onnx`` builds the graph with ``onnx.helper.make_graph`` (whose ``extend`` serialises
and parses every initializer again) and ``make_model`` copies the finished graph once more: on a
575 MB VGG-19 that is three passes over the weights per surgery. Here nodes and the interface come
from onnx-graphsurgeon's own exporter, and each initializer is written straight into the new model:
an untouched one copied from its TensorProto, a changed one from its array.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from onnxprune.graphops.shapes import model_shell


def export_model(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """``graph`` in a copy of ``template``'s shell (opsets, IR version, functions, metadata), without
    value_info (callers infer it again: onnx-graphsurgeon's shapes go stale after surgery)."""
    model = model_shell(template)
    target = model.graph
    target.name = graph.name or template.graph.name
    if graph.doc_string:
        target.doc_string = graph.doc_string
    target.node.extend([OnnxExporter.export_node(node) for node in graph.nodes])
    target.input.extend([OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs])
    target.output.extend([OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.outputs])
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            write_constant(target, tensor)
    return model


def write_constant(target: onnx.GraphProto, tensor: gs.Constant) -> None:
    """Append ``tensor`` to ``target``'s initializers (sparse ones to its sparse initializers)."""
    values = tensor._values  # onnx-graphsurgeon exposes no public test for "not yet loaded"
    if isinstance(values, SparseValues):
        target.sparse_initializer.add().CopyFrom(values.tensor)
        return
    if isinstance(values, LazyValues):  # untouched: copy the TensorProto as imported
        proto = target.initializer.add()
        proto.CopyFrom(values.tensor)
        proto.name = tensor.name
        return
    array = np.asarray(values)
    if array.dtype.kind not in "biuf" or array.dtype.byteorder == ">":  # strings, big-endian: onnx converts
        target.initializer.add().CopyFrom(numpy_helper.from_array(array, tensor.name))
    elif tensor.export_dtype != tensor.dtype:  # float32 stored as bfloat16 or float8: onnx-graphsurgeon converts
        target.initializer.add().CopyFrom(OnnxExporter.export_tensor_proto(tensor))
    else:
        proto = target.initializer.add()
        proto.name = tensor.name
        proto.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        proto.dims.extend(array.shape)
        proto.raw_data = np.ascontiguousarray(array).tobytes()
