"""Where a channel group is observed in the data: the inputs of the filters that read it.

The masking oracle removes a channel by zeroing the weights that read it in every Conv,
ConvTranspose, Gemm and MatMul (``dep.reductions``). Those ops' data inputs are therefore where a
channel's effect on the loss enters: a coupled group (a residual stream) is read at many of them,
and its score sums over all. Each tap maps every position of its channel axis to a group class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune.graphops.dependency import DependencyGraph


@dataclass(frozen=True)
class Tap:
    node: str
    input_index: int
    tensor: str
    axis: int
    groups: np.ndarray  # group index of each position on ``axis`` (-1: not a scored group)
    classes: np.ndarray  # class index within that group


def consumer_taps(dep: DependencyGraph, group_ids: set[str]) -> list[Tap]:
    """One tap per (filter node, data input) reading channels of the groups ``group_ids``."""
    nodes = {node.name: node for node in dep.model.graph.node}
    wanted = np.array([g.id in group_ids for g in dep.groups], dtype=bool)
    taps: dict[tuple[str, int], Tap] = {}
    for entry in dep.reductions:
        node = nodes.get(entry.node)
        if node is None:
            continue
        # A reduction's constant is one operand of a product and the data the other (a MatMul by a
        # left-hand weight reads its data at input 1); its op's handler recorded which input it sliced.
        data_index = 0 if entry.input_index != 0 else 1
        if (node.name, data_index) in taps or data_index >= len(node.input):
            continue
        layout = dep.layouts.get(node.input[data_index])
        if layout is None or not len(layout):
            continue
        groups, classes = dep.classes_of(layout.atoms)
        groups = np.where(wanted[groups], groups, -1)
        if (groups >= 0).any():
            taps[(node.name, data_index)] = Tap(
                node.name, data_index, node.input[data_index], layout.axis, groups, classes
            )
    return list(taps.values())


def per_class(dep: DependencyGraph, tap: Tap, values: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Sum ``values`` (samples x positions on the tap's axis) into each group's classes.

    Returns {group index: (sums of shape samples x classes, positions per class)}.
    """
    out = {}
    for group in np.unique(tap.groups[tap.groups >= 0]).tolist():
        where = tap.groups == group
        channels = dep.groups[group].channels
        sums = np.zeros((values.shape[0], channels))
        np.add.at(sums.T, tap.classes[where], values[:, where].T)
        counts = np.bincount(tap.classes[where], minlength=channels)
        out[group] = (sums, counts)
    return out
