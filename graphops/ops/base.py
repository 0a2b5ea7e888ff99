"""The handler interface and the two contexts handlers work in.

A handler knows one kind of op: how channels flow through it (``propagate``, during analysis),
how to slice its constants once channels are removed (``apply``, during surgery), for ops that
sum over input channels how to zero removed channels in place (``mask``, the oracle), and its
multiply-accumulates (``macs``, for ``graphops.cost``), and for a layer with a constant weight how
it maps its input (``linear_form``, for layer-wise reconstruction). It declines a pattern it does not
support by raising ``UnsupportedPattern``; anything else it raises is a bug (``graphops.dependency``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TypeVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.graphops.dequantized import (
    DeclinedSlice,
    quantized_constant_shape,
    quantized_constant_values,
    quantized_slice_targets,
)
from onnxprune.graphops.errors import AnalysisBug, DuplicateRegistration, GraphOpsError, UnsupportedPattern
from onnxprune.graphops.layout import ConstSlice, Layout, TrackerState
from onnxprune.graphops.ops.linear_form import LinearForm
from onnxprune.graphops.shapes import Shape


def describe(node: gs.Node) -> str:
    return f"{node.op} node '{node.name}'"


def attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(attr.i) for attr in node.attribute if attr.name == name), default)


def number_attribute(node: onnx.NodeProto, name: str, default: float) -> float:
    """A float (or int) attribute of ``node``, ``default`` when absent."""
    return next((float(onnx.helper.get_attribute_value(attr)) for attr in node.attribute if attr.name == name), default)


ConstantShape = Callable[[str], tuple[int, ...] | None]
"""The shape of a constant (an initializer) by tensor name; None for a tensor computed at run time."""


def constant_shapes(model: onnx.ModelProto) -> ConstantShape:
    """``ConstantShape`` of ``model``'s initializers."""
    shapes = {init.name: tuple(int(d) for d in init.dims) for init in model.graph.initializer}
    return shapes.get


# The roles of handlers whose ops are layers with weights (filters and fully connected layers).
LAYER_ROLES = ("filter", "linear")


def prod(dims: tuple[int, ...]) -> int:
    return math.prod(dims)


def normalize_axis(axis: int, rank: int | None) -> int:
    """``axis`` counted from the front; a negative one needs the tensor's rank."""
    if axis >= 0:
        return axis
    if rank is None:
        raise UnsupportedPattern(f"axis {axis} counts from the end of a tensor of unknown rank")
    return axis + rank


class AnalysisContext:
    """Read tensor facts and record channel facts while the graph is walked."""

    def __init__(
        self, state: TrackerState, shapes: dict[str, Shape], opset: int, graph_outputs: frozenset[str] = frozenset()
    ) -> None:
        self.state = state
        self._shapes = shapes
        self.opset = opset
        self._graph_outputs = graph_outputs

    def is_graph_output(self, tensor: gs.Tensor) -> bool:
        return tensor.name in self._graph_outputs

    def layout(self, tensor: gs.Tensor) -> Layout | None:
        return self.state.layouts.get(tensor.name)

    def set_layout(self, tensor: gs.Tensor, layout: Layout | None) -> None:
        if layout is not None and tensor.name:
            self.state.layouts[tensor.name] = layout

    def shape(self, tensor: gs.Tensor) -> Shape | None:
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.shape)
        return self._shapes.get(tensor.name)

    def rank(self, tensor: gs.Tensor) -> int | None:
        shape = self.shape(tensor)
        return None if shape is None else len(shape)

    def static_shape(self, tensor: gs.Tensor) -> tuple[int, ...] | None:
        shape = self.shape(tensor)
        if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
            return None
        return tuple(int(d) for d in shape if isinstance(d, int))  # every dim is one, checked above

    @staticmethod
    def const(tensor: gs.Tensor | None) -> np.ndarray | None:
        if isinstance(tensor, gs.Constant):
            return np.asarray(tensor.values)
        return None

    @staticmethod
    def const_shape(tensor: gs.Tensor | None) -> tuple[int, ...] | None:
        """A constant's shape without loading its values (weights load lazily in graphsurgeon).

        A constant stored quantized behind DequantizeLinear (QDQ) counts: ``slice_const`` slices it
        at its source."""
        if isinstance(tensor, gs.Constant):
            return tuple(int(d) for d in tensor.shape)
        return quantized_constant_shape(tensor)

    def untracked_source(self, tensor: gs.Tensor) -> str:
        """Where a tensor's channels stopped being tracked, for frozen reasons: the node that dropped
        them (an unsupported op, say), not the tensor's name alone."""
        current = tensor
        for _ in range(64):  # a chain of ops that pass untracked channels along
            if not current.inputs:
                break
            node = current.inputs[0]
            if any(t is not None and self.layout(t) is not None for t in node.inputs):
                kind = "unsupported op " if qualified_op(node.op, node.domain) not in _REGISTRY else ""
                return f"'{tensor.name}' from {kind}{describe(node)}"
            variables = [t for t in node.inputs if isinstance(t, gs.Variable)]
            if not variables:
                break
            current = variables[0]
        return f"'{tensor.name}'"

    def input_layouts(self, node: gs.Node) -> list[Layout]:
        return [lay for lay in (self.layout(t) for t in node.inputs if t is not None) if lay is not None]

    def pin_inputs(self, node: gs.Node, reason: str) -> None:
        for layout in self.input_layouts(node):
            self.state.pin(layout.atoms, reason)

    def new_atoms(self, count: int, origin: str) -> np.ndarray:
        return self.state.new_atoms(count, origin)

    def slice_const(self, node: gs.Node, index: int, axis: int, atoms: np.ndarray, *, reduces: bool = False) -> None:
        """Record that constant input ``index`` of ``node`` follows ``atoms`` along ``axis``.

        A quantized constant (behind DequantizeLinear) is sliced at the DequantizeLinear's inputs; one
        that cannot be sliced safely pins ``atoms``, with the reason."""
        try:
            targets = quantized_slice_targets(node, index, axis)
        except DeclinedSlice as declined:
            self.state.pin(atoms, str(declined))
            if reduces or handler_for(node.op, node.domain).role == "filter":
                self.pin_inputs(node, str(declined))
            return
        for target_node, target_index, target_axis in targets or [(node, index, axis)]:
            entry = ConstSlice(target_node.name, target_index, target_axis, atoms)
            self.state.slices.append(entry)
            # The oracle zeroes what reads removed channels: a quantized weight's data, not its scales.
            if reduces and (not targets or target_index == 0):
                self.state.reductions.append(entry)

    def new_pinned_layout(self, axis: int, count: int, origin: str, reason: str) -> Layout:
        atoms = self.state.new_atoms(count, origin)
        self.state.pin(atoms, reason)
        return Layout(axis, atoms)


class SurgeryContext:
    """Kept and removed positions of every tracked tensor, and safe constant replacement."""

    def __init__(
        self,
        layouts: dict[str, Layout],
        removed_atom: Callable[[np.ndarray], np.ndarray],
        shapes: dict[str, Shape],
        opset: int,
    ) -> None:
        self._layouts = layouts
        self._shapes = shapes
        self.opset = opset
        self._removed_atom = removed_atom
        self._cache: dict[str, np.ndarray | None] = {}

    def layout(self, tensor: gs.Tensor) -> Layout | None:
        return self._layouts.get(tensor.name)

    def removed_atoms(self, atoms: np.ndarray) -> np.ndarray:
        return self._removed_atom(atoms)

    def rank(self, tensor: gs.Tensor) -> int | None:
        shape = self._shapes.get(tensor.name)
        return None if shape is None else len(shape)

    def removed_mask(self, tensor: gs.Tensor) -> np.ndarray | None:
        """Boolean mask over the tensor's channel axis (True = removed), or None if untouched."""
        if tensor.name not in self._cache:
            layout = self._layouts.get(tensor.name)
            mask = None if layout is None else self._removed_atom(layout.atoms)
            self._cache[tensor.name] = mask if mask is not None and mask.any() else None
        return self._cache[tensor.name]

    def kept(self, tensor: gs.Tensor) -> np.ndarray | None:
        """Positions kept on the tensor's channel axis, or None when nothing is removed."""
        mask = self.removed_mask(tensor)
        return None if mask is None else np.flatnonzero(~mask)

    @staticmethod
    def const(tensor: gs.Tensor | None) -> np.ndarray | None:
        """A constant's values; for one behind DequantizeLinear, its stored (quantized) values, whose
        shape is the float weight's."""
        if isinstance(tensor, gs.Constant):
            return np.asarray(tensor.values)
        return quantized_constant_values(tensor)

    @classmethod
    def required_const(cls, node: gs.Node, index: int) -> np.ndarray:
        """Input ``index`` of ``node`` as constant values; analysis only tracks channels through it
        when it is one, so its absence at surgery is our bug."""
        values = cls.const(node.inputs[index])
        if values is None:
            raise AnalysisBug(f"onnxprune bug: input {index} of {describe(node)} is not a constant at surgery")
        return values

    @staticmethod
    def replace_input(node: gs.Node, index: int, values: np.ndarray) -> None:
        """Give ``node`` new constant values at input ``index`` without touching other users."""
        old = node.inputs[index]
        values = np.ascontiguousarray(values.astype(np.asarray(old.values).dtype, copy=False))
        if len(old.outputs) <= 1:
            old.values = values
        else:
            node.inputs[index] = gs.Constant(f"{old.name}__{node.name}", values)


class OpHandler:
    """Default behaviour: the op is not understood, so channels that reach it are pinned.

    ``role``: what the op's output channels are when it creates them: ``"filter"`` (conv filters),
    ``"linear"`` (columns of a fully connected layer: MLP neurons, attention heads) or ``"other"``.
    A group is prunable when filters or linear layers produce it. ``follows_units``: the handler
    understands layouts whose units span several channels (attention heads, ``Layout.unit_axis``);
    any other handler that meets one freezes it. ``column_step``: the output-channel count the op's
    onnxruntime CPU kernel runs in multiples of whatever the CPU (a fact of the kernel, which
    ``round_to`` 'auto' keeps the counts of the groups it produces on: ``graphops.kernel_steps``);
    None where the step is the CPU's, measured or its vector width (the NCHWc conv blocks).
    """

    role = "other"
    follows_units = False
    column_step: int | None = None

    def propagate(self, node: gs.Node, ctx: AnalysisContext) -> None:
        ctx.pin_inputs(node, f"consumed by unsupported op {describe(node)}")

    def macs(self, node: onnx.NodeProto, shape: Callable[[str], tuple[int, ...]]) -> int:
        """Multiply-accumulates of one run of ``node``, given the static shape of any of its
        tensors (``graphops.cost``); 0 for ops that do not sum products."""
        return 0

    def linear_form(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> LinearForm | str:
        """How ``node`` maps its data input by a constant weight (``LinearForm``), or why it cannot be
        refit as such a map (a handler of role "filter" or "linear" gives one or the other)."""
        return "not a linear layer"

    def parameter_inputs(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> tuple[int, ...]:
        """The inputs that are learnt weights when they are float constants (the round trip trains and
        writes back those, and keeps every other constant as it is)."""
        return ()

    def statistics_inputs(self, node: onnx.NodeProto) -> tuple[int, ...]:
        """The inputs that are running statistics (re-estimated from data, never trained)."""
        return ()

    def filter_count(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> int | None:
        """Filters (output channels) an op of role "filter" makes with its constant weight; None for
        other ops and for a weight computed at run time (the report's per-layer filter counts)."""
        return None

    def channels_apart(self, node: onnx.NodeProto, constant_shape: ConstantShape) -> bool:
        """Each output channel reads only its own input channels (a depthwise conv; attention's per-head
        product of two activations), so removing channels cuts its MACs by the outputs' share alone."""
        return False

    def apply(self, node: gs.Node, ctx: SurgeryContext) -> None:
        """Slice this node's constants and attributes; most ops need nothing."""

    def mask(self, node: gs.Node, ctx: SurgeryContext) -> None:
        """Zero the weights that read removed channels (only ops that sum over channels)."""

    def output_shapes(self, node: onnx.NodeProto, shape: Callable[[str], Shape | None]) -> list[Shape | None]:
        """Output shapes onnx's shape inference cannot give (onnxruntime's contrib ops, which onnx has
        no schema for), from the input shapes (``shape`` of an input name, None when unknown)."""
        return []


_REGISTRY: dict[str, OpHandler] = {}
_UNKNOWN = OpHandler()
_Handler = TypeVar("_Handler", bound=OpHandler)
# Handlers for ops of other packages (a custom op, a contrib domain): an entry point in this group
# named for the op type, whose object is an ``OpHandler`` subclass, e.g. in the plugin's pyproject.toml
#   [project.entry-points."onnxprune.op_handlers"]
#   MyScale = "my_package.handlers:MyScaleHandler"
# (see docs/ARCHITECTURE.md, "Where to add"). Loaded once, the first time a handler is asked for.
PLUGIN_GROUP = "onnxprune.op_handlers"
_plugins_loaded = False


# onnxruntime's contrib ops (the fused transformer ops its optimizer writes) are registered as
# "com.microsoft.Attention": a custom domain's op is never mistaken for a standard op of the same name.
CONTRIB_DOMAIN = "com.microsoft"


def qualified_op(op_type: str, domain: str | None = "") -> str:
    """The registry key of an op: its type, prefixed by its domain outside the standard one."""
    return op_type if domain in (None, "", "ai.onnx") else f"{domain}.{op_type}"


def _add(op_type: str, handler: OpHandler, source: str) -> None:
    existing = _REGISTRY.get(op_type)
    if existing is not None:
        raise DuplicateRegistration(
            f"op type '{op_type}' already has a handler ({type(existing).__qualname__}); "
            f"{source} registers {type(handler).__qualname__} for it too"
        )
    _REGISTRY[op_type] = handler


def register(*op_types: str) -> Callable[[type[_Handler]], type[_Handler]]:
    """Class decorator: one instance of the handler serves every op type named (each op type once)."""

    def decorate(cls: type[_Handler]) -> type[_Handler]:
        instance = cls()
        for op_type in op_types:
            _add(op_type, instance, f"{cls.__module__}.{cls.__qualname__}")
        return cls

    return decorate


def load_plugins() -> None:
    """Register the handlers of the ``onnxprune.op_handlers`` entry points (once per process)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    handlers: list[tuple[str, OpHandler, str]] = []
    for point in entry_points(group=PLUGIN_GROUP):
        handler = point.load()
        if not (isinstance(handler, type) and issubclass(handler, OpHandler)):
            raise GraphOpsError(
                f"entry point '{point.name} = {point.value}' ({PLUGIN_GROUP}) is not an OpHandler subclass"
            )
        handlers.append((point.name, handler(), f"entry point '{point.name} = {point.value}'"))
    for op_type, instance, source in handlers:  # all or none: a bad plugin fails every analysis, loudly
        _add(op_type, instance, source)
    _plugins_loaded = True


def handler_for(op_type: str, domain: str | None = "") -> OpHandler:
    load_plugins()
    return _REGISTRY.get(qualified_op(op_type, domain), _UNKNOWN)


def knows(op_type: str, domain: str | None = "") -> bool:
    """Whether a handler is registered for the op (an unknown op pins the channels that reach it)."""
    load_plugins()
    return qualified_op(op_type, domain) in _REGISTRY


def registered_op_types() -> list[str]:
    load_plugins()
    return sorted(_REGISTRY)
