"""Loading and static validation of untrusted models.

Uploaded models are hostile until proven otherwise. Parsing never follows external-data paths,
and ``validate_model`` rejects, before anything runs the model, whatever would make onnxruntime
or our own passes allocate or compute without bound (tensors whose declared size does not match
their data, constant shapes that generate gigabytes, constant-count Loops of millions of iterations,
local functions that expand exponentially or nest without end: ``graphops.expansion``), walking
subgraphs and model-local function bodies alike, or that we cannot prune (custom domains, convs inside
control flow, bfloat16 weights, opsets onnxruntime does not run). float16 models are pruned in
their own precision.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, numpy_helper

from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.expansion import measure_expansion
from onnxprune.graphops.ops import handler_for
from onnxprune.graphops.ops.base import CONTRIB_DOMAIN, LAYER_ROLES
from onnxprune.graphops.versions import supported_ir_versions, supported_opsets

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})
NOTHING_TO_PRUNE = "model has no Conv, ConvTranspose, Gemm or MatMul to prune"
# ONNX's Conv takes no bfloat16 before opset 22 and onnxruntime's CPU provider runs none: such a
# model could be neither verified nor benchmarked. float16 runs, and is pruned as it is.
UNRUNNABLE_PRECISION: dict[int, str] = {TensorProto.BFLOAT16: "bfloat16"}
Scope = onnx.GraphProto | onnx.FunctionProto  # a graph or a model-local function's body


@dataclass(frozen=True)
class ValidationLimits:
    """Upper bounds on what a model may make us (or onnxruntime) allocate."""

    max_nodes: int = 200_000  # counted with every call of a model-local function inlined
    max_initializer_bytes: int = 2 * 1024**3
    max_generated_elements: int = 2**28
    max_tensor_elements: int = 2**31
    # Scopes (If/Loop/Scan subgraphs, function bodies) nested inside each other; real exports nest a
    # few levels (a dynamo export one per module depth), and the checkers recurse once per level.
    max_nesting_depth: int = 64
    # A Loop whose trip count is a constant runs its body that many times (3e7 iterations of a
    # one-node body take ~80 s); no CNN runs a constant loop anywhere near this long.
    max_loop_iterations: int = 100_000


def load_model(path: str | Path, *, max_bytes: int | None = None) -> onnx.ModelProto:
    """Parse a single-file ONNX model; raise ``ModelRejected`` with a one-line reason otherwise."""
    return parse_model(read_model_file(path, max_bytes=max_bytes))


def read_model_file(path: str | Path, *, max_bytes: int | None = None) -> bytes:
    """The bytes of a model file, for :func:`parse_model` (and a hash of the same bytes, read once)."""
    path = Path(path)
    if not path.is_file():
        raise ModelRejected(f"model file {path.name!r} does not exist or is not a regular file")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ModelRejected(f"model file is {size} bytes, more than the limit of {max_bytes} bytes")
    with path.open("rb") as handle:
        data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise ModelRejected(f"model file is larger than the limit of {max_bytes} bytes")
    return data


def parse_model(data: bytes) -> onnx.ModelProto:
    """Parse serialized model bytes without touching the file system (external data is refused)."""
    if not data:
        raise ModelRejected("model file is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        if _looks_like_model_header(data):
            raise ModelRejected(
                f"model file is truncated or corrupt (protobuf decode failed: {_one_line(error)})"
            ) from None
        raise ModelRejected("file is not an ONNX model (it does not parse as an ONNX protobuf)") from None
    if not model.HasField("graph") or not model.ir_version:
        raise ModelRejected("file is not an ONNX model (no graph or IR version)")
    for where, tensor in _all_model_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            raise ModelRejected(
                f"tensor {tensor.name!r} ({where}) stores its data in an external file; "
                "only single-file models are accepted"
            )
    return model


# Integer-arithmetic ops of onnxruntime's QOperator format: their weights are int8 with scales fused in.
# (com.microsoft adds QLinearAdd, QLinearConcat, ... : every QLinear* op counts.)
QOPERATOR_OPS = frozenset({"QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger"})


def validate_model(model: onnx.ModelProto, limits: ValidationLimits = ValidationLimits()) -> None:
    """Static checks of a hostile model; raise ``ModelRejected`` naming the node or tensor at fault."""
    _check_versions(model)
    quantized = next(
        (node for node in model.graph.node if node.op_type in QOPERATOR_OPS or node.op_type.startswith("QLinear")), None
    )
    if quantized is not None:
        raise ModelRejected(
            f"model is quantized in the QOperator format ({quantized.op_type} node {quantized.name!r}), which "
            "onnxprune does not prune: prune the float model, then quantize it with --quantize int8"
        )
    expansion = measure_expansion(model, limits.max_nodes, limits.max_nesting_depth)
    if expansion.nodes > limits.max_nodes:
        if not model.functions:
            raise ModelRejected(f"model has {expansion.nodes} nodes, more than the limit of {limits.max_nodes}")
        raise ModelRejected(
            f"model has more than {limits.max_nodes} nodes once its local functions are inlined "
            f"(the limit is {limits.max_nodes} nodes)"
        )
    if expansion.depth > limits.max_nesting_depth:
        raise ModelRejected(
            f"model nests subgraphs and function calls more than {limits.max_nesting_depth} levels deep "
            f"(the limit is {limits.max_nesting_depth})"
        )
    if len(model.graph.sparse_initializer):
        raise ModelRejected(f"sparse initializer {model.graph.sparse_initializer[0].values.name!r} is not supported")
    total_bytes = 0
    for where, tensor in _all_model_tensors(model):
        total_bytes += _checked_tensor_bytes(tensor, where, limits)
        if total_bytes > limits.max_initializer_bytes:
            raise ModelRejected(
                f"initializers and constants exceed the limit of {limits.max_initializer_bytes} bytes "
                f"(reached at tensor {tensor.name!r})"
            )
    local = {(function.domain, function.name) for function in model.functions}
    for node in _all_nodes(model.graph):
        _check_node(node, local)
    for function in model.functions:  # local functions: their bodies run like the graph's own nodes
        for node in _all_nodes(function):
            _check_node(node, local)
    _check_element_types(model.graph)
    _check_generated_sizes(model.graph, _constant_tensors(model.graph), limits)
    for function in model.functions:
        _check_generated_sizes(function, _constant_tensors(function), limits)
    bodies = [model.graph.node, *(function.node for function in model.functions)]  # inlined before pruning
    if not any(handler_for(node.op_type, node.domain).role in LAYER_ROLES for nodes in bodies for node in nodes):
        raise ModelRejected(NOTHING_TO_PRUNE)


def _check_versions(model: onnx.ModelProto) -> None:
    low_ir, high_ir = supported_ir_versions()
    opsets = supported_opsets()
    if not low_ir <= model.ir_version <= high_ir:
        raise ModelRejected(
            f"model IR version {model.ir_version} is not supported by onnxruntime (supported: {low_ir}-{high_ir})"
        )
    declared: dict[str, int] = {}
    for opset in model.opset_import:
        domain = "" if opset.domain == "ai.onnx" else opset.domain
        declared[domain] = opset.version
        if domain not in ALLOWED_DOMAINS:
            continue  # a custom domain is rejected by the node that uses it
        low, high = opsets[domain]
        if not low <= opset.version <= high:
            name = domain or "ai.onnx"
            raise ModelRejected(f"model uses {name} opset {opset.version}; onnxruntime supports opsets {low}-{high}")
    if "" not in declared:
        raise ModelRejected("model declares no ai.onnx opset")


def inline_local_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every call of a model-local function replaced by the function's body (onnx's
    inliner), so that the pruner and the checker see plain ops. Call it after ``validate_model``, which
    bounds what inlining expands to."""
    if not model.functions:
        return model
    from onnx import inliner

    inlined = inliner.inline_local_functions(model)
    del inlined.functions[:]
    used = {node.domain for node in _all_nodes(inlined.graph)}
    kept = [o for o in inlined.opset_import if o.domain in ALLOWED_DOMAINS or o.domain in used]
    del inlined.opset_import[:]
    inlined.opset_import.extend(kept)  # the functions' own domains go with them
    return inlined


def _check_node(node: onnx.NodeProto, local: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset()) -> None:
    if (node.domain, node.op_type) in local:
        return  # a call of a model-local function: its body is checked node by node
    # onnxruntime runs its contrib ops (the fused ops its transformer optimizer writes); one without
    # a handler pins the channels that reach it, like any unknown op.
    if node.domain not in ALLOWED_DOMAINS and node.domain != CONTRIB_DOMAIN:
        raise ModelRejected(
            f"node {_node_label(node)} uses op {node.op_type!r} from custom domain {node.domain!r}; "
            "only standard ONNX ops and onnxruntime's com.microsoft ops are supported"
        )
    if node.op_type in CONTROL_FLOW_OPS:
        for attr in node.attribute:
            for subgraph in _attribute_graphs(attr):
                inner = next(
                    (n for n in _all_nodes(subgraph) if handler_for(n.op_type, n.domain).role == "filter"), None
                )
                if inner is not None:
                    raise ModelRejected(
                        f"{node.op_type} node {_node_label(node)} has {inner.op_type} inside its "
                        f"{attr.name!r} subgraph; control flow around prunable convs is not supported"
                    )
    for attr in node.attribute:
        if attr.type in (onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.SPARSE_TENSORS):
            raise ModelRejected(f"node {_node_label(node)} has a sparse tensor attribute, which is not supported")


def _check_element_types(graph: onnx.GraphProto) -> None:
    for value in list(graph.input) + list(graph.output):
        elem_type = value.type.tensor_type.elem_type
        if elem_type in UNRUNNABLE_PRECISION:
            raise ModelRejected(
                f"{UNRUNNABLE_PRECISION[elem_type]} models cannot be run by onnxruntime on CPU to verify them; "
                f"convert to float16 or float32 (tensor {value.name!r})"
            )
    for _, tensor in _all_tensors(graph):
        if tensor.data_type in UNRUNNABLE_PRECISION:
            raise ModelRejected(
                f"{UNRUNNABLE_PRECISION[tensor.data_type]} models cannot be run by onnxruntime on CPU to verify "
                f"them; convert to float16 or float32 (tensor {tensor.name!r})"
            )


def _check_generated_sizes(scope: Scope, constants: dict[str, TensorProto], limits: ValidationLimits) -> None:
    """Reject ops whose constant arguments would generate a huge tensor, or loop a long time, at run time."""

    def small_int_values(name: str) -> list[int] | None:
        tensor = constants.get(name)
        if tensor is None or _element_count(tensor.dims) > 64:
            return None
        if tensor.data_type not in (TensorProto.INT64, TensorProto.INT32):
            return None
        return [int(v) for v in numpy_helper.to_array(tensor).reshape(-1)]

    for node in _all_nodes(scope):
        elements: int | None = None
        if node.op_type in ("ConstantOfShape", "Expand") and node.input:
            shape_input = node.input[0] if node.op_type == "ConstantOfShape" else node.input[-1]
            values = small_int_values(shape_input)
            if values is not None:
                elements = math.prod(abs(v) for v in values)
        elif node.op_type == "Tile" and len(node.input) >= 2:
            repeats = small_int_values(node.input[1])
            if repeats is not None:
                data = constants.get(node.input[0])
                elements = math.prod(abs(v) for v in repeats) * (_element_count(data.dims) if data else 1)
        elif node.op_type == "Range" and len(node.input) == 3:
            elements = _range_length(node, [constants.get(name) for name in node.input])
        elif node.op_type == "Loop" and node.input and node.input[0]:
            trip_count = small_int_values(node.input[0])
            if trip_count is not None and len(trip_count) == 1 and trip_count[0] > limits.max_loop_iterations:
                raise ModelRejected(
                    f"Loop node {_node_label(node)} has a constant trip count of {trip_count[0]} iterations, "
                    f"more than the limit of {limits.max_loop_iterations}"
                )
        if elements is not None and elements > limits.max_generated_elements:
            raise ModelRejected(
                f"{node.op_type} node {_node_label(node)} would generate {elements} elements, "
                f"more than the limit of {limits.max_generated_elements}"
            )


def _range_length(node: onnx.NodeProto, tensors: list[TensorProto | None]) -> int | None:
    present = [t for t in tensors if t is not None]
    if len(present) != len(tensors) or any(_element_count(t.dims) != 1 for t in present):
        return None
    start, limit, delta = (float(numpy_helper.to_array(t).reshape(-1)[0]) for t in present)
    if delta == 0 or not all(math.isfinite(v) for v in (start, limit, delta)):
        raise ModelRejected(f"Range node {_node_label(node)} has a zero or non-finite delta or bound")
    return max(math.ceil((limit - start) / delta), 0)


def _checked_tensor_bytes(tensor: TensorProto, where: str, limits: ValidationLimits) -> int:
    """Bytes a tensor really holds, after checking they match its declared dims and type."""
    if any(d < 0 for d in tensor.dims):
        raise ModelRejected(f"tensor {tensor.name!r} ({where}) has a negative dimension {list(tensor.dims)}")
    if tensor.HasField("segment"):
        raise ModelRejected(f"tensor {tensor.name!r} ({where}) is segmented, which is not supported")
    count = _element_count(tensor.dims)
    if count > limits.max_tensor_elements:
        raise ModelRejected(
            f"tensor {tensor.name!r} ({where}) declares {count} elements, more than the limit of "
            f"{limits.max_tensor_elements}"
        )
    if tensor.data_type == TensorProto.STRING:
        if len(tensor.string_data) != count:
            raise _size_mismatch(tensor, where, count, f"{len(tensor.string_data)} strings")
        return sum(len(s) for s in tensor.string_data)
    if tensor.data_type not in _TYPED_FIELD:
        raise ModelRejected(f"tensor {tensor.name!r} ({where}) has unsupported element type {tensor.data_type}")
    bits = _ELEMENT_BITS.get(tensor.data_type, 8 * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)
    expected_bytes = (count * bits + 7) // 8
    if tensor.HasField("raw_data"):
        if len(tensor.raw_data) != expected_bytes:
            raise _size_mismatch(tensor, where, count, f"{len(tensor.raw_data)} bytes of raw data")
        return expected_bytes
    field_name, per_element = _TYPED_FIELD[tensor.data_type]
    stored = len(getattr(tensor, field_name))
    expected_values = math.ceil(count * per_element)
    if stored != expected_values:
        raise _size_mismatch(tensor, where, count, f"{stored} values in {field_name}")
    return expected_bytes


def _size_mismatch(tensor: TensorProto, where: str, count: int, found: str) -> ModelRejected:
    type_name = TensorProto.DataType.Name(tensor.data_type).lower()
    return ModelRejected(
        f"tensor {tensor.name!r} ({where}) declares dims {list(tensor.dims)} ({count} {type_name} elements) "
        f"but holds {found}"
    )


# Where typed (non-raw) data lives, and how many stored values each element takes.
_TYPED_FIELD: dict[int, tuple[str, float]] = {
    TensorProto.FLOAT: ("float_data", 1),
    TensorProto.DOUBLE: ("double_data", 1),
    TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.COMPLEX128: ("double_data", 2),
    TensorProto.INT64: ("int64_data", 1),
    TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1),
    TensorProto.INT32: ("int32_data", 1),
    TensorProto.INT16: ("int32_data", 1),
    TensorProto.INT8: ("int32_data", 1),
    TensorProto.UINT16: ("int32_data", 1),
    TensorProto.UINT8: ("int32_data", 1),
    TensorProto.BOOL: ("int32_data", 1),
    TensorProto.FLOAT16: ("int32_data", 1),
    TensorProto.BFLOAT16: ("int32_data", 1),
    TensorProto.INT4: ("int32_data", 0.5),
    TensorProto.UINT4: ("int32_data", 0.5),
}
_ELEMENT_BITS: dict[int, int] = {TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.BOOL: 8}


def _element_count(dims: Iterable[int]) -> int:
    return math.prod(int(d) for d in dims)


def _constant_tensors(scope: Scope) -> dict[str, TensorProto]:
    """Initializers and single-tensor Constant outputs of a graph or function body and of its
    subgraphs, by tensor name (ONNX names are unique across nested scopes)."""
    constants: dict[str, TensorProto] = {}
    pending = [scope]
    while pending:
        current = pending.pop()
        if isinstance(current, onnx.GraphProto):
            constants.update((init.name, init) for init in current.initializer)
        for node in current.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                tensor = _constant_node_tensor(node)
                if tensor is not None:
                    constants[node.output[0]] = tensor
            for attr in node.attribute:
                pending.extend(_attribute_graphs(attr))
    return constants


def _constant_node_tensor(node: onnx.NodeProto) -> TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            tensor: TensorProto = attr.t  # onnx's stub types the field as Any
            return tensor
        if attr.name == "value_int":
            return numpy_helper.from_array(np.array(attr.i, dtype=np.int64))
        if attr.name == "value_ints":
            return numpy_helper.from_array(np.array(list(attr.ints), dtype=np.int64))
        if attr.name == "value_float":
            return numpy_helper.from_array(np.array(attr.f, dtype=np.float32))
        if attr.name == "value_floats":
            return numpy_helper.from_array(np.array(list(attr.floats), dtype=np.float32))
    return None


def _attribute_graphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    if attr.type == onnx.AttributeProto.GRAPHS:
        return list(attr.graphs)
    return []


def _all_nodes(scope: Scope) -> Iterator[onnx.NodeProto]:
    """Every node of a graph (or function body) and of its subgraphs, iteratively (a deep nesting
    cannot blow the stack)."""
    pending = [scope]
    while pending:
        current = pending.pop()
        for node in current.node:
            yield node
            for attr in node.attribute:
                pending.extend(_attribute_graphs(attr))


def _all_model_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    """Every stored tensor of the graph and of the model-local functions' bodies."""
    yield from _all_tensors(model.graph)
    for function in model.functions:
        for where, tensor in _all_tensors(function):
            yield f"{where} in function {function.name!r}", tensor


def _all_tensors(scope: Scope) -> Iterator[tuple[str, TensorProto]]:
    """Every stored tensor (initializers and tensor attributes), with where it was found."""
    pending = [scope]
    while pending:
        current = pending.pop()
        if isinstance(current, onnx.GraphProto):
            for init in current.initializer:
                yield "initializer", init
            for sparse in current.sparse_initializer:
                yield "sparse initializer", sparse.values
        for node in current.node:
            for attr in node.attribute:
                where = f"attribute {attr.name!r} of node {_node_label(node)}"
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield where, attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    for tensor in attr.tensors:
                        yield where, tensor
                pending.extend(_attribute_graphs(attr))


def _node_label(node: onnx.NodeProto) -> str:
    if node.name:
        return repr(node.name)
    return f"<{node.op_type} producing {node.output[0]!r}>" if node.output else f"<unnamed {node.op_type}>"


def _looks_like_model_header(data: bytes) -> bool:
    """A serialized ModelProto starts with field 1 (ir_version, a small varint): ``08 0N``."""
    return len(data) >= 2 and data[0] == 0x08 and 1 <= data[1] <= 20


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:200] if text else type(error).__name__


__all__ = [
    "ValidationLimits",
    "load_model",
    "parse_model",
    "validate_model",
]
