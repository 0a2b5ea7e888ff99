"""Models in memory handed to onnxruntime with their weights as inputs, not serialised.

An onnxruntime session built from a model's bytes parses every weight and copies it again (twice,
with prepacking); for a 575 MB VGG-19 that cost more than the run itself, three times per job. A
:class:`FedModel` is the graph with its large floating-point initializers turned into graph inputs,
plus those arrays, fed at run time: the session holds no weights (it builds in milliseconds) and
onnxruntime reads the arrays in place. Integer and small constants stay in the graph, so quantized
(QDQ) weights and shape constants are still constants onnxruntime can fold and fuse.

The arrays are the job's own (``graphops.weights.ModelWeights``): the original, the masked
original and the pruned model share every weight none of them changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxprune.graphops.export import write_constant
from onnxprune.graphops.prepare import keep_interface_types
from onnxprune.graphops.shapes import model_shell
from onnxprune.graphops.weights import ModelWeights

if TYPE_CHECKING:  # onnxruntime itself is imported only where models run (the sandbox)
    import onnxruntime

# Initializers with more elements than this are fed; smaller ones (shape vectors, scalars, biases of
# tiny layers) stay in the graph, where onnxruntime may fold them.
FED_MIN_ELEMENTS = 1024
_FED_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE})


@dataclass(frozen=True)
class FedModel:
    """A serialised graph whose large float weights are inputs, and those weights by input name."""

    graph: bytes
    weights: dict[str, np.ndarray] = field(repr=False)


def _fed(data_type: int, dims: Any) -> bool:
    count = 1
    for dim in dims:
        count *= int(dim)
    return data_type in _FED_TYPES and count > FED_MIN_ELEMENTS


def fed_model(model: onnx.ModelProto, weights: ModelWeights | None = None) -> FedModel:
    """``model`` with its large float initializers as inputs, their arrays taken from ``weights``
    (``model``'s own, decoded once) or decoded here."""
    weights = weights or ModelWeights(model)
    shell = model_shell(model)
    source, target = model.graph, shell.graph
    target.name = source.name
    for name in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(target, name).extend(getattr(source, name))
    declared = {value.name for value in source.input}  # old exporters list initializers as inputs too
    resized = resized_constants(
        [(node.op_type, list(node.input), list(node.output)) for node in source.node],
        {init.name for init in source.initializer},
    )
    arrays: dict[str, np.ndarray] = {}
    for init in source.initializer:
        if _fed(init.data_type, init.dims) and init.name not in resized:
            arrays[init.name] = weights.array(init.name)
            if init.name not in declared:
                target.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            target.initializer.append(init)
    return FedModel(shell.SerializeToString(), arrays)


def fed_graph(graph: gs.Graph, template: onnx.ModelProto) -> FedModel:
    """An onnx-graphsurgeon graph (the masked original) as a :class:`FedModel` in ``template``'s shell;
    constants bound to ``ModelWeights`` are fed as those very arrays."""
    shell = model_shell(template)
    target = shell.graph
    target.name = graph.name or template.graph.name
    target.node.extend([OnnxExporter.export_node(node) for node in graph.nodes])
    target.input.extend([OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs])
    target.output.extend([OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.outputs])
    keep_interface_types(target, template.graph)
    arrays: dict[str, np.ndarray] = {}
    tensors = graph.tensors()
    resized = resized_constants(
        [(node.op, [t.name for t in node.inputs], [t.name for t in node.outputs]) for node in graph.nodes],
        {name for name, tensor in tensors.items() if isinstance(tensor, gs.Constant)},
    )
    for tensor in tensors.values():
        if not isinstance(tensor, gs.Constant):
            continue
        lazy = isinstance(tensor._values, LazyValues)  # onnx-graphsurgeon exposes no public test for this
        data_type = tensor._values.tensor.data_type if lazy else _onnx_type(tensor)
        if data_type is None or not _fed(data_type, tensor.shape) or tensor.name in resized:
            write_constant(target, tensor)
            continue
        arrays[tensor.name] = np.asarray(tensor.values)
        target.input.append(onnx.helper.make_tensor_value_info(tensor.name, data_type, list(tensor.shape)))
    return FedModel(shell.SerializeToString(), arrays)


# Ops that only move or retype their first input: a weight reaches a Resize through them unchanged.
_MOVES_DATA = frozenset({"Cast", "Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Slice"})


def resized_constants(nodes: list[tuple[str, list[str], list[str]]], constants: set[str]) -> set[str]:
    """Constants that reach a Resize's data input only moved (ViT's interpolated position embeddings).

    They stay in the graph: onnxruntime folds such a Resize when its data is a constant; fed as an input,
    its transpose optimizer makes the Resize channels-last and the bicubic kernel then refuses the
    downscale ("'Cubic' mode only supports ...", DINOv2's position embeddings), failing a model that
    onnxruntime runs."""
    producer = {out: (op, inputs) for op, inputs, outputs in nodes for out in outputs}
    kept: set[str] = set()
    for op, inputs, _ in nodes:
        name = inputs[0] if op == "Resize" and inputs else None
        while name is not None and name not in constants and name in producer:
            source_op, source_inputs = producer[name]
            name = source_inputs[0] if source_op in _MOVES_DATA and source_inputs else None
        if name in constants:
            kept.add(name)
    return kept


def _onnx_type(tensor: gs.Constant) -> int | None:
    dtype = np.asarray(tensor.values).dtype
    if dtype.kind != "f" or tensor.export_dtype != tensor.dtype:
        return None
    return int(onnx.helper.np_dtype_to_tensor_dtype(dtype))


# ---- in the sandbox -----------------------------------------------------------------------------


def fed_session(model: FedModel, threads: int) -> onnxruntime.InferenceSession:
    """A CPU session of ``model``'s graph (no weights to load, nothing to prepack)."""
    from onnxprune.workers.ort_sessions import cpu_session

    return cpu_session(model.graph, threads=threads)


def run_fed(model: FedModel, inputs: dict[str, np.ndarray], threads: int = 1) -> dict[str, Any]:
    """All outputs of one run of ``model`` on ``inputs`` (in the sandbox)."""
    clash = set(inputs) & set(model.weights)
    if clash:
        raise ValueError(f"model input {sorted(clash)[0]!r} has the name of a weight")
    session = fed_session(model, threads)
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {**inputs, **model.weights})))
