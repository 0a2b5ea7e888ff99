"""Data-driven filter criteria, registered in graphops' criteria registry through entry points.

``taylor``          Molchanov et al. 2017: |sum over positions of activation x gradient| per
                    channel and sample, averaged over samples; layer-wise L2 normalisation and
                    optional FLOPs regularisation.
``mean-activation`` mean |activation| per channel (the mean of a ReLU output).
``apoz``            1 - average percentage of zeros (Hu et al. 2016): fraction of activations a
                    ReLU leaves positive.
``bn-gamma``        |BatchNorm scale| of the channel (Liu et al. 2017, network slimming); no data.
``contribution``    mean norm of what a unit adds to the outputs of the layers that read it (its
                    activations times its rows of their weights): forward passes only.
``obs``             what would be left of that contribution after the reader's other inputs
                    compensate it by least squares (Optimal Brain Surgeon, Hassibi & Stork 1993):
                    the error the layer-wise refit cannot remove; forward passes only.

Activations are observed at the inputs of the filters that read each group (``roundtrip.taps``),
so coupled groups are scored as a whole. This module imports torch only inside the criteria.

A ``deadline`` (``time.monotonic()``, from ``--time-budget``) ends scoring after the batch that would
leave no time for another: ViT-S at 224 took 267 s of a 300 s budget for 150 samples forward and
backward on a busy 2-core machine. The first batch always runs; ``ScoredOn`` says how many did.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from onnx import numpy_helper

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.dequantized import float_weight_reader
from onnxprune.graphops.errors import ModelRejected
from onnxprune.graphops.scoring import Criterion, Scores, l1_norm
from onnxprune.roundtrip.context import DataContext
from onnxprune.roundtrip.taps import Tap, consumer_taps, per_class

if TYPE_CHECKING:  # torch is imported inside the criteria that run the model
    import torch

    from onnxprune.roundtrip.executor import EdgeHook

DEFAULT_SCORE_BATCHES = 8
DEFAULT_BATCH_SIZE = 32


def _require(context: DataContext | None, name: str) -> DataContext:
    if context is None:
        raise ModelRejected(f"criterion '{name}' needs data: pass --data DATA.npz")
    return context


def _prunable_ids(dep: DependencyGraph) -> set[str]:
    return {g.id for g in dep.groups if g.prunable}


def _flatten(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    """(samples, positions on ``axis``, everything else) of an activation."""
    moved = tensor.movedim(axis, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1)


def _recorder(seen: dict[tuple[str, int], torch.Tensor], key: tuple[str, int]) -> EdgeHook:
    """An edge hook that keeps (a view of) the tensor on edge ``key`` in ``seen``, so gradients reach it."""

    def hook(tensor: torch.Tensor) -> torch.Tensor:
        view = tensor.view_as(tensor)
        seen[key] = view
        return view

    return hook


Observation = tuple[list[Tap], list["torch.Tensor"], list["torch.Tensor"]]


@dataclass
class ScoredOn:
    """How many of the scoring batches asked for ran before the deadline (``observed`` fills it in)."""

    batches: int = 0
    samples: int = 0
    asked: int = 0
    cut_by_deadline: bool = False


def _observe(
    dep: DependencyGraph,
    context: DataContext,
    *,
    seed: int,
    gradients: bool,
    deadline: float | None = None,
    observed: ScoredOn | None = None,
) -> Iterator[Observation]:
    """Yield (taps, activations, gradients: empty unless asked for) for each scoring batch of the current
    model; none after the batch that leaves less time before ``deadline`` than a batch has taken."""
    import torch

    from onnxprune.roundtrip.executor import OnnxModule

    taps = [t for t in consumer_taps(dep, _prunable_ids(dep)) if t.axis != 0]
    module = OnnxModule(dep.model).eval()
    generator = torch.Generator().manual_seed(seed)
    observed = observed if observed is not None else ScoredOn()
    observed.asked = min(context.score_batches, -(-len(context.train) // max(1, context.batch_size)))
    started = time.monotonic()
    for batch in context.train.batches(context.batch_size, shuffle=True, seed=seed, limit=context.score_batches):
        if observed.batches and deadline is not None:
            now = time.monotonic()
            if now + (now - started) / observed.batches > deadline:
                observed.cut_by_deadline = True
                break
        observed.batches += 1
        observed.samples += len(batch.indices)
        seen: dict[tuple[str, int], torch.Tensor] = {}
        hooks = {(t.node, t.input_index): _recorder(seen, (t.node, t.input_index)) for t in taps}
        if gradients:
            targets = context.objective.teacher_outputs(batch, context.train)
            outputs = module.run(batch.inputs, outputs=context.objective.tensors, edge_hooks=hooks)
            loss = context.objective.sampled_loss(outputs, batch, targets, generator)
            tensors = [seen[(t.node, t.input_index)] for t in taps]
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            observation = (
                taps,
                [x.detach() for x in tensors],
                [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, tensors)],
            )
            # This batch's graph goes before the next batch runs: held by these names through the yield, it
            # doubled the memory of a second ViT-S batch of 32 (15 GB, past the job's limit).
            del outputs, loss, tensors, grads, seen, hooks
            yield observation
            del observation
        else:
            with torch.no_grad():
                module.run(batch.inputs, outputs=context.objective.tensors, edge_hooks=hooks)
            yield taps, [seen[(t.node, t.input_index)] for t in taps], []


def _finish(dep: DependencyGraph, totals: dict[int, np.ndarray], counts: dict[int, np.ndarray]) -> Scores:
    """Average per class; channels no tap observed rank as most important (never removed first)."""
    scores: Scores = {}
    for index, group in enumerate(dep.groups):
        if not group.prunable:
            continue
        if index not in totals:
            scores[group.id] = np.full(group.channels, np.inf)
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            scores[group.id] = np.where(counts[index] > 0, totals[index] / counts[index], np.inf)
    return scores


def _accumulate(
    totals: dict[int, np.ndarray], counts: dict[int, np.ndarray], group: int, values: np.ndarray, weight: np.ndarray
) -> None:
    if group not in totals:
        totals[group] = np.zeros_like(values)
        counts[group] = np.zeros_like(weight, dtype=np.float64)
    totals[group] += values
    counts[group] += weight


def _l2_normalised(scores: Scores) -> Scores:
    out: Scores = {}
    for gid, score in scores.items():
        finite = score[np.isfinite(score)]
        norm = float(np.sqrt((finite**2).sum())) if finite.size else 0.0
        out[gid] = score / norm if norm > 0 else score
    return out


def _flops_penalty(dep: DependencyGraph) -> dict[str, float]:
    """MACs per channel of each group's nodes, divided by the largest (Molchanov's FLOPs term)."""
    from onnxprune.graphops.cost import measure_cost

    if dep.input_shapes is None:
        raise ModelRejected("FLOPs regularisation needs concrete input shapes; pass --input-shape")
    macs = {node.name: node.macs for node in measure_cost(dep.model, dep.input_shapes).nodes}
    per_channel = {g.id: sum(macs.get(n, 0) for n in g.nodes) / g.channels for g in dep.groups if g.prunable}
    top = max(per_channel.values(), default=0.0) or 1.0
    return {gid: value / top for gid, value in per_channel.items()}


def taylor(
    dep: DependencyGraph,
    *,
    seed: int = 0,
    data: DataContext | None = None,
    flops_regularization: float = 0.0,
    deadline: float | None = None,
    observed: ScoredOn | None = None,
    **_: object,
) -> Scores:
    """First-order Taylor estimate of the loss change when a channel is zeroed (Molchanov et al.)."""
    context = _require(data, "taylor")
    totals: dict[int, np.ndarray] = {}
    counts: dict[int, np.ndarray] = {}
    observations = _observe(dep, context, seed=seed, gradients=True, deadline=deadline, observed=observed)
    for taps, activations, gradients in observations:
        per_sample: dict[int, np.ndarray] = {}
        for tap, a, g in zip(taps, activations, gradients):
            products = _flatten(a * g, tap.axis).sum(-1).double().numpy()  # samples x positions
            for group, (sums, _positions) in per_class(dep, tap, products).items():
                per_sample[group] = per_sample.get(group, 0) + sums
        del activations, gradients  # not held while the next batch runs
        for group, sums in per_sample.items():
            _accumulate(totals, counts, group, np.abs(sums).sum(0), np.full(sums.shape[1], sums.shape[0]))
    scores = _l2_normalised(_finish(dep, totals, counts))
    if flops_regularization:
        penalty = _flops_penalty(dep)
        scores = {gid: s - flops_regularization * penalty[gid] for gid, s in scores.items()}
    return scores


def mean_activation(
    dep: DependencyGraph,
    *,
    seed: int = 0,
    data: DataContext | None = None,
    deadline: float | None = None,
    observed: ScoredOn | None = None,
    **_: object,
) -> Scores:
    """Mean |activation| of each channel where its group is read."""
    context = _require(data, "mean-activation")
    totals: dict[int, np.ndarray] = {}
    counts: dict[int, np.ndarray] = {}
    for taps, activations, _no_gradients in _observe(
        dep, context, seed=seed, gradients=False, deadline=deadline, observed=observed
    ):
        for tap, a in zip(taps, activations):
            flat = _flatten(a.abs(), tap.axis)
            values = flat.sum(-1).double().numpy()
            for group, (sums, positions) in per_class(dep, tap, values).items():
                _accumulate(totals, counts, group, sums.sum(0), positions * sums.shape[0] * flat.shape[-1])
    return _finish(dep, totals, counts)


def apoz(
    dep: DependencyGraph,
    *,
    seed: int = 0,
    data: DataContext | None = None,
    deadline: float | None = None,
    observed: ScoredOn | None = None,
    **_: object,
) -> Scores:
    """1 - APoZ: the fraction of each channel's activations that are positive (a ReLU keeps)."""
    context = _require(data, "apoz")
    totals: dict[int, np.ndarray] = {}
    counts: dict[int, np.ndarray] = {}
    for taps, activations, _no_gradients in _observe(
        dep, context, seed=seed, gradients=False, deadline=deadline, observed=observed
    ):
        for tap, a in zip(taps, activations):
            flat = _flatten((a > 0).double(), tap.axis)
            values = flat.sum(-1).numpy()
            for group, (sums, positions) in per_class(dep, tap, values).items():
                _accumulate(totals, counts, group, sums.sum(0), positions * sums.shape[0] * flat.shape[-1])
    return _finish(dep, totals, counts)


def _reader_rows(dep: DependencyGraph, taps: list[Tap]) -> dict[str, np.ndarray]:
    """Each tap's node's constant weight as rows, one per position of the tap's channel axis (the
    weights that read that channel, flattened); taps whose weight is not a constant, or whose rows do
    not match the tap's positions (a grouped conv), are left out."""
    read_weight = float_weight_reader(dep.model)
    nodes = {node.name: node for node in dep.model.graph.node}
    positions = {tap.node: len(tap.groups) for tap in taps}
    rows: dict[str, np.ndarray] = {}
    for entry in dep.reductions:
        node = nodes.get(entry.node)
        if node is None or entry.node not in positions or entry.node in rows or entry.input_index >= len(node.input):
            continue
        values = read_weight(node.input[entry.input_index])
        if values is None or values.shape[entry.axis] != positions[entry.node]:
            continue
        rows[entry.node] = np.moveaxis(values, entry.axis, 0).reshape(values.shape[entry.axis], -1)
    return rows


def _contributions(tap: Tap, activation: torch.Tensor, rows: torch.Tensor, group: int, units: int) -> np.ndarray:
    """(samples x units) mean over positions of the norm of each unit's share of the reader's output.

    A unit of one channel adds |x| times its row's norm; a unit of several (a head) adds its channels
    times their rows, whose norm is taken after the sum (heads cancel and reinforce within)."""
    import torch

    x = activation.movedim(tap.axis, -1)
    x = x.reshape(x.shape[0], -1, x.shape[-1]).float()  # samples x positions x channels
    where = np.flatnonzero(tap.groups == group)
    classes = tap.classes[where]
    out = torch.zeros(x.shape[0], units, dtype=torch.float64)
    sizes = np.bincount(classes, minlength=units)
    single = sizes[classes] == 1
    if single.any():
        channels = torch.as_tensor(where[single])
        norms = rows[channels].norm(dim=1)
        out[:, torch.as_tensor(classes[single])] = (x[..., channels].abs() * norms).mean(1).double()
    for unit in np.unique(classes[~single]).tolist():
        channels = torch.as_tensor(where[classes == unit])
        out[:, unit] = (x[..., channels] @ rows[channels]).norm(dim=-1).mean(1).double()
    return out.numpy()


def contribution(
    dep: DependencyGraph,
    *,
    seed: int = 0,
    data: DataContext | None = None,
    deadline: float | None = None,
    observed: ScoredOn | None = None,
    **_: object,
) -> Scores:
    """How much a unit adds to what the layers reading it compute: the mean norm, over samples and
    positions, of its activations times its rows of their weights, summed over those layers.

    Removing a unit takes exactly that out of each reader's output (before any refit), so it ranks
    heads and MLP neurons by the error their loss leaves, as Kwon et al. 2022 rank them by their
    mask's effect, with forward passes only: Taylor scores need a backward pass each, and on ViT-S at
    224 one batch of 32 took 40-55 s of a 300 s budget on 2 busy cores. For a conv reader it is
    mean |x| times the norm of the kernel slice that reads the channel (an upper bound per position)."""
    import torch

    context = _require(data, "contribution")
    totals: dict[int, np.ndarray] = {}
    counts: dict[int, np.ndarray] = {}
    readers: dict[str, torch.Tensor] | None = None
    for taps, activations, _no_gradients in _observe(
        dep, context, seed=seed, gradients=False, deadline=deadline, observed=observed
    ):
        if readers is None:
            readers = {node: torch.tensor(rows, dtype=torch.float32) for node, rows in _reader_rows(dep, taps).items()}
        per_sample: dict[int, np.ndarray] = {}
        for tap, a in zip(taps, activations):
            if tap.node not in readers:
                continue
            for group in np.unique(tap.groups[tap.groups >= 0]).tolist():
                values = _contributions(tap, a, readers[tap.node], group, dep.groups[group].channels)
                per_sample[group] = per_sample.get(group, 0) + values
        del activations
        for group, values in per_sample.items():
            _accumulate(totals, counts, group, values.sum(0), np.full(values.shape[1], values.shape[0]))
    return _finish(dep, totals, counts)


def _gram(tap: Tap, activation: torch.Tensor) -> torch.Tensor:
    """[x, 1]^T [x, 1] over the samples and positions of a tap's input (channels last): the second
    moments the reader's least-squares refit (weights and intercept) solves with."""
    import torch

    x = activation.movedim(tap.axis, -1).reshape(-1, activation.shape[tap.axis]).float()
    x = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
    return (x.T @ x).double()


def _compensated(tap: Tap, gram: torch.Tensor, rows: torch.Tensor, group: int, units: int) -> np.ndarray:
    """Per unit, the root mean square per position of what the reader's output loses when the unit goes
    and the other inputs (and the intercept) are refit by ridge least squares: with H the inputs' second
    moments, |W_j|^2 / (H^-1)_jj for a channel, trace(W_P^T ((H^-1)_PP)^-1 W_P) for a unit of channels P."""
    import torch

    from onnxprune.roundtrip.reconstruction import RIDGE

    scale = float(gram.diagonal()[:-1].mean().clamp_min(1e-12))
    inverse = torch.linalg.inv(gram + RIDGE * scale * torch.eye(gram.shape[0], dtype=gram.dtype))
    weights = rows.double()
    where = np.flatnonzero(tap.groups == group)
    classes = tap.classes[where]
    out = np.zeros(units)
    for unit in np.unique(classes).tolist():
        channels = torch.as_tensor(where[classes == unit])
        block = weights[channels]
        left = torch.linalg.solve(inverse[channels][:, channels], block)
        out[unit] = float((block * left).sum().clamp_min(0.0).sqrt())
    return out


def obs(
    dep: DependencyGraph,
    *,
    seed: int = 0,
    data: DataContext | None = None,
    deadline: float | None = None,
    observed: ScoredOn | None = None,
    **_: object,
) -> Scores:
    """What removing a unit costs once the layer-wise refit has compensated it: the part of its
    contribution (``contribution``) that the reader's other inputs cannot rebuild by least squares
    (Optimal Brain Surgeon for one unit at a time, Hassibi & Stork 1993; ZipLM, Kurtic et al. 2023, for
    heads and neurons). A neuron whose activation the others predict costs little, however large.

    One forward pass per batch accumulates each reader's input second moments; the solve is per
    reader at the end. For a conv reader the moments are per position (kernel taps not modelled)."""
    import torch

    context = _require(data, "obs")
    grams: dict[str, torch.Tensor] = {}
    seen: dict[str, Tap] = {}
    for taps, activations, _no_gradients in _observe(
        dep, context, seed=seed, gradients=False, deadline=deadline, observed=observed
    ):
        for tap, a in zip(taps, activations):
            grams[tap.node] = grams[tap.node] + _gram(tap, a) if tap.node in grams else _gram(tap, a)
            seen[tap.node] = tap
        del activations
    readers = _reader_rows(dep, list(seen.values()))
    totals: dict[int, np.ndarray] = {}
    for node, tap in seen.items():
        if node not in readers:
            continue
        rows = torch.tensor(readers[node], dtype=torch.float64)
        gram = grams[node] / float(grams[node][-1, -1])  # per position
        for group in np.unique(tap.groups[tap.groups >= 0]).tolist():
            # A coupled group read by several layers adds their costs, as ``contribution`` does.
            totals[group] = totals.get(group, 0) + _compensated(tap, gram, rows, group, dep.groups[group].channels)
    return _finish(dep, totals, {group: np.ones_like(values) for group, values in totals.items()})


def bn_gamma(dep: DependencyGraph, *, seed: int = 0, **_: object) -> Scores:
    """Mean |BatchNorm scale| over the BatchNorms a channel passes; groups without one fall back to l1."""
    weights = {init.name: init for init in dep.model.graph.initializer}
    totals = [np.zeros(g.channels) for g in dep.groups]
    counts = [np.zeros(g.channels) for g in dep.groups]
    found = False
    for node in dep.model.graph.node:
        layout = dep.layouts.get(node.input[0]) if node.op_type == "BatchNormalization" else None
        if layout is None or node.input[1] not in weights:
            continue
        gamma = np.abs(numpy_helper.to_array(weights[node.input[1]]).astype(np.float64))
        groups, classes = dep.classes_of(layout.atoms)
        for group in np.unique(groups).tolist():
            where = groups == group
            np.add.at(totals[group], classes[where], gamma[where])
            np.add.at(counts[group], classes[where], 1)
            found = True
    if not found:
        raise ModelRejected(
            "criterion 'bn-gamma' needs BatchNormalization nodes; this model has none "
            "(exporters fold BatchNorm into Conv in inference mode)"
        )
    fallback = l1_norm(dep)
    scores: Scores = {}
    for index, group in enumerate(dep.groups):
        if not group.prunable:
            continue
        if counts[index].sum() == 0:
            scores[group.id] = fallback[group.id]
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            scores[group.id] = np.where(counts[index] > 0, totals[index] / counts[index], np.inf)
    return scores


def mark(criterion: Criterion, **flags: bool) -> None:
    """Set flags that graphops reads from a criterion by name (``needs_data``): function attributes,
    written through ``vars`` since a type checker knows no attributes on a function."""
    vars(criterion).update(flags)


for _criterion in (taylor, mean_activation, apoz, contribution, obs):
    mark(_criterion, needs_data=True)
mark(bn_gamma, needs_data=False)
