"""Filter-ranking criteria, in a registry so later criteria (Taylor, APoZ, learned) plug in.

A criterion returns, for every prunable group, one score per channel: higher means more important.
Weight-norm criteria (Li et al. 2017) score each producer's filters; in a coupled group (a residual
chain where several convs write the same channels) a channel's score is the mean over producers of
its filter norm divided by that producer's mean filter norm, so that every layer weighs the same
whatever the scale of its weights. Groups that only linear layers produce (MLP neurons, attention
heads) count the weights that read each unit as well: an MLP neuron is its column of the first
projection and its row of the second, a head its columns of Q, K and V and its rows of the output
projection (a unit's score is the mean over all of its channels).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import numpy as np

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.dequantized import float_weight_reader
from onnxprune.graphops.errors import DuplicateRegistration, ModelRejected
from onnxprune.graphops.ops import handler_for

Scores = dict[str, np.ndarray]
Criterion = Callable[..., Scores]

_CRITERIA: dict[str, Criterion] = {}
_BUILT_IN: set[str] = set()  # registered in code (``register_criterion``), not loaded from an entry point
# Criteria from other packages (data-driven ones that need torch) register under this entry-point
# group and are imported only when used, so weight-norm jobs never load their dependencies.
PLUGIN_GROUP = "onnxprune.criteria"


def register_criterion(name: str) -> Callable[[Criterion], Criterion]:
    """Function decorator: ``function`` is the criterion ``name``, which no other function is."""

    def decorate(function: Criterion) -> Criterion:
        existing = _CRITERIA.get(name)
        if existing is not None:
            raise DuplicateRegistration(
                f"criterion '{name}' is already {existing.__module__}.{existing.__qualname__}; "
                f"{function.__module__}.{function.__qualname__} registers it too"
            )
        _CRITERIA[name] = function
        _BUILT_IN.add(name)
        return function

    return decorate


def _plugins() -> dict[str, EntryPoint]:
    """The criteria entry points by name; one that names a registered criterion, or a name two
    entry points claim, is refused (which one ran would depend on the installation)."""
    plugins: dict[str, EntryPoint] = {}
    for point in entry_points(group=PLUGIN_GROUP):
        if point.name in _BUILT_IN or point.name in plugins:
            raise DuplicateRegistration(
                f"criterion '{point.name}' is registered twice: entry point '{point.name} = {point.value}' "
                f"({PLUGIN_GROUP}) names a criterion that already exists"
            )
        plugins[point.name] = point
    return plugins


def available_criteria() -> set[str]:
    return set(_CRITERIA) | set(_plugins())


def get_criterion(name: str) -> Criterion:
    if name not in _CRITERIA:
        plugin = _plugins().get(name)
        if plugin is None:
            known = ", ".join(sorted(available_criteria()))
            raise ModelRejected(f"unknown criterion '{name}'; choose one of: {known}")
        _CRITERIA[name] = plugin.load()
    return _CRITERIA[name]


def criterion_needs_data(name: str) -> bool:
    """Data-driven criteria mark themselves with ``needs_data = True``."""
    return bool(getattr(get_criterion(name), "needs_data", False))


def score_groups(dep: DependencyGraph, criterion: str, *, seed: int = 0, **options: Any) -> Scores:
    """Scores of every prunable group's channels under ``criterion``; extra ``options`` (data, a
    model path...) are passed to criteria that need them."""
    return get_criterion(criterion)(dep, seed=seed, **options)


def _producer_norms(dep: DependencyGraph, order: float) -> Scores:
    read_weight = float_weight_reader(dep.model)  # dequantized for weights behind DequantizeLinear
    totals = [np.zeros(g.channels) for g in dep.groups]
    counts = [np.zeros(g.channels) for g in dep.groups]
    prunable = np.array([g.prunable for g in dep.groups], dtype=bool)
    for producer in dep.producers:
        if not prunable[dep.classes_of(producer.atoms)[0]].any():
            continue  # only frozen groups (a classifier's outputs): no score is asked of them
        values = read_weight(producer.weight)
        if values is None:
            continue
        flat = producer.filters(values)
        if order == 1:
            norms = np.abs(flat).sum(axis=1, dtype=np.float64)
        else:
            norms = np.sqrt(np.einsum("ij,ij->i", flat, flat, dtype=np.float64))
        mean = norms.mean()
        if mean > 0:
            norms = norms / mean
        groups, classes = dep.classes_of(producer.atoms)
        for group in np.unique(groups).tolist():
            where = groups == group
            np.add.at(totals[group], classes[where], norms[where])
            np.add.at(counts[group], classes[where], 1)
    for weight, axis, atoms in _linear_readers(dep):
        groups, classes = dep.classes_of(atoms)
        if not any(prunable[g] and not dep.groups[g].filter_producers for g in np.unique(groups).tolist()):
            continue
        values = read_weight(weight)
        if values is None:
            continue
        moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
        if order == 1:
            norms = np.abs(moved).sum(axis=1, dtype=np.float64)
        else:
            norms = np.sqrt(np.einsum("ij,ij->i", moved, moved, dtype=np.float64))
        mean = norms.mean()
        if mean > 0:
            norms = norms / mean
        for group in np.unique(groups).tolist():
            if dep.groups[group].filter_producers:
                continue  # conv groups: filters only, as Li et al.
            where = groups == group
            np.add.at(totals[group], classes[where], norms[where])
            np.add.at(counts[group], classes[where], 1)
    scores = {}
    for index, group in enumerate(dep.groups):
        if group.prunable:
            with np.errstate(invalid="ignore", divide="ignore"):
                score = totals[index] / counts[index]
            # Channels no producer scores (joined from elsewhere) are treated as most important.
            scores[group.id] = np.where(counts[index] > 0, score, np.inf)
    return scores


def _linear_readers(dep: DependencyGraph) -> list[tuple[str, int, np.ndarray]]:
    """(weight name, axis, atoms) of every linear layer's weight axis that reads tracked channels."""
    nodes = {node.name: node for node in dep.model.graph.node}
    readers = []
    for entry in dep.reductions:
        node = nodes.get(entry.node)
        if (
            node is not None
            and handler_for(node.op_type, node.domain).role == "linear"
            and entry.input_index < len(node.input)
        ):
            readers.append((node.input[entry.input_index], entry.axis, entry.atoms))
    return readers


@register_criterion("l1")
def l1_norm(dep: DependencyGraph, **_: object) -> Scores:
    """Sum of absolute filter weights (Li et al., ICLR 2017)."""
    return _producer_norms(dep, 1)


@register_criterion("l2")
def l2_norm(dep: DependencyGraph, **_: object) -> Scores:
    """Euclidean norm of each filter."""
    return _producer_norms(dep, 2)


@register_criterion("random")
def random_scores(dep: DependencyGraph, *, seed: int = 0, **_: object) -> Scores:
    """Uniform random scores: the baseline every criterion must beat."""
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.channels) for g in dep.groups if g.prunable}
