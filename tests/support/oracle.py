"""The correctness oracle for pruning, and the structure and validity checks every surgery test makes.

Removing a channel must change the model exactly as zeroing that channel's input columns in every
consumer does: ``apply_plan(dep, plan)`` and ``mask_removed_channels(dep, plan)`` must give the same
outputs (relative error below ``rtol``) on the same random inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxprune.graphops.dependency import DependencyGraph, analyze
from onnxprune.graphops.loading import load_model
from onnxprune.graphops.masking import mask_removed_channels
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.prepare import prepare_model
from onnxprune.graphops.shapes import resolve_input_shapes
from onnxprune.graphops.surgery import apply_plan
from onnxprune.graphops.unrounded import unrounded_model

InputShapes = Mapping[str, Sequence[int]] | None
ModelSource = str | Path | onnx.ModelProto

# Relative errors are taken against at least this magnitude, so all-zero outputs compare sanely.
EPS = 1e-12

_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
}


@dataclass
class Analysed:
    """A model after load -> prepare -> analyze, with the concrete input shapes it runs at."""

    original: onnx.ModelProto
    prepared: onnx.ModelProto
    dep: DependencyGraph
    input_shapes: dict[str, list[int]]


@dataclass
class OracleResult:
    pruned: onnx.ModelProto
    masked: onnx.ModelProto
    pruned_outputs: list[np.ndarray]
    masked_outputs: list[np.ndarray]


def as_model(source: ModelSource) -> onnx.ModelProto:
    if isinstance(source, onnx.ModelProto):
        return source
    return load_model(source)


def analyse(source: ModelSource, input_shapes: InputShapes = None) -> Analysed:
    original = as_model(source)
    shapes = resolve_input_shapes(original, input_shapes)
    prepared = prepare_model(original, shapes)
    return Analysed(original, prepared, analyze(prepared, shapes), shapes)


def random_feeds(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]], seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs at the given shapes (every real input of ``model``); integer
    inputs 0 or 1."""
    rng = np.random.default_rng(seed)
    initializers = {init.name for init in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        dtype = _NP_TYPES[inp.type.tensor_type.elem_type]
        if np.issubdtype(dtype, np.integer):  # token ids, attention masks: 0 or 1, as workers.benchmark
            feeds[inp.name] = rng.integers(0, 2, size=list(input_shapes[inp.name])).astype(dtype)
            continue
        feeds[inp.name] = rng.standard_normal(list(input_shapes[inp.name])).astype(dtype)
    return feeds


def session(model: onnx.ModelProto, *, optimize: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # small models; see tests/conftest.py on threads in the test processes
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_model(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, optimize: bool = True) -> list[np.ndarray]:
    """Outputs in onnxruntime; ``optimize=False`` runs each op as written (its graph rewrites can
    paper over an invalid attribute, e.g. a wrong Conv ``group``)."""
    return [np.asarray(out) for out in session(model, optimize=optimize).run(None, dict(feeds))]


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    """max|a - b| / max(max|a|, eps): one number per output, scale-free."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if expected.size == 0:
        return 0.0
    return float(np.max(np.abs(expected - actual)) / max(float(np.max(np.abs(expected))), EPS))


def assert_outputs_close(
    expected: Sequence[np.ndarray], actual: Sequence[np.ndarray], names: Sequence[str], rtol: float, atol: float = 0.0
) -> None:
    """Each output within ``rtol`` of its largest magnitude, or within ``atol`` (``workers.output_compare``)."""
    assert len(expected) == len(actual) == len(names)
    for name, want, have in zip(names, expected, actual):
        assert want.shape == have.shape, f"output {name!r}: shape {have.shape}, expected {want.shape}"
        assert np.isfinite(want).all(), f"output {name!r} of the reference is not finite"
        error = relative_error(want, have)
        difference = float(np.max(np.abs(np.asarray(want, np.float64) - have))) if want.size else 0.0
        assert error < rtol or difference <= atol, (
            f"output {name!r}: relative error {error:.3g} >= {rtol:g}, largest difference {difference:.3g} > {atol:g}"
        )


def assert_valid(model: onnx.ModelProto) -> None:
    """The checker with full shape inference accepts the model, and onnxruntime loads it."""
    onnx.checker.check_model(model, full_check=True)
    session(model)


def output_names(model: onnx.ModelProto) -> list[str]:
    return [out.name for out in model.graph.output]


def initializer_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def conv_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Weight of every Conv / ConvTranspose whose weight is an initializer, by node name (for a QDQ
    weight, the quantized initializer behind its DequantizeLinear: the same shape)."""
    arrays = initializer_arrays(model)
    behind = {
        node.output[0]: node.input[0]
        for node in model.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in arrays
    }
    return {
        node.name: arrays[behind.get(node.input[1], node.input[1])]
        for node in model.graph.node
        if node.op_type in ("Conv", "ConvTranspose") and behind.get(node.input[1], node.input[1]) in arrays
    }


def conv_out_channels(node: onnx.NodeProto, weight: np.ndarray) -> int:
    if node.op_type == "ConvTranspose":
        return int(weight.shape[1]) * _group(node)
    return int(weight.shape[0])


def _group(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "group":
            return int(attr.i)
    return 1


def assert_structure_follows_plan(
    dep: DependencyGraph, plan: PruningPlan, before: onnx.ModelProto, after: onnx.ModelProto
) -> None:
    """Conv weights shrank as the plan says; depthwise convs keep ``group`` equal to their channels,
    other convs keep their ``group``."""
    groups = {group.id: group for group in dep.groups}
    nodes_before = {node.name: node for node in before.graph.node}
    nodes_after = {node.name: node for node in after.graph.node}
    weights_before, weights_after = conv_weights(before), conv_weights(after)
    removed_any = False
    for group_id, keep in plan.keep.items():
        group = groups[group_id]
        assert 1 <= len(keep) <= group.channels, f"group {group_id}: keeps {len(keep)} of {group.channels}"
        assert list(keep) == sorted(set(keep)), f"group {group_id}: kept indices not sorted and unique"
        removed_any |= len(keep) < group.channels
    kept_classes = {group_id: set(keep) for group_id, keep in plan.keep.items()}
    for producer in dep.producers:
        if producer.node not in weights_before:
            continue
        assert producer.node in nodes_after, f"producer {producer.node!r} vanished"
        # Each output position of a filter op holds one channel class; it stays iff its class is kept
        # (a shuffled or multiplied layout holds a class more than once).
        group_index, classes = dep.classes_of(producer.atoms)
        expected = sum(
            1
            for g, c in zip(group_index.tolist(), classes.tolist())
            if c in kept_classes.get(dep.groups[g].id, range(dep.groups[g].channels))
        )
        new = conv_out_channels(nodes_after[producer.node], weights_after[producer.node])
        assert new == expected, f"{producer.node}: {new} output channels, the plan keeps {expected} of its channels"
    for name, node in nodes_after.items():
        if name not in weights_after or name not in nodes_before:
            continue
        # Conv weight [C_out, C_in / group, ...], ConvTranspose [C_in, C_out / group, ...]: one channel
        # per conv group and as many groups as channels is depthwise, whose group follows the channels.
        # A Conv with one input channel per group is depthwise with a multiplier (C_out / group filters
        # per channel): its group follows the input channels.
        old_weight = weights_before[name]
        old_group, new_group = _group(nodes_before[name]), _group(node)
        if old_group > 1 and old_group == old_weight.shape[0] and old_weight.shape[1] == 1:
            new_channels = int(weights_after[name].shape[0])
            assert new_group == new_channels, f"depthwise {name}: group={new_group}, {new_channels} channels"
        elif node.op_type == "Conv" and old_group > 1 and old_weight.shape[1] == 1:
            multiplier = old_weight.shape[0] // old_group
            new_channels = int(weights_after[name].shape[0]) // multiplier
            assert new_group == new_channels, (
                f"depthwise x{multiplier} {name}: group={new_group}, {new_channels} inputs"
            )
        else:
            assert new_group == old_group, f"{name}: group {old_group} became {new_group}"
    if removed_any:
        assert parameter_count(after) < parameter_count(before), "channels were removed but no weight shrank"


def parameter_count(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(init.dims)) for init in model.graph.initializer)


def assert_prune_matches_oracle(
    model_path_or_proto: ModelSource,
    plan: PruningPlan,
    input_shapes: InputShapes = None,
    rtol: float = 1e-4,
    *,
    analysed: Analysed | None = None,
    seed: int = 0,
    atol: float = 0.0,
) -> OracleResult:
    """The pruned model computes what the masked original computes; both are valid models.

    Pass ``analysed`` (from :func:`analyse` on the same model) to skip re-analysing; the plan's
    group ids must come from that analysis.
    """
    if analysed is None:
        analysed = analyse(model_path_or_proto, input_shapes)
    dep = analysed.dep
    pruned = apply_plan(dep, plan)
    masked = mask_removed_channels(dep, plan)
    assert_valid(pruned)
    assert_valid(masked)
    assert output_names(pruned) == output_names(analysed.original)
    feeds = random_feeds(analysed.prepared, analysed.input_shapes, seed)
    masked_outputs = run_model(masked, feeds)
    pruned_outputs = run_model(pruned, feeds)
    # QDQ models compare without their activations' rounding, as the pipeline's check does: float sums
    # in another order flip it (graphops.unrounded). Both must have the same pairs to replace.
    masked_check, pruned_check = unrounded_model(masked), unrounded_model(pruned)
    assert (masked_check is None) == (pruned_check is None), "the pruned model lost activation Q/DQ pairs"
    masked_check, pruned_check = masked_check or masked, pruned_check or pruned
    checked_masked = masked_outputs if masked_check is masked else run_model(masked_check, feeds)
    checked_pruned = pruned_outputs if pruned_check is pruned else run_model(pruned_check, feeds)
    assert_outputs_close(checked_masked, checked_pruned, output_names(pruned), rtol, atol)
    # Unoptimised runs too: onnxruntime's layout rewrites can hide an invalid attribute.
    assert_outputs_close(
        run_model(masked_check, feeds, optimize=False),
        run_model(pruned_check, feeds, optimize=False),
        output_names(pruned),
        rtol,
        atol,
    )
    assert_structure_follows_plan(dep, plan, analysed.prepared, pruned)
    return OracleResult(pruned, masked, pruned_outputs, masked_outputs)
