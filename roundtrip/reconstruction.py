"""Layer-wise reconstruction: refit the weights of the layers pruning changed, in closed form.

After channels are removed, each layer that read them (a Conv, Gemm or MatMul whose input shrank)
computes something else. Following He et al. 2017 ("Channel Pruning for Accelerating Very Deep
Neural Networks") and Luo et al. 2017 (ThiNet), its remaining weights (and bias) are refit by
least squares so that its output matches the ORIGINAL model's output of that layer, on calibration
samples: inputs taken from the pruned model as it runs (so each refit also absorbs the drift of the
layers before it), targets from the original. Ridge regularisation keeps the solve well posed with
few samples. No labels and no backpropagation: one pass of the original and one of the pruned model
over the calibration batch, and one linear solve per layer.

Layers are refit in the order they run, inside a single pass of the pruned model: an edge hook on each
refit layer's input solves for its weights just before the layer runs, so the layers after it see the
refit output. Convolutions become linear maps with im2col (``F.unfold``) on a subsample of spatial
positions. What does not apply is left as pruned and named in the result: grouped and depthwise
convolutions (their input channels are removed together with their output channels, so they have no
lost inputs to compensate), non-2-D convolutions, Gemm with transA or alpha/beta other than 1,
MatMul whose weight is the left operand.

The calibration batch is as large as memory allows: a rule of thumb for conv nets (the widest
activation 16x the input), or, when no convolution is refit, the model's own activation shapes where
they allow more: ViT-S at 224
got 20 samples from the rule (its widest activation is under 3x the input) to fit 24 projections of up
to 1,536 inputs. The targets of sequence layers (the original's outputs, all kept until the refit
pass) are kept at a random subset of each sample's tokens when all would not fit in TARGET_BYTES. Under
a deadline (``--time-budget``) it is as large as the time allows: the original's outputs are computed
on a first few samples, timed, then on as many more as fit before the deadline with the refit pass.

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
from onnxprune.roundtrip.executor import OnnxModule
from onnxprune.roundtrip.objective import FeatureMatch
from onnxprune.roundtrip.ops.nn import _pad_spatial, _window

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
# Ridge strength relative to the mean diagonal of X^T X (scale free).
RIDGE = 1e-3
# Share of the calibration samples kept aside to check that a refit helps before it is accepted.
CHECK_SHARE = 0.2
# Activation memory the calibration batch may take per tensor: ~1,000 CIFAR-sized images (on the
# shared ResNet-20, 1,200 calibration images instead of 256 gave one point more, before and after fine-tuning).
BATCH_BYTES = 192 << 20
# Memory the refit layers' targets (the original's outputs of them, all kept until the refit pass) may take.
TARGET_BYTES = 3 << 29
# Under a deadline: samples the original runs on first, timed, before the batch is sized to the time left.
PROBE_SAMPLES = 8
# The refit pass over a sample (the pruned model with the solves) against the original's pass: the pruned
# model is smaller, the solves and copies are not free; reckoned at 1.5 so that the deadline holds.
REFIT_PASS_COST = 1.5


@dataclass
class LayerFit:
    node: str
    op_type: str
    error_before: float  # relative squared error on the check samples, as pruned
    error_after: float  # after the refit (equal to error_before when it was not kept)
    kept: bool
    refit_error: float | None = None  # the refit's own error on the check samples, kept or not


@dataclass
class ReconstructionResult:
    model: onnx.ModelProto
    layers: list[LayerFit] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # node -> why it was left as pruned
    samples: int = 0
    check_samples: int = 0  # of ``samples``, those held aside to judge each refit (not fit on)
    affordable: int = 0  # samples memory allowed (``samples`` is fewer when the deadline came first)


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


def _sequence_size(dep: DependencyGraph, nodes: Sequence[onnx.NodeProto]) -> tuple[int, int] | None:
    """(tokens, bytes a token's targets take) of the sequence layers among ``nodes`` (None: none, or
    they do not share one sequence length)."""
    windowed = _windowed_layers(nodes, dep.model)
    shapes = [dep.shapes.get(node.output[0], ()) for node in nodes if node.name not in windowed]
    sizes = [[d for d in shape if isinstance(d, int)] for shape in shapes if len(shape) == 3]
    sizes = [size for size in sizes if len(size) == 3]
    lengths = {size[1] for size in sizes}
    if len(lengths) != 1:
        return None
    return lengths.pop(), sum(size[2] for size in sizes) * 4


def token_positions(
    dep: DependencyGraph, nodes: Sequence[onnx.NodeProto], samples: int, seed: int
) -> np.ndarray | None:
    """Per sample, the tokens whose rows the sequence layers among ``nodes`` are fit on (samples x
    tokens, sorted), so that their targets fit in TARGET_BYTES; None when all tokens fit (or the
    layers do not share one sequence length)."""
    size = _sequence_size(dep, nodes)
    if size is None:
        return None
    length, per_token = size
    keep = min(length, max(1, TARGET_BYTES // max(1, samples * per_token)))
    if keep == length:
        return None
    rng = np.random.default_rng(seed)
    return np.stack([np.sort(rng.choice(length, keep, replace=False)) for _ in range(samples)]).astype(np.int64)


def _chunk(dep: DependencyGraph, nodes: Sequence[onnx.NodeProto], least: int) -> int:
    """Samples the original runs on at a time when only some tokens are kept: whole, their targets take
    at most a quarter of TARGET_BYTES."""
    size = _sequence_size(dep, nodes)
    return least if size is None else max(least, TARGET_BYTES // (4 * size[0] * size[1]))


def _tokens(y: torch.Tensor, positions: np.ndarray, start: int = 0) -> torch.Tensor:
    """The rows of ``y`` [samples, tokens, width] at the ``positions`` of its samples (the batch's from
    ``start`` on)."""
    return y[torch.arange(y.shape[0]).unsqueeze(1), torch.from_numpy(positions[start : start + y.shape[0]])]


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
    """Up to ``samples`` samples, fewer for models whose activations are big (BATCH_BYTES per tensor),
    but ``at_least`` of them when the data has them. ``activation_bytes``: one sample's widest activation
    (``widest_activation_bytes``; 0 where the analysis does not know it); ``convs``: conv layers are refit,
    whose targets are whole feature maps until the refit pass."""
    per_sample = max(int(np.prod(a.shape[1:])) * 4 for a in data.inputs.values())
    # An image's widest activation is rarely more than 16x the input (64 channels at full resolution of
    # an RGB image), the rule where convs are refit or no shape is known; token ids are far wider as
    # activations (70 int64 ids of MiniLM become [70, 1536] floats, 1,536x) and a ViT's are narrower
    # (patches, under 3x), so sequence models go by the shapes alone.
    widest = activation_bytes if activation_bytes and not convs else max(16 * per_sample, activation_bytes)
    fit = max(4, at_least, BATCH_BYTES // max(1, widest))
    count = min(len(data), samples, fit)
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


def _ridge(x: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_W |xW - y|^2 + ridge * mean(diag(x^T x)) * |W|^2, in float64."""
    gram = (x.T @ x).double()  # float32 products, float64 solve: fast and accurate enough with the ridge
    scale = float(gram.diagonal().mean()) if gram.numel() else 1.0
    gram += ridge * max(scale, 1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype)
    solution: torch.Tensor = torch.linalg.solve(gram, (x.T @ y).double())
    return solution


def _relative_error(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return float((prediction - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-30))


class _Refit:
    """One layer's refit: rows from the pruned model's input, targets from the original's output."""

    def __init__(
        self,
        module: OnnxModule,
        node: onnx.NodeProto,
        targets: torch.Tensor,
        positions: np.ndarray | None,
        kept_outputs: np.ndarray | None,
        fit_samples: int,
        ridge: float,
        weights: torch.Tensor | None = None,
        bias_after: str | None = None,
    ) -> None:
        self.module, self.node, self.positions, self.fit_samples, self.ridge = (
            module,
            node,
            positions,
            fit_samples,
            ridge,
        )
        # Per row (sample x position), how much its error counts (None: alike); rows are scaled by the root.
        self.scale = None if weights is None else weights.reshape(-1, 1).sqrt().float()
        self.bias_after = bias_after if bias_after in module.trainable_names else None
        self.targets = targets if kept_outputs is None else targets[:, torch.from_numpy(kept_outputs)]
        self.result: LayerFit | None = None
        constants = set(module.initializer_names())
        form = handler_for(node.op_type, node.domain).linear_form(
            node, lambda name: tuple(module.tensor(name).shape) if name in constants else None
        )
        if isinstance(form, str):
            raise ValueError(f"{node.op_type} '{node.name}' is refit, but its handler says: {form}")
        self.form = form

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if self.form.windowed:
            if self.positions is None:
                raise ValueError(f"{self.node.op_type} '{self.node.name}' is refit without output positions to sample")
            return _conv_rows(self.node, x, list(self.form.kernel), self.positions)
        if self.positions is not None and x.dim() == 3:  # a sequence fit on some of its tokens
            x = _tokens(x, self.positions)
        return x.reshape(-1, x.shape[-1])

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

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Edge hook on the layer's data input: solve, store the weights, pass ``x`` on unchanged."""
        rows = self._rows(x)
        per_sample = rows.shape[0] // x.shape[0]
        split = self.fit_samples * per_sample
        matrix, bias = self._weights_as_matrix()
        with_bias = bias is not None
        design = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype)], 1) if with_bias else rows
        current = torch.cat([matrix, bias.reshape(1, -1)], 0) if bias is not None else matrix
        targets = self.targets
        if self.scale is not None:
            design, targets = design * self.scale.to(design.dtype), targets * self.scale.to(targets.dtype)
        solution = _ridge(design[:split], targets[:split], self.ridge).to(rows.dtype)
        check, target = design[split:], targets[split:]
        before = _relative_error(check @ current, target)
        after = _relative_error(check @ solution, target)
        kept = after < before
        if kept:
            self._store(solution[:-1] if with_bias else solution, solution[-1] if with_bias else None)
        self.result = LayerFit(
            self.node.name,
            self.node.op_type,
            round(before, 6),
            round(after if kept else before, 6),
            kept,
            round(after, 6),
        )
        return x


def reconstruct(
    dep: DependencyGraph,
    plan: PruningPlan,
    pruned: onnx.ModelProto,
    data: Dataset,
    *,
    samples: int = 1024,
    seed: int = 0,
    ridge: float = RIDGE,
    teacher: OnnxModule | None = None,
    also: Collection[str] = (),
    at_least: int = 0,
    scores: Collection[str] = (),
    deadline: float | None = None,
) -> ReconstructionResult:
    """``pruned`` (``plan`` applied to ``dep.model``) with every layer that lost input channels (and
    the layers named in ``also``) refit to reproduce ``dep.model``'s output of that layer on ``data``;
    see the module docstring. ``scores``: a detector's class-logit layers (``score_layers``); the
    layers of ``also`` with their spatial size are then fit where the original detects (``score_maps``).
    ``deadline`` (``time.monotonic()``): the batch is cut to the samples that fit before it (never below
    ``PROBE_SAMPLES`` nor ``at_least``)."""
    from onnxprune.roundtrip.writeback import write_back

    nodes, skipped = layers_to_refit(dep.model, pruned, also)
    if not nodes:
        return ReconstructionResult(pruned, [], skipped, 0)
    names = [node.output[0] for node in nodes]
    # Conv targets are whole outputs until the refit pass (YOLOv8n's for 48 photos at 320: about 1.3 GB):
    # models with convolutions to refit keep the rule of thumb.
    windowed = _windowed_layers(nodes, pruned)
    convs = bool(windowed)
    batch = calibration_batch(data, dep.model, samples, seed, at_least, widest_activation_bytes(dep), convs=convs)
    affordable = len(next(iter(batch.values())))
    tokens = token_positions(dep, nodes, affordable, seed)
    sequence = {node.output[0] for node in nodes if node.name not in windowed} if tokens is not None else set()

    def kept_rows(name: str, y: torch.Tensor, start: int) -> torch.Tensor:
        return _tokens(y, tokens, start) if tokens is not None and name in sequence and y.dim() == 3 else y

    teacher = teacher or OnnxModule(dep.model).eval()
    student = OnnxModule(pruned).eval()
    with torch.no_grad():
        least = max(PROBE_SAMPLES, at_least)
        chunk = _chunk(dep, nodes, least) if tokens is not None else affordable
        outputs, count = _original_outputs(teacher, batch, names, deadline, least, chunk, kept_rows)
        batch = {name: array[:count] for name, array in batch.items()}
        fit_samples = max(1, count - max(1, int(round(CHECK_SHARE * count))))
        maps = score_maps({node.name: y for node, y in zip(nodes, outputs) if node.name in scores})
        hooks = {}
        for index, (node, y) in enumerate(zip(nodes, outputs)):
            positions, weights = None, None
            confidence = maps.get(tuple(y.shape[2:])) if node.name in also and node.name in windowed else None
            if confidence is not None:
                positions = _scored_positions(confidence, count, seed + index)
                weights = SCORE_FLOOR + torch.gather(confidence, 1, torch.from_numpy(positions))
            elif node.name in windowed:
                positions = _positions(count, int(np.prod(y.shape[2:])), seed + index)
            targets = _output_rows(y, positions)
            if node.name not in windowed and y.dim() > 2:  # MatMul over a sequence: rows are samples x tokens
                targets = y.reshape(-1, y.shape[-1])  # (the kept tokens' rows: ``kept_rows``)
                positions = tokens if node.output[0] in sequence else None
            hooks[(node.name, 0)] = _Refit(
                student,
                node,
                targets,
                positions,
                kept_outputs(dep, plan, node.output[0]),
                fit_samples,
                ridge,
                weights,
                bias_after(node, pruned),
            )
        del outputs
        student.run(batch, edge_hooks=hooks)
    layers = [hook.result for hook in hooks.values() if hook.result is not None]
    return ReconstructionResult(write_back(pruned, student), layers, skipped, count, count - fit_samples, affordable)


def _original_outputs(
    teacher: OnnxModule,
    batch: Mapping[str, np.ndarray],
    names: list[str],
    deadline: float | None,
    least: int,
    chunk: int,
    kept_rows: Callable[[str, torch.Tensor, int], torch.Tensor],
) -> tuple[list[torch.Tensor], int]:
    """The original's outputs ``names`` (the rows ``kept_rows`` keeps of each) on the first samples of
    ``batch`` that fit before ``deadline`` with the refit pass after them (all of them without one),
    and how many samples that is, ``chunk`` samples at a time. Under a deadline the original runs on
    ``least`` samples first, timed; a sample's refit pass is reckoned REFIT_PASS_COST times its
    original pass."""
    count = len(next(iter(batch.values())))
    if deadline is None or count <= least:
        starts, parts = range(0, count, chunk), []
    else:
        started = time.monotonic()
        parts = [_kept(teacher, batch, names, 0, least, kept_rows)]
        now = time.monotonic()
        per_sample = max(now - started, 1e-9) / least
        # n samples cost (n - least) more original passes and n refit passes: solve for n.
        fits = int((deadline - now + least * per_sample) / (per_sample * (1.0 + REFIT_PASS_COST)))
        count = min(count, max(least, fits))
        starts = range(least, count, chunk)
    parts += [_kept(teacher, batch, names, start, min(start + chunk, count), kept_rows) for start in starts]
    return [torch.cat(tensors) if len(tensors) > 1 else tensors[0] for tensors in zip(*parts)], count


def _kept(
    teacher: OnnxModule,
    batch: Mapping[str, np.ndarray],
    names: list[str],
    start: int,
    stop: int,
    kept_rows: Callable[[str, torch.Tensor, int], torch.Tensor],
) -> list[torch.Tensor]:
    """The original's outputs on samples ``start`` to ``stop`` of ``batch``, the rows ``kept_rows`` keeps."""
    outputs = teacher.run({name: array[start:stop] for name, array in batch.items()}, outputs=names)
    return [kept_rows(name, y, start) for name, y in zip(names, outputs)]
