"""Bring an uploaded model into the form analysis and surgery expect.

Weights may arrive as initializers, Constant nodes, Identity of constants, or whole constant
subgraphs (``light_resnet50`` builds every weight with ConstantOfShape). Folding them into
initializers lets every handler treat a weight as one constant array. Symbolic input dims are kept:
the pruned model must stay as dynamic as the user's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx
import onnx_graphsurgeon as gs
from onnx import shape_inference

from graphops.errors import ModelRejected

# Constant subgraphs whose results exceed this are left unfolded (validation bounds them too).
FOLD_SIZE_LIMIT_BYTES = 256 << 20


def name_unnamed_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name: plans, reports and exclusions refer to nodes by name."""
    taken = {node.name for node in model.graph.node if node.name}
    counter = 0
    seen: set[str] = set()
    for node in model.graph.node:
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        while True:
            candidate = f"{node.op_type}_{counter}"
            counter += 1
            if candidate not in taken:
                break
        node.name = candidate
        taken.add(candidate)
        seen.add(candidate)


def prepare_model(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> onnx.ModelProto:
    """Fold constant subgraphs into initializers and name every node; returns a new model.

    ``input_shapes`` is accepted for symmetry with :func:`graphops.dependency.analyze` and is
    not baked into the result.
    """
    del input_shapes
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    name_unnamed_nodes(prepared)
    # IR < 4 demands every initializer be listed as a graph input; inputs that are really weights
    # are dropped below, so raise to IR 4, which every onnxruntime reads.
    prepared.ir_version = max(prepared.ir_version, 4)
    try:
        # Shapes let the folder resolve Shape ops on static dims (``x.view(x.size(0), -1)``).
        with_shapes = shape_inference.infer_shapes(prepared, strict_mode=False)
    except Exception:  # folding still works without shapes, only less of it
        with_shapes = prepared
    try:
        graph = gs.import_onnx(with_shapes)
        graph.fold_constants(
            fold_shapes=True,
            partitioning="basic",
            size_threshold=FOLD_SIZE_LIMIT_BYTES,
            error_ok=True,
        )
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        exported = gs.export_onnx(graph, do_type_check=False)
    except Exception as exc:  # onnx-graphsurgeon raises many kinds on malformed graphs
        raise ModelRejected(f"cannot fold the model's constant subgraphs: {exc}".splitlines()[0]) from exc
    prepared.graph.CopyFrom(exported.graph)
    # Old exporters list initializers among graph inputs; keep only real inputs so that weights
    # cannot be overridden at run time (and are recognised as constants by every pass).
    initializer_names = {init.name for init in prepared.graph.initializer}
    real_inputs = [inp for inp in prepared.graph.input if inp.name not in initializer_names]
    del prepared.graph.input[:]
    prepared.graph.input.extend(real_inputs)
    del prepared.graph.value_info[:]
    return prepared
