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

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.dequantized import DEQUANTIZE, zero_point_fill
from onnxprune.graphops.ops import handler_for
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.surgery import _by_input, _context, export_like
from onnxprune.graphops.weights import ModelWeights


def mask_removed_channels(
    dep: DependencyGraph, plan: PruningPlan, weights: ModelWeights | None = None
) -> onnx.ModelProto:
    """The oracle as a model (``masked_graph`` exported)."""
    return export_like(masked_graph(dep, plan, weights), dep.model)


def masked_graph(dep: DependencyGraph, plan: PruningPlan, weights: ModelWeights | None = None) -> gs.Graph:
    """``dep.model`` with removed channels zeroed where they are read. Constants it leaves alone keep
    ``weights``' arrays (``ModelWeights.shares``), so a caller can tell what changed."""
    plan.check(dep)
    ctx = _context(dep, plan)
    graph = (weights or ModelWeights(dep.model)).bind(gs.import_onnx(dep.model))
    nodes = {node.name: node for node in graph.nodes}
    for (node_name, index), entries in _by_input(dep.reductions).items():
        node = nodes[node_name]
        source = np.asarray(node.inputs[index].values)
        keep = np.ones((1,) * source.ndim, dtype=bool)  # broadcast along every axis an entry masks
        for entry in entries:
            shape = [1] * source.ndim
            shape[entry.axis] = -1
            keep = keep & ~ctx.removed_atoms(entry.atoms).reshape(shape)
        # A quantized weight (QDQ) is masked in its own precision: to the value that dequantizes to 0.
        fill = zero_point_fill(node, source) if node.op == DEQUANTIZE and index == 0 else np.zeros((), source.dtype)
        ctx.replace_input(node, index, np.where(keep, source, fill))  # one pass, a new array
    for node in graph.nodes:
        handler_for(node.op, node.domain).mask(node, ctx)
    return graph
