"""``--latency-target`` with ``--quantize``: the target applies to the model the user gets, the quantized one.

The latency table times every variant quantized, against the float original as the reference; each
pass of the closed loop quantizes its candidate before timing it against the float original, as the
pipeline's final benchmark does (``workers.latency``, ``workers.latency_target``).
"""

from __future__ import annotations

from dataclasses import replace

import onnx
import pytest

from onnxprune.graphops.cost import measure_cost
from onnxprune.graphops.latency_table import LatencyCurve, LatencyTable
from onnxprune.graphops.scoring import score_groups
from onnxprune.workers.latency import (
    LatencySettings,
    _measure_variants,
    measure_latency_table,
    plan_variants,
    vector_width,
)
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.speed import decisive_ratio
from tests.support.oracle import analyse
from tests.support.small_models import chain_model

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")


def test_a_quantized_table_prices_the_target_against_the_float_original():
    """Quantized original 4 ms, float original 10 ms: int8 alone runs at 0.4x, so a target of 0.5 needs no
    pruning, and 0.3 needs 1 ms saved; a float table of the same numbers would ask for 2 ms at 0.5."""
    table = LatencyTable(
        key="k",
        baseline_ms=4.0,
        noise_ms=0.1,
        step=16,
        step_source="test",
        curves={"a": LatencyCurve("a", 64, (32, 64), (3.0, 4.0))},
        quantize="int8",
        float_original_ms=10.0,
    )
    assert table.reference_ms == 10.0
    assert table.goal_ms(0.5) == 0.0
    assert table.goal_ms(0.3) == pytest.approx(1.0)
    assert table.predict_ratio({"a": 32}) == pytest.approx(0.3)
    assert LatencyTable.from_json(table.to_json()) == table
    as_float = replace(table, quantize="none", float_original_ms=None)
    assert as_float.reference_ms == 4.0 and as_float.goal_ms(0.5) == pytest.approx(2.0)


def test_every_variant_of_a_quantized_table_is_timed_quantized_and_the_float_original_once(monkeypatch):
    """The measuring half, run in this process on our own model: which models reach onnxruntime."""
    import onnxprune.workers.benchmark as benchmark_module

    analysed = analyse(chain_model(width=32, size=8))
    dep, scores = analysed.dep, score_groups(analysed.dep, "l1")
    settings = LatencySettings(runs=2, warmup=1, budget_s=60.0, fractions=(0.5,), probe_groups=0, quantize="int8")
    groups = [i for i, g in enumerate(dep.groups) if g.id in {p.id for p in dep.prunable}]
    variants, _ = plan_variants(dep, scores, groups, settings, vector_width()[0])
    timed: list[bool] = []  # per session: is the model quantized?
    real = benchmark_module.session_from_bytes

    def recording(data: bytes, threads: int, optimization: str):
        model = onnx.load_from_string(data)
        timed.append(any(node.op_type == "QuantizeLinear" for node in model.graph.node))
        return real(data, threads, optimization)

    monkeypatch.setattr(benchmark_module, "session_from_bytes", recording)
    from onnxprune.workers.benchmark import make_inputs

    inputs = make_inputs(dep.model, dict(dep.input_shapes or {}), 0)
    (baseline, results), reference = _measure_variants(dep, variants, inputs, settings)

    assert len(results) == len(variants) >= 1 and reference is not None
    assert timed == [True, False] + [True] * len(variants)  # the original quantized, the float reference, variants
    assert len(reference[0]) == len(reference[1]) == settings.runs and baseline


def test_the_table_of_a_quantized_job_is_keyed_apart_and_holds_the_float_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CACHE_DIR", str(tmp_path))
    analysed = analyse(chain_model(width=32, size=8))
    dep, scores = analysed.dep, score_groups(analysed.dep, "l1")
    cost = measure_cost(analysed.prepared, analysed.input_shapes)
    settings = LatencySettings(runs=3, warmup=1, budget_s=20.0, fractions=(0.5,), probe_groups=0)
    as_float = measure_latency_table(dep, scores, cost, "sha-of-chain", settings)
    quantized = measure_latency_table(dep, scores, cost, "sha-of-chain", replace(settings, quantize="int8"))

    assert as_float.quantize == "none" and as_float.float_original_ms is None
    assert quantized.quantize == "int8" and quantized.float_original_ms is not None
    assert quantized.float_original_ms > 0 and quantized.key != as_float.key
    assert len(list(tmp_path.glob("latency/*.json"))) == 2
    assert LatencySettings.of(PruneOptions(quantize="dynamic", threads=2)).quantize == "dynamic"


@pytest.mark.slow
def test_with_quantize_the_latency_target_is_judged_on_the_written_int8_model(tmp_path, monkeypatch):
    """The table, the target and the report are the int8 model's: what the user runs. (Whether the
    target is met is wall clock, checked by the timing test below.)"""
    from onnxprune.workers.html_report import render_report_html
    from onnxprune.workers.pipeline import run_pipeline

    monkeypatch.setenv("ONNXPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "chain.onnx"
    onnx.save(chain_model(width=128, size=32), source)
    options = PruneOptions(latency_target=0.3, quantize="int8", latency_budget_s=30.0, benchmark_runs=20)
    report = run_pipeline(source, tmp_path / "out.onnx", options).report  # oracle-checked, then quantized

    lt = report.latency_target
    assert lt is not None and lt.applies_to == "int8" and lt.float_original_ms is not None
    assert lt.float_original_ms > 0 and 1 <= len(lt.iterations) <= options.latency_iterations
    assert report.quantization is not None and report.latency_ms is not None
    written = onnx.load(tmp_path / "out.onnx")
    assert any(node.op_type == "QuantizeLinear" for node in written.graph.node)
    page = render_report_html(report)
    assert "for the <b>int8</b> model" in page


@pytest.mark.timing
def test_with_quantize_the_latency_target_is_met_by_the_quantized_model(tmp_path, monkeypatch):
    """Wall clock (pytest -m timing): the target is set below what int8 alone gives on this machine
    (as the pipeline measures it), so channels must go too; the written int8 model meets it."""
    from onnxprune.workers.pipeline import run_pipeline

    monkeypatch.setenv("ONNXPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "chain.onnx"
    onnx.save(chain_model(width=128, size=32), source)
    only_int8 = run_pipeline(source, tmp_path / "q.onnx", PruneOptions(ratio=0.0, quantize="int8", benchmark_runs=20))
    int8_alone = decisive_ratio(only_int8.report.latency_ms.change)
    target = round(max(0.05, 0.6 * int8_alone), 3)

    options = PruneOptions(latency_target=target, quantize="int8", latency_budget_s=30.0, benchmark_runs=20)
    report = run_pipeline(source, tmp_path / "out.onnx", options).report  # oracle-checked, then quantized

    lt = report.latency_target
    assert lt is not None and lt.float_original_ms is not None
    assert lt.baseline_ms < lt.float_original_ms  # the table's original is the int8 one
    assert any(g.channels_after < g.channels_before for g in report.groups)  # int8 alone was not enough
    assert lt.met and decisive_ratio(lt.measured) <= target
    # the pipeline's final measurement of the written int8 model against the float original: a second,
    # independent timing of the same graph, so a quarter of slack on its p50 for a shared machine
    assert report.latency_ms is not None and report.latency_ms.change.ratio <= 1.25 * target
