"""The verification oracle: the original model with removed channels zeroed where they are read.

Every op that sums over input channels (Conv, ConvTranspose, Gemm, MatMul) gets the weights that
read a removed channel set to zero (a quantized weight to its zero point, so the masked model keeps
the original's precision); nothing else changes. If surgery is right, this model and the pruned one
compute the same outputs: removed channels then contribute nothing anywhere.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphops.dependency import DependencyGraph
from graphops.dequantized import DEQUANTIZE, zero_point_fill
from graphops.ops import handler_for
from graphops.plan import PruningPlan
from graphops.surgery import _by_input, _context, export_like


def mask_removed_channels(dep: DependencyGraph, plan: PruningPlan) -> onnx.ModelProto:
    plan.check(dep)
    ctx = _context(dep, plan)
    graph = gs.import_onnx(dep.model)
    nodes = {node.name: node for node in graph.nodes}
    for (node_name, index), entries in _by_input(dep.reductions).items():
        node = nodes[node_name]
        values = np.array(node.inputs[index].values, copy=True)
        # A quantized weight (QDQ) is masked in its own precision: to the value that dequantizes to 0.
        fill = zero_point_fill(node, values) if node.op == DEQUANTIZE and index == 0 else np.zeros_like(values)
        for entry in entries:
            removed = np.flatnonzero(ctx.removed_atoms(entry.atoms))
            index_tuple: list[slice | np.ndarray] = [slice(None)] * values.ndim
            index_tuple[entry.axis] = removed
            values[tuple(index_tuple)] = fill[tuple(index_tuple)]
        ctx.replace_input(node, index, values)
    for node in graph.nodes:
        handler_for(node.op).mask(node, ctx)
    return export_like(graph, dep.model)
