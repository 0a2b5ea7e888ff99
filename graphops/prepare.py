"""Bring an uploaded model into the form analysis and surgery expect.

Weights may arrive as initializers, Constant nodes, Identity of constants, or whole constant
subgraphs (``light_resnet50`` builds every weight with ConstantOfShape). Folding them into
initializers lets every handler treat a weight as one constant array. Quantized (QDQ) weights stay
quantized: DequantizeLinear is never folded into a float weight (onnx-graphsurgeon leaves Q/DQ
alone), and a QuantizeLinear of a float weight is stored as its int8 result
(``graphops.weight_quantizers``). Symbolic input dims are kept: the pruned model must stay as
dynamic as the user's. Folding evaluates the user's graph, so ``graphops.fold_limits`` decides which
nodes may be evaluated (bounded size and cost, never control flow); the rest stays as it came.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import onnx
import onnx_graphsurgeon as gs

from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.export import export_model
from onnxprune.graphops.fold_limits import FoldGuard
from onnxprune.graphops.shapes import inferred_value_info
from onnxprune.graphops.weight_quantizers import fold_weight_quantizers

# Constant subgraphs whose results exceed this are left unfolded (validation bounds them too, and
# graphops.fold_limits bounds what is evaluated on the way).
FOLD_SIZE_LIMIT_BYTES = 256 << 20
# Folding passes while gs keeps flattening If nodes whose condition folded (nested Ifs need more).
_FOLD_PASSES = 4


def _opset(model: onnx.ModelProto) -> int:
    return next((int(e.version) for e in model.opset_import if e.domain in ("", "ai.onnx")), 1)


def name_unnamed_nodes(graph: gs.Graph) -> None:
    """Give every node a unique name: plans, reports and exclusions refer to nodes by name."""
    taken = {node.name for node in graph.nodes if node.name}
    seen: set[str] = set()
    counter = 0
    for node in graph.nodes:
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        while f"{node.op}_{counter}" in taken:
            counter += 1
        node.name = f"{node.op}_{counter}"
        taken.add(node.name)
        seen.add(node.name)


def _attach_inferred_shapes(graph: gs.Graph, model: onnx.ModelProto) -> None:
    """Shapes let the folder resolve Shape ops on static dims (``x.view(x.size(0), -1)``)."""
    try:
        infos = inferred_value_info(model)
    except Exception:  # folding still works without shapes, only less of it
        return
    tensors = graph.tensors()
    for info in infos:
        tensor = tensors.get(info.name)
        tensor_type = info.type.tensor_type
        if not isinstance(tensor, gs.Variable) or tensor.shape is not None or not tensor_type.HasField("shape"):
            continue
        tensor.shape = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
        ]
        if tensor.dtype is None and tensor_type.elem_type:
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)


def keep_interface_types(graph: onnx.GraphProto, original: onnx.GraphProto) -> None:
    """Give inputs and outputs that are not plain tensors (ai.onnx.ml ZipMap's seq(map(...)), ...)
    back the types onnx-graphsurgeon cannot represent (it would write an undefined tensor type)."""
    declared = {value.name: value for value in list(original.input) + list(original.output)}
    for value in list(graph.input) + list(graph.output):
        before = declared.get(value.name)
        if before is not None and not before.type.HasField("tensor_type"):
            value.CopyFrom(before)


def _fold_bounded_constants(graph: gs.Graph, model: onnx.ModelProto) -> None:
    """gs's constant folding with every evaluation bounded (``graphops.fold_limits``), functions too.

    gs does not pass ``should_exclude_node`` on to subgraphs, so they are not folded (no Conv lives
    in one: validation refuses it); an If whose condition folds is flattened by gs, and its branch's
    nodes are folded in another pass, each judged like the graph's own.
    """
    guard = FoldGuard.for_model(model)
    for _ in range(_FOLD_PASSES):
        branches = sum(node.op == "If" for node in graph.nodes)
        _fold(graph, guard.excludes)
        if sum(node.op == "If" for node in graph.nodes) == branches:
            break
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    for function in reversed(graph.functions):  # callees first, as gs itself orders them
        _fold(function, guard.for_function().excludes)


def _fold(graph: gs.Graph | gs.Function, excludes: Callable[[gs.Node], bool]) -> None:
    """One bounded folding pass of ``graph`` (or a function), subgraphs and callees left alone."""
    graph.fold_constants(
        fold_shapes=True,
        recurse_subgraphs=False,
        partitioning="basic",
        error_ok=True,
        size_threshold=FOLD_SIZE_LIMIT_BYTES,
        should_exclude_node=excludes,
        recurse_functions=False,
    )


def prepare_model(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None) -> onnx.ModelProto:
    """Fold constant subgraphs into initializers and name every node; returns a new model.

    ``input_shapes`` is accepted for symmetry with :func:`graphops.dependency.analyze` and is
    not baked into the result.
    """
    del input_shapes
    try:
        graph = gs.import_onnx(model)
        name_unnamed_nodes(graph)
        _attach_inferred_shapes(graph, model)
        _fold_bounded_constants(graph, model)
        fold_weight_quantizers(graph, _opset(model), FOLD_SIZE_LIMIT_BYTES)  # QAT exports: weights stored int8
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        prepared = export_model(graph, model)  # each weight copied once (gs.export_onnx copies three times)
    except Exception as exc:  # onnx-graphsurgeon raises many kinds on malformed graphs
        raise ModelRejected(f"cannot fold the model's constant subgraphs: {exc}".splitlines()[0]) from exc
    keep_interface_types(prepared.graph, model.graph)
    # IR < 4 demands every initializer be listed as a graph input; inputs that are really weights
    # are dropped below, so raise to IR 4, which every onnxruntime reads.
    prepared.ir_version = max(prepared.ir_version, 4)
    # Old exporters list initializers among graph inputs; keep only real inputs so that weights
    # cannot be overridden at run time (and are recognised as constants by every pass).
    initializer_names = {init.name for init in prepared.graph.initializer}
    real_inputs = [inp for inp in prepared.graph.input if inp.name not in initializer_names]
    del prepared.graph.input[:]
    prepared.graph.input.extend(real_inputs)
    del prepared.graph.value_info[:]
    return prepared
