"""What the pipeline's graph cleanup changes, apart from pruning, so each gain is credited to its cause.

Before analysis every model is prepared (``graphops.prepare``): constant subgraphs are folded into
initializers and initializers that old exporters list among the graph inputs stop being inputs.
That alone can make onnxruntime much faster (a weight that is an input cannot be folded or fused:
ultraface RFB-320 runs about 2.5x faster with nothing pruned). The benchmark therefore also times the
original *after the same cleanup*, and the report gives the speed-up of pruning alone beside the whole
one, and says when the model's input or output list changed.
"""

from __future__ import annotations

import onnx

from onnxprune.workers.report import Latency


def cleanup_changed(original: onnx.ModelProto, prepared: onnx.ModelProto) -> bool:
    """Whether the cleanup changed what onnxruntime runs: the interface, or nodes folded away."""
    return bool(interface_changes(original, prepared)) or len(original.graph.node) != len(prepared.graph.node)


def interface_changes(original: onnx.ModelProto, result: onnx.ModelProto) -> list[str]:
    """One line per changed list (graph inputs, graph outputs), saying what changed and why."""
    changes = []
    initializers = {init.name for init in original.graph.initializer}
    for what in ("input", "output"):
        before = [value.name for value in getattr(original.graph, what)]
        after = [value.name for value in getattr(result.graph, what)]
        if before == after:
            continue
        removed = [name for name in before if name not in set(after)]
        added = [name for name in after if name not in set(before)]
        weights = [name for name in removed if name in initializers]
        parts = []
        if weights:
            parts.append(
                f"{len(weights)} initializer(s) no longer listed as inputs (weights can no longer be fed at run time)"
            )
        others = [name for name in removed if name not in initializers]
        if others:
            parts.append(f"removed {_names(others)}")
        if added:
            parts.append(f"added {_names(added)}")
        if not parts:
            parts.append("reordered")
        changes.append(f"graph {what}s: {len(before)} -> {len(after)}: " + "; ".join(parts))
    return changes


def credited_speed(latency: Latency | None) -> str | None:
    """ "1.33x faster from pruning; 2.47x faster with the graph cleanup", when the cleanup was timed."""
    if latency is None or latency.change is None or latency.pruning_change is None:
        return None
    return f"{latency.pruning_change.summary} from pruning; {latency.change.summary} with the graph cleanup"


def _names(names: list[str], shown: int = 3) -> str:
    listed = ", ".join(repr(name) for name in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")
