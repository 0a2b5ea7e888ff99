"""Each channel group's share of the model's MACs, counted once so that the shares add up.

A layer's MACs belong to the group of the channels it computes (its filters): a conv reads one
group and writes another, and counting it in both made ``analyze`` shares sum to about 200%. MACs
of layers that produce no tracked channels (weights computed at run time) belong to no group.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxprune.graphops.dependency import DependencyGraph


def macs_shares(dep: DependencyGraph, node_macs: Mapping[str, int]) -> dict[str, float]:
    """Fraction of all MACs computed by each group's filters, by group id (sums to at most 1)."""
    total = sum(node_macs.values())
    macs = {group.id: 0.0 for group in dep.groups}
    # A node may write its channels as several producers (a fused attention's Q, K and V parts).
    written: dict[str, int] = {}
    for producer in dep.producers:
        written[producer.node] = written.get(producer.node, 0) + len(producer.atoms)
    for producer in dep.producers:
        node = node_macs.get(producer.node, 0)
        if not node or not len(producer.atoms):
            continue
        group_index, _ = dep.classes_of(producer.atoms)
        indices, counts = np.unique(group_index, return_counts=True)
        for index, count in zip(indices.tolist(), counts.tolist()):
            macs[dep.groups[index].id] += node * count / written[producer.node]
    return {group_id: value / total if total else 0.0 for group_id, value in macs.items()}
