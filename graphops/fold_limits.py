"""Which constant subgraphs onnx-graphsurgeon may evaluate when ``prepare_model`` folds them.

onnx-graphsurgeon evaluates everything computable from constants in onnxruntime sessions and only
afterwards drops results over its ``size_threshold``; it skips a tensor beforehand only when the
tensor's shape is declared, and an uploader's declared shapes are not evidence. A ConstantOfShape
whose shape passes through ``Abs`` (which onnx's inference cannot follow) is therefore allocated
whole (1.6 GB) before being dropped, and a Loop with a constant trip count of 3e7 runs to the end.

So gs asks :class:`FoldGuard` about every node it finds foldable (its ``should_exclude_node``, in
topological order); an excluded node and everything computed from it stay run-time computations.
A node is excluded unless a bound on what it allocates and costs is known:

- nodes with subgraphs (If, Loop, Scan, SequenceMap) never: their cost is their body's times a
  count nobody bounds (gs still flattens an If whose condition folds; ``prepare_model`` then folds
  the branch's nodes, each judged here);
- every output's element count must be bounded, by a rule from the inputs' bounds (exact for
  ConstantOfShape/Expand/Tile/Range of literal arguments, an upper bound for elementwise,
  broadcasting, reshaping and reducing ops), else by onnx's shape inference on the model with its
  declared value_info and output shapes removed; an op without either is excluded;
- no output may exceed ``max(cap, largest input)``: folding a stored weight through Transpose,
  Identity or a Mul by a per-channel scale costs no more than the weight, while a small input that
  grows (ConstantOfShape, Expand, Tile, Range, Resize, Pad, broadcasts, Gather) is held to the cap;
- MatMul/Gemm may multiply-accumulate at most ``max_macs`` times; Conv, ConvTranspose and Einsum
  of constants are never evaluated (no weight is computed by one);
- everything evaluated, together, stays within a budget: ``budget`` elements or four times what the
  model stores, whichever is larger (a 7 KB model cannot fold into gigabytes of constants).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import onnx
import onnx_graphsurgeon as gs
from onnx import shape_inference

from onnxprune.graphops.shapes import skeleton

# One folded tensor that grows from its inputs: 2**23 elements is 32 MB of float32, 3.5 times the
# largest weight ConstantOfShape builds in light_resnet50 (a 512x512x3x3 conv, 2.4M elements).
FOLD_MAX_ELEMENTS = 2**23
# Everything evaluated together (onnxruntime does not hand all of it back: a process folding the
# whole budget peaks about this much higher): light_resnet50 folds 25.6M elements, the weights of a
# whole ResNet-50; 2**25 is 128 MB of float32.
FOLD_BUDGET_ELEMENTS = 2**25
# A model that stores its weights may fold chains of a few ops over each (Transpose, Mul by a scale).
_STORED_MULTIPLE = 4
# Multiply-accumulates of one folded MatMul/Gemm: about a second of one core.
FOLD_MAX_MACS = 2**30

_UNARY = frozenset(
    "Abs Acos Acosh Asin Asinh Atan Atanh BitwiseNot Cast CastLike Ceil Celu Clip Cos Cosh Dropout Elu Erf "
    "Exp Floor Gelu HardSigmoid HardSwish Hardmax Identity IsInf IsNaN LeakyRelu Log LogSoftmax "
    "LpNormalization Mish Neg Not Reciprocal Relu Round Selu Shrink Sigmoid Sign Sin Sinh Softmax Softplus "
    "Softsign Sqrt Tan Tanh ThresholdedRelu Trilu".split()
)
# Output exactly as large as the first input (the data).
_SAME_SIZE = _UNARY | frozenset(
    "BatchNormalization DepthToSpace Flatten InstanceNormalization LayerNormalization LRN "
    "MeanVarianceNormalization Reshape SpaceToDepth Squeeze Transpose Unsqueeze".split()
)
# Output no larger than the first input, whatever the other inputs say.
_SHRINKING = frozenset(
    "ArgMax ArgMin GlobalAveragePool GlobalMaxPool ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax "
    "ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Slice Split".split()
)
# Output no larger than the product of the inputs (a broadcast of all of them against each other).
_BROADCASTING = frozenset(
    "Add And BitShift BitwiseAnd BitwiseOr BitwiseXor Div Equal Gather GatherElements GatherND Greater "
    "GreaterOrEqual Less LessOrEqual Max Mean Min Mod Mul Or Pow PRelu Sub Sum Where Xor".split()
)
_CONTRACTING = frozenset({"MatMul", "Gemm"})
_NEVER = frozenset({"Conv", "ConvTranspose", "Einsum", "ConvInteger", "MatMulInteger"})
_SMALL_VALUES = 64  # literal shape and repeat vectors are read only up to this many elements
# A loose bound (a reduction, a broadcast) above this many elements is tightened by shape inference,
# so that the budget is not spent on what is not allocated.
_TIGHTEN_ABOVE = 2**20


@dataclass
class _Totals:
    """Elements folded so far, by output tensor (gs may ask about a node more than once)."""

    limit: int
    by_tensor: dict[str, int] = field(default_factory=dict)
    total: int = 0

    def fits(self, outputs: Mapping[str, int]) -> bool:
        added = sum(count - self.by_tensor.get(name, 0) for name, count in outputs.items())
        return self.total + added <= self.limit

    def add(self, outputs: Mapping[str, int]) -> None:
        for name, count in outputs.items():
            self.total += count - self.by_tensor.get(name, 0)
            self.by_tensor[name] = count


@dataclass
class FoldGuard:
    """gs's ``should_exclude_node`` for one graph or function body (call :meth:`excludes`)."""

    totals: _Totals
    model: onnx.ModelProto | None = None  # for shape inference; None in a function body
    max_elements: int = FOLD_MAX_ELEMENTS
    max_macs: int = FOLD_MAX_MACS
    bounds: dict[str, int] = field(default_factory=dict)  # elements of each output judged foldable
    _inferred: dict[str, int] | None = None

    @classmethod
    def for_model(cls, model: onnx.ModelProto, budget: int = FOLD_BUDGET_ELEMENTS) -> FoldGuard:
        stored = sum(math.prod(init.dims) for init in model.graph.initializer)
        return cls(_Totals(max(budget, _STORED_MULTIPLE * stored)), model)

    def for_function(self) -> FoldGuard:
        """A guard for a function body: its own tensor names, the model's budget."""
        return FoldGuard(self.totals, None, self.max_elements, self.max_macs)

    def excludes(self, node: gs.Node) -> bool:
        if node.op in _NEVER or any(True for _ in node.subgraphs()):
            return True
        inputs = [tensor for tensor in node.inputs if not tensor.is_empty()]
        sizes = [self._bound(tensor) for tensor in inputs]
        if any(size is None for size in sizes):
            return True
        known = [size for size in sizes if size is not None]
        largest = max(known, default=0)
        outputs: dict[str, int] = {}
        rule, exact = _rule_bound(node, inputs, known)
        for output in node.outputs:
            count = rule
            if count is None or (not exact and count > _TIGHTEN_ABOVE):
                inferred = self._inferred_count(output.name)  # exact, where onnx's inference knows it
                count = inferred if count is None or inferred is None else min(count, inferred)
            if count is None or count > max(self.max_elements, largest):
                return True
            outputs[output.name] = count
        if node.op in _CONTRACTING and len(known) >= 2:
            # (b*m*k)(b*k*n)(b*m*n) = (b*m*n*k)**2 for A @ B: the square root bounds the MACs, batched or not.
            macs = math.isqrt(known[0] * known[1] * max(outputs.values(), default=0))
            if macs > self.max_macs:
                return True
        if not self.totals.fits(outputs):
            return True
        self.totals.add(outputs)
        self.bounds.update(outputs)
        return False

    def _bound(self, tensor: gs.Tensor) -> int | None:
        if isinstance(tensor, gs.Constant):
            return math.prod(int(d) for d in tensor.shape)
        if tensor.name in self.bounds:
            return self.bounds[tensor.name]
        return self._inferred_count(tensor.name)

    def _inferred_count(self, name: str) -> int | None:
        if self.model is None:
            return None
        if self._inferred is None:
            self._inferred = _inferred_element_counts(self.model)
        return self._inferred.get(name)


def _rule_bound(node: gs.Node, inputs: Sequence[gs.Tensor], sizes: Sequence[int]) -> tuple[int | None, bool]:
    """A bound on each output's elements from the inputs' bounds and literal arguments, and whether
    it is exact (given exact inputs); None where the op has no rule."""
    op = node.op
    if op in _SAME_SIZE and sizes:
        return sizes[0], True
    if op in _SHRINKING and sizes:
        return sizes[0], False
    if op in _BROADCASTING and sizes:
        return math.prod(sizes), False
    if op == "Concat":
        return sum(sizes), True
    if op in ("Shape", "Size"):
        return _SMALL_VALUES, True  # a rank, or one count: small either way
    if op == "ConstantOfShape":
        dims = _literal(inputs, 0)
        return (None if dims is None else math.prod(abs(d) for d in dims)), True
    if op in ("Expand", "Tile") and len(sizes) == 2:
        factors = _literal(inputs, 1)
        return (None if factors is None else sizes[0] * math.prod(abs(d) for d in factors)), False
    if op == "Range":
        values = [_literal(inputs, index) for index in range(3)]
        scalars = [value[0] for value in values if value is not None and len(value) == 1]
        if len(scalars) != 3 or scalars[2] == 0:
            return None, False
        start, limit, delta = scalars
        return max(-((start - limit) // delta), 0), True  # ceil((limit - start) / delta) in integers
    return None, False


def _literal(inputs: Sequence[gs.Tensor], index: int) -> list[int] | None:
    """The values of a small integer constant input (a shape, repeats, a range bound)."""
    if index >= len(inputs) or not isinstance(inputs[index], gs.Constant):
        return None
    tensor = inputs[index]
    if math.prod(int(d) for d in tensor.shape) > _SMALL_VALUES:
        return None
    values = tensor.values
    if values.dtype.kind not in "iu":
        return None
    return [int(v) for v in values.reshape(-1)]


def _inferred_element_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Elements of every tensor whose shape onnx's inference derives on its own: the declared
    value_info and output shapes are dropped first, so a model cannot vouch for its own sizes."""
    light = skeleton(model)
    del light.graph.value_info[:]
    for output in light.graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")
    try:
        inferred = shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - onnx raises many kinds on odd graphs: then nothing is known
        return {}
    counts: dict[str, int] = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
            continue
        dims = tensor_type.shape.dim
        if all(dim.HasField("dim_value") and dim.dim_value >= 0 for dim in dims):
            counts[value.name] = math.prod(dim.dim_value for dim in dims)
    return counts


__all__ = ["FOLD_BUDGET_ELEMENTS", "FOLD_MAX_ELEMENTS", "FOLD_MAX_MACS", "FoldGuard"]
