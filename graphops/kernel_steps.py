"""Channel-count steps that follow the kernel a group's producers run on, for ``round_to`` 'auto'.

The job's step (``workers.latency.resolve_round_to``: a cached latency table's staircase, else the
CPU's vector width, or MLAS's int8 panel for a model that runs int8) is the conv kernels' and depends
on the CPU. Fully connected layers run on
onnxruntime's MLAS SGEMM, which packs weights in 16-column panels on every CPU: MLP widths and the
projections of attention heads take the step of their kernel instead (an attention head of 32 or 64
channels is already on it, so any head count is; benchmarks/results/transformer_widths.md found no
head count faster than its share of a straight line).
"""

from __future__ import annotations

import math
from dataclasses import replace

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.ops import handler_for


def with_kernel_steps(dep: DependencyGraph) -> DependencyGraph:
    """``dep`` whose groups produced only by ops with a ``column_step`` carry it as their ``round_to``
    (the least common multiple where producers differ); the others keep the job's step."""
    op_of = {node.name: (node.op_type, node.domain) for node in dep.model.graph.node}
    groups = []
    for group in dep.groups:
        steps = [handler_for(*op_of.get(name, ("", ""))).column_step for name in group.producers]
        if group.prunable and steps and all(steps):
            group = replace(group, round_to=math.lcm(*(int(s) for s in steps if s)))
        groups.append(group)
    return replace(dep, groups=groups)


def kernel_steps_note(dep: DependencyGraph) -> str:
    """What :func:`with_kernel_steps` gave ``dep``'s groups, for the report's ``round_to_source`` ('' if nothing)."""
    stepped = [g for g in dep.groups if g.round_to is not None]
    if not stepped:
        return ""
    steps = ", ".join(str(s) for s in sorted({int(g.round_to or 0) for g in stepped}))
    return (
        f"; {len(stepped)} group(s) of MLP neurons or attention heads on their SGEMM kernel's step of {steps} "
        "channels (a head count of 16-channel multiples is any count)"
    )
