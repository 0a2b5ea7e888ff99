"""A QDQ model without its activations' rounding: what the oracle compares quantized models by.

The pruned model and the masked original compute the same sums in a different order, so float32
rounds them differently, by about 1e-7 of their size. Where onnxruntime runs a QDQ conv in float
(graph optimisations off, a pattern it does not fuse into an integer kernel, weights it cannot
fold), the QuantizeLinear after it sends a value lying that close to a rounding boundary to the
other integer: one quantization step (1/255 of the tensor's range) apart. Those steps feed the next
layer's sums and cross more boundaries there, layer after layer: on a QDQ YOLOv8n at -30% MACs the
two models' outputs differ by 3e-2 without optimisations (and by 0 with, where every conv runs
in integers). A difference the rounding makes is not a wrong surgery, and it hides one.

So the oracle compares the two models with every activation QuantizeLinear -> DequantizeLinear
pair replaced by what the pair does apart from rounding: clamping to the range its scale and zero
point represent, per channel where they are per channel (so sliced activation scales are still
checked). Weights stay behind their DequantizeLinear, exactly as stored: their sliced quantized
data, scales and zero points are what the oracle checks. Pairs whose parameters are not constants,
blocked ones, and per-channel ones on a tensor of unknown rank keep their rounding.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.graphops.dequantized import DEQUANTIZE
from onnxprune.graphops.export import export_model
from onnxprune.graphops.shapes import Shape, infer_shapes

QUANTIZE = "QuantizeLinear"
# The integer range of each zero-point type; without a zero point QuantizeLinear produces uint8.
_RANGES = {np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max) for t in (np.uint8, np.int8, np.uint16, np.int16)}


def without_activation_rounding(graph: gs.Graph, shapes: Mapping[str, Shape] | None = None) -> int:
    """Replace ``graph``'s activation Q -> DQ pairs by the clamps they apply; returns how many.

    ``shapes``: tensor shapes by name, where the graph's own do not say a per-channel pair's rank.
    Changes ``graph`` in place (dead QuantizeLinear nodes are removed)."""
    replaced = 0
    for dq in [node for node in graph.nodes if node.op == DEQUANTIZE and _standard(node)]:
        clamp = _clamp_bounds(dq, shapes or {})
        if clamp is None:
            continue
        source, low, high = clamp
        output = dq.outputs[0]  # tensor names are unique (node names need not be): the new ones follow it
        dq.outputs.clear()
        lowered = gs.Variable(f"{output.name}__unrounded", dtype=output.dtype, shape=output.shape)
        graph.nodes.append(
            gs.Node(
                "Max",
                f"{output.name}__clamp_low",
                inputs=[source, gs.Constant(f"{output.name}__low", low)],
                outputs=[lowered],
            )
        )
        graph.nodes.append(
            gs.Node(
                "Min",
                f"{output.name}__clamp_high",
                inputs=[lowered, gs.Constant(f"{output.name}__high", high)],
                outputs=[output],
            )
        )
        replaced += 1
    if replaced:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return replaced


def _standard(node: gs.Node) -> bool:
    return node.domain in (None, "", "ai.onnx")


def _clamp_bounds(dq: gs.Node, shapes: Mapping[str, Shape]) -> tuple[gs.Tensor, np.ndarray, np.ndarray] | None:
    """(the float tensor the pair quantizes, its lowest and highest representable values) when ``dq``
    dequantizes what a QuantizeLinear of an activation produced, with the same parameters."""
    quantized = dq.inputs[0]
    if len(quantized.inputs) != 1 or quantized.inputs[0].op != QUANTIZE or not _standard(quantized.inputs[0]):
        return None
    q = quantized.inputs[0]
    source = q.inputs[0]
    if isinstance(source, gs.Constant) or int(q.attrs.get("block_size", 0)) or int(dq.attrs.get("block_size", 0)):
        return None
    params = [_constant(node, index) for node in (q, dq) for index in (1, 2)]
    if any(value is False for value in params):
        return None  # scales or zero points computed at run time
    q_scale, q_zero, dq_scale, dq_zero = params
    if not _same(q_scale, dq_scale) or not _same(q_zero, dq_zero) or q.attrs.get("axis", 1) != dq.attrs.get("axis", 1):
        return None
    scale = np.asarray(q_scale, dtype=np.float64)
    zero = np.zeros((), np.uint8) if q_zero is None else np.asarray(q_zero)
    if zero.dtype not in _RANGES:
        return None
    low, high = ((bound - zero.astype(np.float64)) * scale for bound in _RANGES[zero.dtype])
    if scale.size > 1:
        known = source.shape if source.shape is not None else shapes.get(source.name)
        rank = None if known is None else len(known)
        if rank is None or scale.ndim != 1:
            return None
        axis = int(q.attrs.get("axis", 1))
        axis = axis + rank if axis < 0 else axis
        shape = [1] * rank
        shape[axis] = scale.size
        low, high = low.reshape(shape), high.reshape(shape)
    dtype = np.asarray(dq_scale).dtype  # DequantizeLinear computes in its scale's type
    return source, np.asarray(low, dtype=dtype), np.asarray(high, dtype=dtype)


def _constant(node: gs.Node, index: int) -> np.ndarray | None | bool:
    """Input ``index`` of ``node`` as an array, None when it is not given, False when not a constant."""
    if len(node.inputs) <= index or node.inputs[index] is None or not node.inputs[index].name:
        return None
    tensor = node.inputs[index]
    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else False


def _same(a: np.ndarray | None | bool, b: np.ndarray | None | bool) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.asarray(a).shape == np.asarray(b).shape and np.array_equal(a, b))


def unrounded_model(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """``model`` with its activation Q -> DQ pairs replaced (:func:`without_activation_rounding`), or
    None when it has none."""
    graph = gs.import_onnx(model)
    if not without_activation_rounding(graph, infer_shapes(model)):
        return None
    return export_model(graph, model)
