"""Apply a pruning plan: slice every constant that follows removed channels, fix attributes.

Only what the plan touches changes; node names, untouched weights and the graph's interface
(inputs, outputs, symbolic dims) stay as they were. Intermediate shapes are dropped (onnx-graphsurgeon's
would be stale after slicing) and not declared again: the prepared model they are cut from declares
none, and declared shapes change which fusions onnxruntime applies, so a pruned model timed against
it would not run the same kernels (``declare_shapes_like`` gives the written model the original's form).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.export import export_model
from onnxprune.graphops.layout import ConstSlice
from onnxprune.graphops.ops import SurgeryContext, handler_for
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.prepare import keep_interface_types
from onnxprune.graphops.shapes import inferred_value_info
from onnxprune.graphops.weights import ModelWeights


def _context(dep: DependencyGraph, plan: PruningPlan) -> SurgeryContext:
    removed = plan.removed_class_mask(dep)
    return SurgeryContext(dep.layouts, lambda atoms: removed[dep.atom_class[atoms]], dep.shapes, dep.opset)


def _by_input(entries: list[ConstSlice]) -> dict[tuple[str, int], list[ConstSlice]]:
    grouped: dict[tuple[str, int], list[ConstSlice]] = defaultdict(list)
    for entry in entries:
        grouped[(entry.node, entry.input_index)].append(entry)
    return grouped


def export_like(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` into a copy of ``template``: same opsets, IR version and metadata."""
    model = export_model(graph, template)
    keep_interface_types(model.graph, template.graph)
    return model


def declare_shapes_like(model: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` declaring its intermediate shapes (inferred afresh) where ``original`` declared some,
    and none where it declared none. onnxruntime fuses Add + LayerNormalization into
    SkipLayerNormalization only where shapes are declared, and that kernel ran 5x slower at one thread
    (MiniLM-L3 at sequence 128 on an AMD EPYC: 0.25 ms a layer against 0.05 ms): a pruned model that
    declared shapes its original did not ran 4% of the original's time slower than the same model
    without them (benchmarks/results/transformers.md)."""
    if not original.graph.value_info and not model.graph.value_info:
        return model
    declared = onnx.ModelProto()
    declared.CopyFrom(model)
    del declared.graph.value_info[:]
    if original.graph.value_info:
        try:
            declared.graph.value_info.extend(inferred_value_info(declared))
        except Exception:  # value_info is a convenience for viewers; the model is valid without it
            pass
    return declared


def apply_plan(dep: DependencyGraph, plan: PruningPlan, weights: ModelWeights | None = None) -> onnx.ModelProto:
    """The pruned model: a new ModelProto (``dep.model`` is left as it was). ``weights``: ``dep.model``'s
    decoded weights when the caller shares them (else they are decoded here)."""
    plan.check(dep)
    ctx = _context(dep, plan)
    graph = (weights or ModelWeights(dep.model)).bind(gs.import_onnx(dep.model))
    nodes = {node.name: node for node in graph.nodes}
    for (node_name, index), entries in _by_input(dep.slices).items():
        node = nodes[node_name]
        values = np.asarray(node.inputs[index].values)
        changed = False
        for entry in entries:
            removed = ctx.removed_atoms(entry.atoms)
            if removed.any():
                values = np.take(values, np.flatnonzero(~removed), axis=entry.axis)
                changed = True
        if changed:
            ctx.replace_input(node, index, values)
    for shape_entry in dep.shape_entries:
        node = nodes[shape_entry.node]
        values = np.array(node.inputs[shape_entry.input_index].values, copy=True)
        kept = int(np.count_nonzero(~ctx.removed_atoms(shape_entry.atoms)))
        if values.flat[shape_entry.position] != kept:
            values.flat[shape_entry.position] = kept
            ctx.replace_input(node, shape_entry.input_index, values)
    for node in graph.nodes:
        handler_for(node.op, node.domain).apply(node, ctx)
    interface = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.name not in interface:
            tensor.shape = None
    graph.cleanup(remove_unused_graph_inputs=False)
    return export_like(graph, dep.model)
