"""The criterion a job with data runs when it names none (``criterion`` 'auto'), chosen once the model
is analysed: what is best differs between conv nets and transformers.

- Transformers at a MACs target (attention heads and MLP neurons make more of the prunable MACs than
  conv filters): ``obs`` (what a least-squares refit cannot rebuild of a unit), MLP neurons first and
  attention heads last, cut only when neurons alone cannot reach the target. On the committed
  benchmark (benchmarks/results/transformers.md, `--time-budget 300`, 2 cores) this held MiniLM-L3 at
  -30% MACs to -0.01 Spearman points against -0.50 for taylor on every kind, and ViT-S/14 at -30% of
  its backbone to output cosine 0.9855 against 0.9811. The latency target already cuts heads last
  (benchmarks/results/latency_heads.md).
- Everything else (conv nets, detectors whose few attention blocks are a small share, ratio and
  latency targets): ``taylor``, the best of the conv criteria (benchmarks/results/quality.md).
"""

from __future__ import annotations

from dataclasses import replace

from onnxprune.graphops.dependency import DependencyGraph
from onnxprune.graphops.kinds import KINDS, KindLimits, limit_groups, most_removable
from onnxprune.workers.analysis import Analysis
from onnxprune.workers.options import AUTO_CRITERION, DATA_CRITERION, TRANSFORMER_CRITERION, MacsTarget, PruneOptions


def transformer_share(dep: DependencyGraph, node_macs: dict[str, int]) -> float:
    """The share of the prunable groups' producers' MACs that attention heads and MLP neurons produce."""
    by_kind = {kind: 0 for kind in KINDS}
    for group in dep.prunable:
        if group.kind is not None:
            by_kind[group.kind] += sum(node_macs.get(name, 0) for name in group.producers)
    total = sum(by_kind.values())
    return (by_kind["head"] + by_kind["neuron"]) / total if total else 0.0


def resolve_default_criterion(analysis: Analysis, options: PruneOptions) -> tuple[PruneOptions, Analysis, list[str]]:
    """``options`` with criterion 'auto' resolved for this model, the analysis whose groups hold heads
    whole where they come last, and what the report should say about the choice."""
    if options.criterion != AUTO_CRITERION:
        return options, analysis, []
    target = options.target
    if not isinstance(target, MacsTarget) or transformer_share(analysis.dep, analysis.node_macs) <= 0.5:
        return options.model_copy(update={"criterion": DATA_CRITERION}), analysis, []
    options = options.model_copy(update={"criterion": TRANSFORMER_CRITERION})
    notes = [f"criterion {TRANSFORMER_CRITERION}: the default with data for a transformer at a MACs target"]
    kinds = {g.kind for g in analysis.dep.prunable}
    if options.kind_limits.limits_anything or not {"head", "neuron"} <= kinds:
        return options, analysis, notes
    held = limit_groups(
        analysis.dep,
        KindLimits(frozenset(KINDS) - {"head"}),
        by=f"criterion auto ({TRANSFORMER_CRITERION}): heads last",
    )
    if most_removable(held, analysis.node_macs) < target.fraction:
        notes.append("attention heads cut too: MLP neurons alone cannot remove that much of the MACs")
        return options, analysis, notes
    notes.append(
        "attention heads left whole (heads last): MLP neurons reach the MACs target; "
        "--criterion obs or --prune-kinds head,neuron lets both go"
    )
    return options, replace(analysis, dep=held), notes
