"""Channel counts read at run time: ``Shape`` -> Gather/Slice/Cast/Unsqueeze/Concat -> ``Reshape``.

Exports with a dynamic batch compute reshape targets from ``Shape`` (``x.view(x.size(0), x.size(1))``).
A channel count read this way follows the pruning by itself (``Shape`` of the pruned tensor gives
the pruned count), so it is harmless where it lands in a Reshape's target at the position the same
channels occupy. Anywhere else (arithmetic, ConstantOfShape, a graph output) it would fix the old
count: the handler declines. Tracing the small integer subgraph is done by hand because no library
propagates *which element* of a shape vector a value came from.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graphops.errors import UnsupportedPattern
from onnxprune.graphops.ops.base import AnalysisContext, describe, normalize_axis

_PASS_THROUGH = ("Cast", "Identity", "Unsqueeze", "Squeeze")


def trace_shape_element(
    ctx: AnalysisContext, shape_node: gs.Node, element: int
) -> list[tuple[gs.Node, frozenset[int]]]:
    """The Reshapes whose target holds element ``element`` of ``shape_node``'s output, with the
    positions it lands at. Raises UnsupportedPattern where the value goes anywhere else."""
    landings: list[tuple[gs.Node, frozenset[int]]] = []
    pending: list[tuple[gs.Tensor, frozenset[int]]] = [(shape_node.outputs[0], frozenset({element}))]
    while pending:
        tensor, positions = pending.pop()
        if not positions:
            continue
        if ctx.is_graph_output(tensor):
            raise UnsupportedPattern(
                f"{describe(shape_node)} reads the channel count into graph output '{tensor.name}'"
            )
        for consumer in tensor.outputs:
            for index, operand in enumerate(consumer.inputs):
                if operand is not tensor:
                    continue
                if consumer.op == "Reshape" and index == 1:
                    landings.append((consumer, positions))
                    continue
                moved = _moved_positions(ctx, consumer, index, tensor, positions)
                if moved is None:
                    raise UnsupportedPattern(
                        f"{describe(shape_node)} reads the channel count at run time and {describe(consumer)} "
                        "computes with it"
                    )
                pending.append((consumer.outputs[0], moved))
    return landings


def _moved_positions(
    ctx: AnalysisContext, consumer: gs.Node, index: int, tensor: gs.Tensor, positions: frozenset[int]
) -> frozenset[int] | None:
    """Where ``positions`` of input ``index`` land in ``consumer``'s output, or None if unknown."""
    op = consumer.op
    if op in _PASS_THROUGH and index == 0:
        return positions
    if op == "Gather" and index == 0 and int(consumer.attrs.get("axis", 0)) == 0:
        indices = ctx.const(consumer.inputs[1])
        length = _length(ctx, tensor)
        if indices is None or length is None:
            return None
        picked = [normalize_axis(int(i), length) for i in np.ravel(indices)]
        return frozenset(k for k, i in enumerate(picked) if i in positions)
    if op == "Slice" and index == 0:
        length = _length(ctx, tensor)
        bounds = _slice_bounds(ctx, consumer)
        if length is None or bounds is None:
            return None
        taken = np.arange(length)[slice(*bounds)]
        return frozenset(k for k, i in enumerate(taken.tolist()) if i in positions)
    if op == "Concat":
        offset = 0
        for piece in consumer.inputs[:index]:
            length = _length(ctx, piece)
            if length is None:
                return None
            offset += length
        return frozenset(p + offset for p in positions)
    return None


def _length(ctx: AnalysisContext, tensor: gs.Tensor) -> int | None:
    shape = ctx.static_shape(tensor)
    if shape is None or len(shape) > 1:
        return None
    return shape[0] if shape else 1


def _slice_bounds(ctx: AnalysisContext, node: gs.Node) -> tuple[int, int, int] | None:
    """(start, end, step) of a Slice along axis 0 of a 1-D tensor, from attributes or constants."""
    if "starts" in node.attrs:
        params = [list(node.attrs["starts"]), list(node.attrs["ends"]), list(node.attrs.get("axes", [0])), [1]]
    else:
        params = []
        for position in range(1, 5):
            tensor = node.inputs[position] if len(node.inputs) > position else None
            if tensor is None or not tensor.name:
                params.append([0] if position == 3 else [1])
                continue
            values = ctx.const(tensor)
            if values is None:
                return None
            params.append([int(v) for v in np.ravel(values)])
    starts, ends, axes, steps = params
    if len(starts) != 1 or [normalize_axis(int(a), 1) for a in axes] != [0]:
        return None
    return int(starts[0]), int(ends[0]), int(steps[0])
