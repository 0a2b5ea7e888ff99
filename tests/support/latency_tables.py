"""Hand-made latency tables (linear curves, nothing depends on the clock) and the two-group model they
describe, and a pipeline run that finds such a table cached on this machine."""

from __future__ import annotations

import hashlib

import onnx

from onnxprune.graphops.latency_table import LatencyCurve, LatencyTable
from onnxprune.workers.latency import LatencySettings, table_key
from onnxprune.workers.options import PruneOptions
from tests.support import zoo
from tests.support.oracle import analyse


def two_group_model(width: int = 128, size: int = 8) -> onnx.ModelProto:
    """x[1,16,s,s] -> Conv(a: width) -> Relu -> Conv(b: width) -> Relu -> Conv(c: 16) -> y

    Two prunable groups (a's and b's outputs) whose channels remove the same MACs each."""
    g = zoo.GraphBuilder(seed=7)
    a = g.conv("input", 16, width)
    b = g.conv(g.node("Relu", [a]), width, width)
    out = g.conv(g.node("Relu", [b]), width, 16)
    return g.model([zoo.float_input("input", [1, 16, size, size])], out, 13, "two_group")


def table_of(curves: dict[str, tuple[int, float]], *, baseline: float = 10.0, step: int = 16) -> LatencyTable:
    """Linear curves on the step grid: group -> (channels, ms saved per channel removed)."""
    made = {}
    for group, (channels, rate) in curves.items():
        counts = tuple(range(step, channels, step)) + (channels,)
        made[group] = LatencyCurve(group, channels, counts, tuple(baseline - rate * (channels - c) for c in counts))
    return LatencyTable(
        key="hand-made", baseline_ms=baseline, noise_ms=0.05, step=step, step_source="test", curves=made
    )


def prune(tmp_path, monkeypatch, *, round_to: int | str, cached: bool, only_b: bool = False, **options):
    """The two-group model pruned by the pipeline at --flops-target 0.3, with (or without) a cached
    table in which b's channels cost 10x the time of a's (l1 scores here cut a first); ``only_b``: the
    table has no curve for a (as one measured with a's conv excluded); ``options``: more options."""
    from onnxprune.workers.pipeline import run_pipeline

    monkeypatch.setenv("ONNXPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    model = two_group_model()
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    analysed = analyse(model)
    a, b = (g.id for g in analysed.dep.prunable)
    options = PruneOptions(flops_target=0.3, round_to=round_to, benchmark=False, **options)
    table = table_of({b: (128, 0.05)} if only_b else {a: (128, 0.005), b: (128, 0.05)})
    if cached:
        key = table_key(
            hashlib.sha256(path.read_bytes()).hexdigest(), analysed.input_shapes, LatencySettings.of(options)
        )
        (tmp_path / "cache" / "latency").mkdir(parents=True)
        (tmp_path / "cache" / "latency" / f"{key}.json").write_text(table.to_json())
    report = run_pipeline(path, tmp_path / "out.onnx", options).report  # oracle-checked
    if cached:  # what the job left of the cache: the same table, not one measured again
        assert (tmp_path / "cache" / "latency" / f"{key}.json").read_text() == table.to_json()
    return analysed, table, report
