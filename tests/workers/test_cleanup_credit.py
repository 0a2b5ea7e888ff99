"""Each speed-up credited to its cause: the pipeline's graph cleanup (initializers out of the graph
inputs, constants folded) is timed on its own, and a changed input list is said, in the report, the
CLI summary and the HTML page (``workers.cleanup``)."""

from __future__ import annotations

import onnx
import pytest

from onnxprune.service.cli import _print_summary
from onnxprune.workers.html_report import render_report_html
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import run_pipeline
from tests.support.small_models import residual_model

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")


def initializers_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The old exporters' form (IR 3): every weight also listed as a graph input.

    x ----------------------------------------> Conv(a) -> ... -> Gemm
    a.weight, a.bias, ..., fc, fc_b (inputs, and initializers) --^
    """
    listed = onnx.ModelProto()
    listed.CopyFrom(model)
    listed.ir_version = 3
    for init in model.graph.initializer:
        listed.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return listed


@pytest.fixture(scope="module")
def weights_as_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cleanup")
    model = initializers_as_inputs(residual_model(width=32))
    onnx.save(model, folder / "model.onnx")
    options = PruneOptions(ratio=0.5, round_to=1, benchmark_runs=5)
    report = run_pipeline(folder / "model.onnx", folder / "out.onnx", options).report
    return model, report, onnx.load(str(folder / "out.onnx"))


def test_the_cleanup_alone_is_timed_beside_the_original_and_the_pruned_model(weights_as_inputs):
    _, report, _ = weights_as_inputs
    latency = report.latency_ms

    assert latency.cleaned is not None and latency.cleaned.runs == latency.before.runs == 5
    assert latency.pruning_change is not None and latency.cleanup_change is not None
    # Each ratio is the quotient of its two medians: pruning alone against the cleaned-up original.
    assert latency.pruning_change.ratio == pytest.approx(latency.after.p50 / latency.cleaned.p50, rel=1e-3)
    assert latency.cleanup_change.ratio == pytest.approx(latency.cleaned.p50 / latency.before.p50, rel=1e-3)


def test_a_changed_input_list_is_stated_in_the_report(weights_as_inputs):
    model, report, written = weights_as_inputs

    inputs = len(model.graph.input)
    weights = len(model.graph.initializer)
    assert [value.name for value in written.graph.input] == ["input"]
    assert report.interface_changes == [
        f"graph inputs: {inputs} -> 1: {weights} initializer(s) no longer listed as inputs "
        "(weights can no longer be fed at run time)"
    ]


def test_the_summary_and_the_page_credit_pruning_and_the_cleanup_apart(weights_as_inputs, capsys):
    _, report, _ = weights_as_inputs
    alone, whole = report.latency_ms.pruning_change.summary, report.latency_ms.change.summary

    _print_summary(report)
    printed = capsys.readouterr().out
    page = render_report_html(report)

    assert f"latency: {alone} from pruning; {whole} with the graph cleanup" in printed
    assert "pruning alone (vs cleaned-up original)" in printed
    assert "graph inputs: " in printed and "initializer(s) no longer listed as inputs" in printed
    assert 'id="speed-pruning"' in page and f"{alone} from pruning" in page
    assert "initializer(s) no longer listed as inputs" in page


def test_a_model_the_cleanup_leaves_alone_is_timed_against_the_original_only(tmp_path):
    onnx.save(residual_model(width=32), tmp_path / "model.onnx")

    report = run_pipeline(
        tmp_path / "model.onnx", tmp_path / "out.onnx", PruneOptions(ratio=0.5, round_to=1, benchmark_runs=3)
    ).report

    assert report.latency_ms.cleaned is None and report.latency_ms.pruning_change is None
    assert report.interface_changes == []
