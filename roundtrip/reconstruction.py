"""Layer-wise reconstruction: refit the weights of the layers pruning changed, in closed form.

After channels are removed, each layer that read them (a Conv, Gemm or MatMul whose input shrank)
computes something else. Following He et al. 2017 ("Channel Pruning for Accelerating Very Deep
Neural Networks") and Luo et al. 2017 (ThiNet), its remaining weights (and bias) are refit by
least squares so that its output matches the ORIGINAL model's output of that layer, on calibration
samples: inputs taken from the pruned model as it runs (so each refit also absorbs the drift of the
layers before it), targets from the original. A ridge term pulls the solve toward the weights as
pruned, which keeps it well posed with few samples. No labels and no backpropagation: one pass of the
original and one of the pruned model over the calibration samples, and one linear solve per layer.

The ridge's strength is RIDGE, unless the layer fits on fewer samples than it has inputs or its refit at
RIDGE loses to the weights as pruned on the samples held aside; it is then the strength of least error on
those samples among RIDGES (``roundtrip.ridge``). A transformer's rows are the tokens of a few samples,
alike, and its deeper layers overfit the calibration photos at RIDGE (ViT-S/14 at -30%: block 11's refit
had a relative error of 0.009 on the photos it fit, 0.14 on those held aside; on one plan and 150 photos,
held-out cosine 0.9893 -> 0.9905, the last blocks choosing 1 to 10, the first 0.01 to 0.1). A conv layer's
rows are positions in a thousand images and its refit carries over: choosing there too lowered each
layer's held-aside error by a few percent but cost ResNet-20 0.35 to 1.5 points of held-out accuracy
(reconstruction alone), so it keeps RIDGE and the same weights as before.

Layers are refit in the order they run. Both models run batch by batch, and the runs are taken forward
together a layer at a time (``OnnxModule.begin``/``advance``): every batch stops before the next refit
layer, which sums its normal equations (x^T x, x^T y) over the batches, is solved, and only then runs,
so the layers after it see the refit output. Each layer thus fits on every row of every calibration
sample (every token of a sequence: Kwon et al. 2022's mask tuning) in the memory of one batch's rows;
only the runs' live tensors are held for all samples. Convolutions become linear maps with im2col on a
subsample of spatial positions (MAX_ROWS). What does not apply is left as pruned and named in the
result: grouped and depthwise convolutions (their input channels are removed together with their output
channels, so they have no lost inputs to compensate), non-2-D convolutions, Gemm with transA or
alpha/beta other than 1, MatMul whose weight is the left operand.

The calibration batch is as large as memory allows: a rule of thumb for conv nets (the widest
activation 16x the input), or, when no convolution is refit, what the two runs hold at once up to the
last layer refit (``live_bytes``, LIVE_BYTES in all): all 150 training photos of ViT-S/14 at 224, where
holding the targets of one batch had allowed 48. Under a deadline (``--time-budget``) it is as large as
the time allows: the original runs on a first few samples, timed, and the batch is cut to what fits
before the deadline, and before the budget's end less the evaluations that follow. A machine that slows
down after that probe, and what the probe does not run (each layer's sums, solve and ridge choice), would
still carry the refit past the deadline (ViT-S/14, ``--time-budget 300``: 362 s at load 6.3), so before
each layer but the first the refit stops if that layer would end past it, as the layers before it took
(``roundtrip.layer_pace``); it and the layers after it stay as pruned (``left_by_deadline``). A batch
already at its least (the probe's samples) refits every layer: that much is always done.

A layer whose output joins a residual stream (``Add(scale * (layer + bias), stream)``: a transformer's
attention output and second MLP layer) is fit to give back the original's stream after that Add, not
only its own output: the stream arrives drifted by what the blocks before lost, and this layer can add
some of it back (ViT-S/14 at -30% on 150 photos: held-out cosine 0.9879 -> 0.9893).

A MatMul has no bias input: exporters write a Linear as MatMul -> Add(constant bias). When the
MatMul's output goes only to such an Add, the refit solves for an intercept too and adds it to that
bias: the inputs a transformer's output projection loses (attention heads, GELU neurons) have a
non-zero mean, which the kept inputs' weights alone can only approximate (Kwon et al. 2022 refit the
output projections of pruned heads and neurons, their "mask tuning", in the same way).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.ops import handler_for
from onnxprune.graphops.ops.base import LAYER_ROLES
from onnxprune.graphops.ops.linear_form import LinearForm
from onnxprune.graphops.plan import PruningPlan
from onnxprune.graphops.surgery import _context
from onnxprune.roundtrip.data import Dataset
from onnxprune.roundtrip.executor import OnnxModule, toposort
from onnxprune.roundtrip.layer_pace import LayerPace, LayerSize, LayerTime
from onnxprune.roundtrip.objective import FeatureMatch
from onnxprune.roundtrip.ops.nn import _pad_spatial, _window
from onnxprune.roundtrip.ridge import chosen_strength, held_aside_errors, ridge_solve

# Linear layers counted back from a detector's output as its head (``head_layers``).
HEAD_DEPTH = 3
# Calibration samples a detector's reconstruction takes at least, whatever its input size: detections
# are rare (the few photos that fit BATCH_BYTES at 320 x 320, 9, hold a handful), and the head's refit
# must see them. On YOLOv8n at 320 the layers' targets for 48 photos take about 1.3 GB.
DETECTOR_SAMPLES = 48
# A detector's head refit weighs each position by the original's best class score there, plus this floor
# (the background still counts: an anchor that starts scoring is a false detection); positions where
# that score exceeds SCORED are always among the rows (at most half of them), the rest drawn at random.
SCORE_FLOOR = 0.05
SCORED = 0.05
# Rows (samples x spatial positions) per layer solve: enough for a few-thousand-wide input, small
# enough for seconds on a CPU.
MAX_ROWS = 12_000
# Ridge strength relative to the mean diagonal of X^T X (scale free), of each refit and of ``obs``.
RIDGE = 1e-3
# The strengths a refit chooses among on its held-aside rows (``roundtrip.ridge``) when it has fewer samples
# than inputs or RIDGE overfits: half decades from a pull toward the weights as pruned that is barely felt to
# one that keeps them nearly as they are.
RIDGES = tuple(float(10 ** (e / 2)) for e in range(-8, 3))
# Share of the calibration samples kept aside to check that a refit helps before it is accepted.
CHECK_SHARE = 0.2
# Activation memory the calibration batch may take per tensor: ~1,000 CIFAR-sized images (on the
# shared ResNet-20, 1,200 calibration images instead of 256 gave one point more, before and after fine-tuning).
BATCH_BYTES = 192 << 20
# Memory the runs of a sequence model's calibration batch may hold at once (``live_bytes``).
LIVE_BYTES = 3 << 29
# Under a deadline: samples the original runs on first, timed, before the batch is sized to the time left.
PROBE_SAMPLES = 8
# The refit pass over a sample (the pruned model with the solves) against the original's pass: the pruned
# model is smaller, but each refit layer sums x^T x over every row (ViT-S at -30%: 126 s for 131 samples
# where 1.5 had planned 100 s); reckoned at 2 so that the deadline holds.
REFIT_PASS_COST = 2.0


@dataclass
class LayerFit:
    node: str
    op_type: str
    error_before: float  # relative squared error on the check samples, as pruned
    error_after: float  # after the refit (equal to error_before when it was not kept)
    kept: bool
    refit_error: float | None = None  # the refit's own error on the check samples, kept or not
    ridge: float | None = None  # the refit's ridge strength (relative), RIDGE or chosen on the check samples


@dataclass
class ReconstructionResult:
    model: onnx.ModelProto
    layers: list[LayerFit] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # node -> why it was left as pruned
    samples: int = 0
    check_samples: int = 0  # of ``samples``, those held aside to judge each refit (not fit on)
    affordable: int = 0  # samples memory allowed (``samples`` is fewer when the deadline came first)
    # Layers to refit left as pruned: the deadline would have come during their refit (``layer_pace``).
    left_by_deadline: list[str] = field(default_factory=list)
    seconds_per_layer: float | None = None  # what the layers refit took each, on average (None: none refit)


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def linear_form(node: onnx.NodeProto, constants: Mapping[str, onnx.TensorProto]) -> LinearForm | str:
    """How ``node`` maps its input by a constant weight among ``constants``, as its op's handler says,
    or why it cannot be refit as a linear layer."""

    def constant_shape(name: str) -> tuple[int, ...] | None:
        init = constants.get(name)
        return None if init is None else tuple(int(d) for d in init.dims)

    return handler_for(node.op_type, node.domain).linear_form(node, constant_shape)


def _is_layer(node: onnx.NodeProto) -> bool:
    """A filter or fully connected layer (its handler's role), refittable or not."""
    return handler_for(node.op_type, node.domain).role in LAYER_ROLES


def _windowed_layers(nodes: Sequence[onnx.NodeProto], model: onnx.ModelProto) -> set[str]:
    """The names of ``nodes`` whose inputs are spatial windows (convolutions: im2col)."""
    constants = _initializers(model)
    forms = {node.name: linear_form(node, constants) for node in nodes}
    return {name for name, form in forms.items() if isinstance(form, LinearForm) and form.windowed}


def bias_after(node: onnx.NodeProto, model: onnx.ModelProto) -> str | None:
    """The constant bias of a layer whose op has no bias input (MatMul -> Add(bias), as exporters write
    a Linear), when that Add is its only consumer and the bias is one value per output column."""
    inits = _initializers(model)
    form = linear_form(node, inits)
    if not isinstance(form, LinearForm) or form.bias_input is not None:
        return None
    consumers = [n for n in model.graph.node if node.output[0] in n.input]
    outputs = {o.name for o in model.graph.output}
    if len(consumers) != 1 or consumers[0].op_type != "Add" or node.output[0] in outputs:
        return None
    (other,) = [name for name in consumers[0].input if name != node.output[0]] or [None]
    bias = inits.get(other) if other else None
    if bias is None:
        return None
    dims = [int(d) for d in bias.dims]
    return other if dims and dims[-1] == form.output_width and int(np.prod(dims)) == dims[-1] else None


@dataclass(frozen=True)
class ResidualAfter:
    """Where a layer's output joins a residual stream: ``Add(scale * (layer + bias), stream)``."""

    stream: str  # the Add's other input: the stream as it came into the block
    scale: str | None  # the constant the layer's output is multiplied by first (a LayerScale), if any


def residual_after(node: onnx.NodeProto, model: onnx.ModelProto) -> ResidualAfter | None:
    """How ``node``'s output reaches a residual Add through single-consumer constant Adds (its bias) and
    at most one constant Mul, or None. The refit then also makes up the stream's drift: what the pruned
    model's blocks before lost there, this layer can add back."""
    inits = _initializers(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for candidate in model.graph.node:
        for name in candidate.input:
            consumers.setdefault(name, []).append(candidate)
    outputs = {o.name for o in model.graph.output}
    tensor, scale = node.output[0], None
    for _ in range(3):
        readers = consumers.get(tensor, [])
        if len(readers) != 1 or tensor in outputs or readers[0].op_type not in ("Add", "Mul"):
            return None
        (reader,) = readers
        others = [name for name in reader.input if name != tensor]
        if len(others) != 1:
            return None
        if others[0] not in inits:
            return ResidualAfter(others[0], scale) if reader.op_type == "Add" else None
        if reader.op_type == "Mul":
            if scale is not None:
                return None
            scale = others[0]
        tensor = reader.output[0]
    return None


def layers_to_refit(
    original: onnx.ModelProto, pruned: onnx.ModelProto, also: Collection[str] = ()
) -> tuple[list[onnx.NodeProto], dict[str, str]]:
    """Layers (filters and fully connected layers) of ``pruned`` whose input width shrank (they lost
    input channels), or named in ``also`` (their input drifted), and whose output the original also
    has (the refit's target), in graph order, and the affected layers that cannot be refit (a constant
    of theirs changed shape, or they are named in ``also``) with the reason their handler gives."""
    before, after = _initializers(original), _initializers(pruned)
    original_tensors = {out for node in original.graph.node for out in node.output}
    nodes, skipped = [], {}
    for node in pruned.graph.node:
        if not _is_layer(node):
            continue
        constants = [name for name in node.input if name in before and name in after]
        wanted = node.name in also
        if not constants or not (wanted or any(list(before[n].dims) != list(after[n].dims) for n in constants)):
            continue
        form = linear_form(node, after)
        weight = before.get(node.input[form.weight_input]) if isinstance(form, LinearForm) else None
        if isinstance(form, str):
            skipped[node.name] = form
        elif weight is None or (int(weight.dims[form.input_axis]) == form.input_width and not wanted):
            continue
        elif node.output[0] not in original_tensors:
            skipped[node.name] = "its output has no counterpart in the original model"
        else:
            nodes.append(node)
    return nodes, skipped


def drifted_sequence_layers(dep: DependencyGraph, pruned: onnx.ModelProto) -> set[str]:
    """The linear layers over a sequence (MatMul of a 3-D input by a constant 2-D weight: a transformer's
    Q/K/V, MLP and output projections) that run on what a layer that lost inputs computes: their inputs
    drift although they lose nothing. Refit too (He et al.'s layer-by-layer reconstruction), they follow
    the original block by block: on ViT-S at -30% MACs, held-out output cosine 0.9841 on 37 calibration
    samples against 0.9811 refitting only the 22 projections that lost inputs, on 48."""
    refit, _ = layers_to_refit(dep.model, pruned)
    drifted = {node.output[0] for node in refit}
    constants = _initializers(pruned)
    found: set[str] = set()
    for node in pruned.graph.node:  # graph order is topological
        if not drifted.intersection(node.input):
            continue
        drifted.update(node.output)
        form = linear_form(node, constants)
        if isinstance(form, LinearForm) and not form.windowed:
            if len(dep.shapes.get(node.input[form.data_input], ())) == 3:  # over a sequence of tokens
                found.add(node.name)
    return found


def head_layers(model: onnx.ModelProto, output: str, depth: int = HEAD_DEPTH) -> set[str]:
    """The layers (filters, fully connected) within ``depth`` layers of graph output ``output``: a
    detector's head, whose layers turn features into boxes and scores. Their inputs drift when the
    layers before them are pruned although they lose no channel, and the class scores are where the
    drift shows (a logit -2 sliding to -6 loses a detection at 0.1): with data, they are refit too."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found: set[str] = set()
    pending = [(output, 0)]
    seen: set[tuple[str, int]] = set()
    while pending:
        tensor, passed = pending.pop()
        node = producer.get(tensor)
        if node is None or (tensor, passed) in seen:
            continue
        seen.add((tensor, passed))
        if _is_layer(node):
            found.add(node.name)
            passed += 1
            if passed >= depth:
                continue
            pending.append((node.input[0], passed))
        else:
            pending.extend((name, passed) for name in node.input if name)
    return found


def score_layers(model: onnx.ModelProto, head: Collection[str], classes: int) -> set[str]:
    """The layers of a detector's ``head`` that write its class logits: convolutions with one output
    channel per class (YOLOv8 / YOLO11 end each scale's class branch so, before the sigmoid)."""
    inits = _initializers(model)
    found = set()
    for node in model.graph.node:
        form = linear_form(node, inits) if node.name in head else None
        if isinstance(form, LinearForm) and form.windowed and form.output_width == classes:
            found.add(node.name)
    return found


def kept_outputs(dep: DependencyGraph, plan: PruningPlan, tensor: str) -> np.ndarray | None:
    """Positions the plan keeps on ``tensor``'s channel axis (None: the tensor keeps them all)."""
    layout = dep.layouts.get(tensor)
    if layout is None:
        return None
    removed = _context(dep, plan).removed_atoms(layout.atoms)
    return None if not removed.any() else np.flatnonzero(~removed)


def matched_features(
    dep: DependencyGraph,
    plan: PruningPlan,
    pruned: onnx.ModelProto,
    student: OnnxModule,
    teacher: OnnxModule,
    inputs: Mapping[str, np.ndarray],
    exclude: Sequence[str] = (),
) -> FeatureMatch | None:
    """The outputs of the layers reconstruction refits (its targets) as features for fine-tuning
    to match: those whose shape in ``student`` on ``inputs`` is the kept part of ``teacher``'s.
    ``exclude``: tensors the objective already trains on (class scores)."""
    nodes, _ = layers_to_refit(dep.model, pruned)
    names = [n.output[0] for n in nodes if n.output[0] not in exclude]
    if not names:
        return None
    was_training = student.training
    with torch.no_grad():
        ours, theirs = student.eval().run(inputs, outputs=names), teacher.run(inputs, outputs=names)
    student.train(was_training)
    tensors, kept = [], []
    for name, mine, original_tensor in zip(names, ours, theirs):
        positions = kept_outputs(dep, plan, name)
        expected = list(original_tensor.shape)
        if positions is not None:  # FeatureMatch selects kept channels on axis 1 (NCHW conv outputs)
            layout = dep.layouts[name]
            if len(expected) < 2 or layout.axis not in (1, 1 - len(expected)) or len(layout) != expected[1]:
                continue  # the last: a later iterative step, whose positions are not the teacher's
            expected[1] = len(positions)
        if list(mine.shape) == expected:
            tensors.append(name)
            kept.append(positions)
    return FeatureMatch(tensors, kept) if tensors else None


def calibration_batch(
    data: Dataset,
    model: onnx.ModelProto,
    samples: int,
    seed: int,
    at_least: int = 0,
    activation_bytes: int = 0,
    *,
    convs: bool = True,
) -> dict[str, np.ndarray]:
    """Up to ``samples`` samples, fewer for models whose activations are big, but ``at_least`` of them
    when the data has them. ``convs``: conv layers are refit; ``activation_bytes`` is then one sample's
    widest activation (``widest_activation_bytes``; 0 where the analysis does not know it), of which
    the batch may take BATCH_BYTES; else what one sample keeps in memory while the runs advance
    (``live_bytes``), of which the batch may take LIVE_BYTES."""
    per_sample = max(int(np.prod(a.shape[1:])) * 4 for a in data.inputs.values())
    if convs or not activation_bytes:
        # An image's widest activation is rarely more than 16x the input (64 channels at full resolution
        # of an RGB image), the rule where convs are refit or no shape is known.
        fit = BATCH_BYTES // max(1, 16 * per_sample, activation_bytes)
    else:  # sequence models go by their shapes: token ids are far narrower than their activations
        fit = LIVE_BYTES // activation_bytes
    count = min(len(data), samples, max(4, at_least, fit))
    index = np.sort(np.random.default_rng(seed).permutation(len(data))[:count])
    return {name: array[index] for name, array in data.inputs.items()}


def widest_activation_bytes(dep: DependencyGraph) -> int:
    """Bytes (fp32) of one sample's widest node output at the analysed input shapes (``dep.shapes``)."""
    produced = {name for node in dep.model.graph.node for name in node.output}
    batch = min((dims[0] for dims in (dep.input_shapes or {}).values() if dims), default=1)
    elements = (
        math.prod(d for d in shape if isinstance(d, int) and d > 0)
        for name, shape in dep.shapes.items()
        if name in produced and shape
    )
    return 4 * max(elements, default=0) // max(1, batch)


def live_bytes(dep: DependencyGraph, nodes: Sequence[onnx.NodeProto]) -> int:
    """Bytes (fp32) one sample keeps in memory while the reconstruction's two runs (original and pruned)
    advance to the last of ``nodes``: twice the most the original holds at once up to there (tensors
    made and still to be read, at the analysed shapes), 0 where the analysis knows no shape of them."""
    order = toposort(dep.model.graph)
    names = {node.name for node in nodes}
    last = max((index for index, node in enumerate(order) if node.name in names), default=-1)
    last_use = {name: index for index, node in enumerate(order[: last + 1]) for name in node.input}
    made_at = {inp.name: -1 for inp in dep.model.graph.input}
    made_at.update({out: index for index, node in enumerate(order[: last + 1]) for out in node.output})
    batch = min((dims[0] for dims in (dep.input_shapes or {}).values() if dims), default=1)

    def size(name: str) -> int:
        shape = dep.shapes.get(name, ())
        return 4 * math.prod(d for d in shape if isinstance(d, int) and d > 0) if shape else 0

    most = 0
    for position in range(last + 1):
        held = sum(size(name) for name, at in made_at.items() if at <= position <= last_use.get(name, at))
        most = max(most, held)
    return 2 * most // max(1, batch)


def _conv_rows(node: onnx.NodeProto, x: torch.Tensor, kernel: list[int], positions: np.ndarray) -> torch.Tensor:
    """im2col of ``x`` for ``node`` at the chosen output positions only: (samples * positions, Cin*kh*kw),
    columns in ``F.unfold``'s order (channel, kernel row, kernel column). Indexing the patches directly
    instead of unfolding every position keeps it fast when only a subsample of positions is used."""
    strides, dilations, pads = _window(node, x, kernel)
    padded = _pad_spatial(x, pads)
    out_w = (padded.shape[3] - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    rows, cols = torch.from_numpy(positions // out_w), torch.from_numpy(positions % out_w)  # N, P
    ki, kj = torch.meshgrid(torch.arange(kernel[0]), torch.arange(kernel[1]), indexing="ij")
    hh = rows.unsqueeze(-1) * strides[0] + ki.reshape(1, 1, -1) * dilations[0]  # N, P, K
    ww = cols.unsqueeze(-1) * strides[1] + kj.reshape(1, 1, -1) * dilations[1]
    samples = torch.arange(x.shape[0]).reshape(-1, 1, 1)
    patches = padded.permute(0, 2, 3, 1)[samples, hh, ww]  # N, P, K, C
    return patches.permute(0, 1, 3, 2).reshape(-1, x.shape[1] * hh.shape[-1])


def _output_rows(y: torch.Tensor, positions: np.ndarray | None) -> torch.Tensor:
    """Layer outputs as rows matching the input rows: conv outputs at the chosen positions."""
    if positions is None:
        return y.reshape(-1, y.shape[-1])
    flat = y.reshape(y.shape[0], y.shape[1], -1)
    picked = torch.gather(flat, 2, torch.from_numpy(positions).unsqueeze(1).expand(-1, flat.shape[1], -1))
    return picked.permute(0, 2, 1).reshape(-1, flat.shape[1])


def _positions(samples: int, spatial: int, seed: int) -> np.ndarray:
    per_sample = max(1, min(spatial, MAX_ROWS // max(1, samples)))
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(spatial, per_sample, replace=False) for _ in range(samples)]).astype(np.int64)


def _scored_positions(confidence: torch.Tensor, samples: int, seed: int) -> np.ndarray:
    """``_positions`` that always include (up to half the rows) where ``confidence`` [samples, positions]
    exceeds SCORED, best first: detections are a few anchors in thousands, and a uniform subsample misses them."""
    spatial = confidence.shape[1]
    per_sample = max(1, min(spatial, MAX_ROWS // max(1, samples)))
    rng = np.random.default_rng(seed)
    chosen = []
    for row in confidence.numpy():
        order = np.argsort(-row, kind="stable")
        sure = order[: min(per_sample // 2, int(np.sum(row > SCORED)))]
        rest = np.setdiff1d(np.arange(spatial), sure)
        chosen.append(np.concatenate([sure, rng.choice(rest, per_sample - len(sure), replace=False)]))
    return np.stack(chosen).astype(np.int64)


def score_maps(outputs: Mapping[str, torch.Tensor]) -> dict[tuple[int, ...], torch.Tensor]:
    """Per spatial size, the original's best class score at each position [samples, positions], from the
    outputs (class logits, before the sigmoid) of a detector's class-score layers."""
    maps: dict[tuple[int, ...], torch.Tensor] = {}
    for y in outputs.values():
        if y.dim() < 3:
            continue
        best = torch.sigmoid(y.double()).amax(1).reshape(y.shape[0], -1)
        size = tuple(y.shape[2:])
        maps[size] = torch.maximum(maps[size], best) if size in maps else best
    return maps


def _stream_target(
    y: torch.Tensor, stream: torch.Tensor, drifted: torch.Tensor, scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output that gives back the original's residual stream after the Add (``residual_after``):
    the original's ``y`` plus the stream's drift (``stream`` in the original, ``drifted`` in the pruned
    model) divided by the scale between them; and that scale per output channel (None: one for all),
    by which each output's error counts in the stream. Scales near 0 are clamped: their outputs barely count."""
    if scale is None or scale.numel() == 1:
        factor = 1.0 if scale is None else float(scale.reshape(()))
        return y + (stream - drifted) / (factor if abs(factor) > 1e-6 else 1e-6), None
    tiny = 1e-6 * float(scale.abs().max())
    safe = torch.where(scale.abs() < tiny, torch.full_like(scale, max(tiny, 1e-12)), scale)
    return y + (stream - drifted) / safe, scale.reshape(-1).abs()


def _relative_error(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return float((prediction - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-30))


class _Refit:
    """One layer's refit: rows from the pruned model's input, targets from the original's output, taken a
    batch at a time (``add``). The fit samples' rows are summed into the normal equations (x^T x and
    x^T y), so the layer fits on every row of every sample in the memory of one batch's; the check
    samples' rows are kept to judge the solve (``solve``)."""

    def __init__(
        self,
        module: OnnxModule,
        node: onnx.NodeProto,
        kept_outputs: np.ndarray | None,
        ridge: float,
        ridges: Sequence[float],
        bias_after: str | None = None,
    ) -> None:
        self.module, self.node, self.ridge, self.ridges = module, node, ridge, tuple(ridges)
        self.bias_after = bias_after if bias_after in module.trainable_names else None
        self.kept_outputs = None if kept_outputs is None else torch.from_numpy(kept_outputs)
        constants = set(module.initializer_names())
        form = handler_for(node.op_type, node.domain).linear_form(
            node, lambda name: tuple(module.tensor(name).shape) if name in constants else None
        )
        if isinstance(form, str):
            raise ValueError(f"{node.op_type} '{node.name}' is refit, but its handler says: {form}")
        self.form = form
        self.gram: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None
        self.check: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.fit_samples = 0  # samples whose rows the normal equations sum
        self.residual: ResidualAfter | None = None  # where the output joins a residual stream (``aim``)
        self.column_scale: torch.Tensor | None = None  # what each output is scaled by there (None: 1)

    @property
    def size(self) -> LayerSize:
        """The linear map the refit solves for: the layer's inputs (and intercept) by its outputs."""
        matrix, bias = self._weights_as_matrix()
        return LayerSize(int(matrix.shape[0]) + (bias is not None), int(matrix.shape[1]))

    def _rows(self, x: torch.Tensor, positions: np.ndarray | None) -> torch.Tensor:
        if self.form.windowed:
            if positions is None:
                raise ValueError(f"{self.node.op_type} '{self.node.name}' is refit without output positions to sample")
            return _conv_rows(self.node, x, list(self.form.kernel), positions)
        return x.reshape(-1, x.shape[-1])

    def _targets(self, y: torch.Tensor, positions: np.ndarray | None) -> torch.Tensor:
        rows = _output_rows(y, positions) if self.form.windowed else y.reshape(-1, y.shape[-1])
        return rows if self.kept_outputs is None else rows[:, self.kept_outputs]

    def _weights_as_matrix(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W as [inputs, outputs], bias [outputs] or None) of the layer as it is now."""
        weight = self.module.tensor(self.node.input[self.form.weight_input]).detach()
        matrix = weight.reshape(weight.shape[0], -1).T if self.form.outputs_first else weight
        slot = self.form.bias_input
        bias_name = self.node.input[slot] if slot is not None and len(self.node.input) > slot else ""
        bias = None
        if bias_name and bias_name in self.module.trainable_names:
            bias = self.module.tensor(bias_name).detach()
            if bias.numel() != matrix.shape[1]:
                bias = None  # a broadcast scalar or row: left as it is
        if self.bias_after is not None:  # the layer's own output has no bias: its intercept starts at 0
            return matrix, torch.zeros(matrix.shape[1], dtype=weight.dtype)
        return matrix, bias

    def _store(self, matrix: torch.Tensor, bias: torch.Tensor | None) -> None:
        weight = self.module.tensor(self.node.input[self.form.weight_input])
        value = matrix.T.reshape(weight.shape) if self.form.outputs_first else matrix
        weight.data.copy_(value.to(weight.dtype))
        if bias is not None and self.bias_after is not None:
            target = self.module.tensor(self.bias_after)
            target.data.add_(bias.reshape(target.shape).to(target.dtype))
        elif bias is not None and self.form.bias_input is not None:
            target = self.module.tensor(self.node.input[self.form.bias_input])
            target.data.copy_(bias.reshape(target.shape).to(target.dtype))

    def aim(self, y: torch.Tensor, stream: torch.Tensor | None, drifted: torch.Tensor | None) -> torch.Tensor:
        """The target for original output ``y`` when the layer's output joins a residual stream
        (``residual_after``: ``stream`` the original's, ``drifted`` the pruned model's there): the output
        that gives back the original's stream after the Add (``_stream_target``); ``y`` without one."""
        if self.residual is None or stream is None or drifted is None or stream.shape != drifted.shape:
            return y
        scale = None if self.residual.scale is None else self.module.tensor(self.residual.scale).detach()
        target, columns = _stream_target(y, stream, drifted, scale)
        width = y.shape[1] if self.form.windowed else y.shape[-1]
        if target.shape != y.shape or (columns is not None and columns.numel() != width):
            return y  # the stream broadcasts the output: left to the layer's own target
        self.column_scale = columns
        return target

    def add(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        positions: np.ndarray | None = None,
        weights: torch.Tensor | None = None,
        *,
        check: bool = False,
    ) -> None:
        """A batch: ``x`` the layer's input in the pruned model, ``y`` its output in the original;
        ``positions`` the conv output positions to fit at, ``weights`` how much each row's error counts
        (None: alike); ``check``: the batch is held aside to judge the solve."""
        rows, targets = self._rows(x, positions), self._targets(y, positions)
        if self._weights_as_matrix()[1] is not None:
            rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype)], 1)
        if weights is not None:  # rows scaled by the root of their weight
            scale = weights.reshape(-1, 1).sqrt().to(rows.dtype)
            rows, targets = rows * scale, targets * scale.to(targets.dtype)
        if check:
            self.check.append((rows, targets))
            return
        self.fit_samples += int(x.shape[0])
        # float32 products summed in float64: fast, and accurate enough with the ridge
        gram, cross = (rows.T @ rows).double(), (rows.T @ targets.to(rows.dtype)).double()
        self.gram = gram if self.gram is None else self.gram.add_(gram)
        self.cross = cross if self.cross is None else self.cross.add_(cross)

    def solve(self) -> LayerFit:
        """Solve on the fit rows; when that lowers the error on the check rows, solve again on all rows
        and store the weights (the check only judges whether the refit helps). A refit on fewer samples
        than it has inputs, or one that does not help at ``ridge`` (it overfits the fit rows), takes the
        strength of ``ridges`` of least error on the check rows instead (``roundtrip.ridge``), judged the
        same way."""
        if self.gram is None or self.cross is None:
            raise ValueError(f"{self.node.op_type} '{self.node.name}' is refit on no samples")
        matrix, bias = self._weights_as_matrix()
        with_bias = bias is not None
        current = torch.cat([matrix, bias.reshape(1, -1)], 0) if bias is not None else matrix
        check = torch.cat([rows for rows, _ in self.check]) if self.check else torch.zeros(0, current.shape[0])
        target = torch.cat([t for _, t in self.check]) if self.check else torch.zeros(0, current.shape[1])
        scale = 1.0 if self.column_scale is None else self.column_scale.to(current.dtype)
        before = _relative_error(check @ (current * scale), target * scale)  # errors as the stream sees them
        # Pulled toward the weights as pruned, not toward zero: few samples, and a layer whose input only
        # drifted is near right as it is.
        strength = self.ridge
        solution = ridge_solve(self.gram, self.cross, strength, current).to(matrix.dtype)
        after = _relative_error(check @ (solution * scale), target * scale)
        if self.ridges and len(check) and (after >= before or self.fit_samples < len(current)):
            # Fewer samples than inputs (a sample's rows, its tokens, are alike), or a refit that does not
            # carry over to the held-aside samples: the pull is chosen on them.
            errors = held_aside_errors(self.gram, self.cross, current, check, target, self.ridges, self.column_scale)
            strength = chosen_strength(errors, self.ridges)
            solution = ridge_solve(self.gram, self.cross, strength, current).to(matrix.dtype)
            after = _relative_error(check @ (solution * scale), target * scale)
        kept = after < before
        if kept and len(check):  # judged: solved again on every sample, the held-aside ones too
            gram, cross = self.gram + (check.T @ check).double(), self.cross + (check.T @ target).double()
            solution = ridge_solve(gram, cross, strength, current).to(matrix.dtype)
        if kept:
            self._store(solution[:-1] if with_bias else solution, solution[-1] if with_bias else None)
        self.gram, self.cross, self.check = None, None, []
        return LayerFit(
            self.node.name,
            self.node.op_type,
            round(before, 6),
            round(after if kept else before, 6),
            kept,
            round(after, 6),
            strength,
        )


def reconstruct(
    dep: DependencyGraph,
    plan: PruningPlan,
    pruned: onnx.ModelProto,
    data: Dataset,
    *,
    samples: int = 1024,
    seed: int = 0,
    ridge: float = RIDGE,
    ridges: Sequence[float] = RIDGES,
    teacher: OnnxModule | None = None,
    also: Collection[str] = (),
    at_least: int = 0,
    scores: Collection[str] = (),
    deadline: float | None = None,
    end: float | None = None,
    reserve: int = 0,
    clock: Callable[[], float] = time.monotonic,
) -> ReconstructionResult:
    """``pruned`` (``plan`` applied to ``dep.model``) with every layer that lost input channels (and
    the layers named in ``also``) refit to reproduce ``dep.model``'s output of that layer on ``data``;
    see the module docstring. ``ridge``: each refit's strength; ``ridges``: those a refit chooses
    among on its held-aside samples when it fits on fewer samples than it has inputs, or when at ``ridge``
    it does not beat the weights as pruned there. ``scores``: a detector's class-logit layers (``score_layers``); the
    layers of ``also`` with their spatial size are then fit where the original detects (``score_maps``).
    ``deadline`` (``clock()``, ``time.monotonic()`` unless a test gives its own): the batch is cut to the
    samples that fit before it (never below ``PROBE_SAMPLES`` nor ``at_least``), and before ``end`` less the
    time ``reserve`` passes of the original over one sample take (what follows reconstruction in the budget:
    its evaluations). Then, when the batch holds more than that least, before each layer but the first the
    refit stops if that layer would end past that time, as the layers before it took (``layer_pace``): it
    and the layers after it stay as pruned (``left_by_deadline``). A batch at its least refits every layer."""
    from onnxprune.roundtrip.writeback import write_back

    nodes, skipped = layers_to_refit(dep.model, pruned, also)
    if not nodes:
        return ReconstructionResult(pruned, [], skipped, 0)
    windowed = _windowed_layers(nodes, pruned)
    # Conv nets keep the rule of thumb (their rows are subsampled positions: MAX_ROWS); sequence models
    # go by what the two runs hold at once.
    convs = bool(windowed)
    size = widest_activation_bytes(dep) if convs else live_bytes(dep, nodes)
    batch = calibration_batch(data, dep.model, samples, seed, at_least, size, convs=convs)
    affordable = len(next(iter(batch.values())))
    chunk = max(1, BATCH_BYTES // max(1, widest_activation_bytes(dep)))  # samples an op runs on at once
    teacher = teacher or OnnxModule(dep.model).eval()
    student = OnnxModule(pruned).eval()
    last = max(teacher.position(node.name) for node in nodes) + 1
    pace, left = LayerPace(), []
    with torch.no_grad():
        least, count, stop_by = max(PROBE_SAMPLES, at_least), affordable, None
        if deadline is not None and count > least:
            passes = 1.0 + REFIT_PASS_COST + (1.0 if scores else 0.0)
            fits, stop_by = _affordable_samples(teacher, batch, least, last, deadline, passes, end, reserve, clock)
            count = min(count, max(least, fits))
            batch = {name: array[:count] for name, array in batch.items()}
        if count <= least:
            # The least reconstruction refits every layer, as scoring always looks at one batch: a budget
            # that leaves no more has been passed by the stages around it, which do not stop either. On two
            # hogged cores (load 8-10) ViT-S/14's guard had left 66 of 67 layers, cosine 0.984 -> 0.915, and
            # the job still ended 149 s past its 300 s (benchmarks/results/time_budget_load.md).
            stop_by = None
        fit_samples = max(1, count - max(1, int(round(CHECK_SHARE * count))))
        spans = [(start, min(start + chunk, fit_samples)) for start in range(0, fit_samples, chunk)]
        spans += [(start, min(start + chunk, count)) for start in range(fit_samples, count, chunk)]
        maps = _score_maps(teacher, batch, [node for node in nodes if node.name in scores], spans)
        feeds = [{name: array[start:stop] for name, array in batch.items()} for start, stop in spans]
        originals, pruneds = [teacher.begin(feed) for feed in feeds], [student.begin(feed) for feed in feeds]
        layers = []
        for index, node in enumerate(nodes):
            refit = _Refit(
                student, node, kept_outputs(dep, plan, node.output[0]), ridge, ridges, bias_after(node, pruned)
            )
            layer_size = refit.size
            expected = pace.expected(layer_size)
            if stop_by is not None and expected is not None and clock() + expected > stop_by:
                left = [later.name for later in nodes[index:]]
                break
            where, at = student.position(node.name), teacher.position(node.name) + 1
            positions, weights = None, None
            residual = refit.residual = residual_after(node, pruned) if refit.kept_outputs is None else None
            advancing = adding = 0.0
            for (start, stop), original, run in zip(spans, originals, pruneds):
                started = clock()
                teacher.advance(original, at)
                student.advance(run, where)
                x, y = run.env[node.input[refit.form.data_input]], original.env[node.output[0]]
                if x is None or y is None:
                    raise ValueError(f"{node.op_type} '{node.name}' is refit, but a run did not keep its tensors")
                if residual is not None:
                    y = refit.aim(y, original.env.get(residual.stream), run.env.get(residual.stream))
                if positions is None and node.name in windowed:
                    confidence = maps.get(tuple(y.shape[2:])) if node.name in also else None
                    if confidence is not None:
                        positions = _scored_positions(confidence, count, seed + index)
                        weights = SCORE_FLOOR + torch.gather(confidence, 1, torch.from_numpy(positions))
                    else:
                        positions = _positions(count, int(np.prod(y.shape[2:])), seed + index)
                advanced = clock()
                refit.add(
                    x,
                    y,
                    None if positions is None else positions[start:stop],
                    None if weights is None else weights[start:stop],
                    check=start >= fit_samples,
                )
                added = clock()
                advancing, adding = advancing + (advanced - started), adding + (added - advanced)
            solving = clock()
            layers.append(refit.solve())
            pace.record(LayerTime(layer_size, advancing, adding, clock() - solving))
        del originals, pruneds
    per_layer = sum(t.seconds for t in pace.times) / len(pace.times) if pace.times else None
    return ReconstructionResult(
        write_back(pruned, student), layers, skipped, count, count - fit_samples, affordable, left, per_layer
    )


def _affordable_samples(
    teacher: OnnxModule,
    batch: Mapping[str, np.ndarray],
    least: int,
    stop: int,
    deadline: float,
    passes: float,
    end: float | None,
    reserve: int,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[int, float]:
    """Samples whose reconstruction ends by ``deadline`` and ``reserve`` sample passes before ``end``, and
    the time it must end by: the original runs to node ``stop`` on the first ``least`` samples, timed; a
    sample costs ``passes`` such runs (the original's, the refit pass's at REFIT_PASS_COST, a detector's
    pass for its scores)."""
    started = clock()
    teacher.advance(teacher.begin({name: array[:least] for name, array in batch.items()}), stop)
    now = clock()
    per_sample = max(now - started, 1e-9) / least
    if end is not None:
        deadline = min(deadline, end - reserve * per_sample)
    return int((deadline - now) / (per_sample * passes)), deadline


def _score_maps(
    teacher: OnnxModule,
    batch: Mapping[str, np.ndarray],
    nodes: Sequence[onnx.NodeProto],
    spans: Sequence[tuple[int, int]],
) -> dict[tuple[int, ...], torch.Tensor]:
    """``score_maps`` of the original's outputs of a detector's class-score layers ``nodes`` on ``batch``,
    run a span of samples at a time (empty without such layers)."""
    if not nodes:
        return {}
    names = [node.output[0] for node in nodes]
    parts = [teacher.run({name: a[start:stop] for name, a in batch.items()}, outputs=names) for start, stop in spans]
    return score_maps({node.name: torch.cat([part[i] for part in parts]) for i, node in enumerate(nodes)})
