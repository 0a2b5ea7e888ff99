"""The HTML report: one self-contained page with its plots inlined, node names escaped, and the
service routes that serve it (``GET /v1/jobs/{id}/report.html``) and the upload page (``GET /``).
The same pages in a real browser: ``tests/browser``."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from onnxprune.jobs.settings import Settings
from onnxprune.service.api import create_app
from onnxprune.workers.html_report import render_report_html
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import run_pipeline
from tests.support.oracle import run_model
from tests.support.reports import inlined_plots
from tests.support.small_models import two_branch_model

# Integration: the pipeline, the CLI or a sandbox; the pipeline's stages run in this process, as in a
# job's sandbox (tests/support/job_sandbox.py).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("stages_in_the_job_process")]

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def auto_report(tmp_path_factory):
    """A ratio-'auto' run with labelled data: the report has curves, an evaluation and latency."""
    folder = tmp_path_factory.mktemp("html")
    model = two_branch_model()
    onnx.save(model, folder / "model.onnx")
    x = np.random.default_rng(1).standard_normal((100, 3, 8, 8)).astype(np.float32)
    np.savez(folder / "data.npz", input=x, labels=run_model(model, {"input": x})[0].argmax(axis=1))
    options = PruneOptions(ratio="auto", max_drop=0.05, benchmark_runs=3, round_to=1)
    return run_pipeline(folder / "model.onnx", folder / "out.onnx", options, data=folder / "data.npz").report


@pytest.fixture(scope="module")
def page(auto_report) -> str:
    return render_report_html(auto_report, title="two branches")


def test_the_page_inlines_every_plot_as_a_png(page):
    plots = inlined_plots(page)
    assert set(plots) == {"plot-summary", "plot-sensitivity", "plot-channels", "plot-macs"}
    assert all(png.startswith(PNG) and len(png) > 2000 for png in plots.values())


def test_the_page_fetches_nothing_and_runs_no_script(page):
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_the_page_shows_numbers_before_and_after(auto_report, page):
    for text in (
        "MACs",
        "Parameters",
        "Latency p50",
        "Accuracy (labels)",
        "every fifth sample",
        "Channels per group",
        "MACs per layer",
        "Frozen groups",
        "chosen ratio",
    ):
        assert text in page, text
    assert f"{auto_report.macs.before:,}" in page and f"{auto_report.macs.after:,}" in page
    assert "0.9" in page  # the idle branch's chosen ratio


def test_frozen_groups_are_listed_with_their_reason(auto_report, page):
    assert auto_report.frozen, "the classifier's outputs reach the graph output"
    for frozen in auto_report.frozen:
        assert frozen.reason.replace("'", "&#39;") in page


def test_a_fine_tuned_job_shows_accuracy_after_pruning_and_after_fine_tuning(auto_report):
    evaluation = auto_report.evaluation.model_copy(update={"after_pruning": 0.4321})
    page = render_report_html(auto_report.model_copy(update={"evaluation": evaluation}))
    assert "pruned 0.4321, then fine-tuned" in page
    assert "plot-summary" in inlined_plots(page)


def test_node_names_from_the_model_are_escaped(tmp_path):
    model = two_branch_model()
    model.graph.node[0].name = "<script>alert(1)</script>"
    onnx.save(model, tmp_path / "evil.onnx")
    report = run_pipeline(
        tmp_path / "evil.onnx", tmp_path / "out.onnx", PruneOptions(ratio=0.5, benchmark=False)
    ).report
    page = render_report_html(report)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_without_latency_or_data_the_summary_shows_output_fidelity(tmp_path):
    onnx.save(two_branch_model(), tmp_path / "m.onnx")
    report = run_pipeline(tmp_path / "m.onnx", tmp_path / "out.onnx", PruneOptions(ratio=0.5, benchmark=False)).report
    page = render_report_html(report)
    assert "plot-summary" in inlined_plots(page) and "plot-sensitivity" not in inlined_plots(page)
    assert "Output fidelity (random inputs)" in page


# ---- the service routes -----------------------------------------------------------------------


@pytest.fixture
def client(tmp_path):
    settings = Settings(redis_url=None, data_dir=tmp_path / "data", retry_delay_s=0)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def finished(client: TestClient, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise TimeoutError(job_id)


def test_a_finished_job_serves_its_report_page_with_a_strict_content_policy(client, tmp_path):
    onnx.save(two_branch_model(), tmp_path / "m.onnx")
    with open(tmp_path / "m.onnx", "rb") as handle:
        created = client.post(
            "/v1/jobs",
            files={"model": ("m.onnx", handle)},
            data={"config": json.dumps({"ratio": 0.5, "benchmark": False})},
        )
    assert created.status_code == 202, created.text
    job = finished(client, created.json()["id"])
    assert job["status"] == "succeeded", job
    page = client.get(f"/v1/jobs/{job['id']}/report.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert {"plot-channels", "plot-macs"} <= set(inlined_plots(page.text))
    assert client.get(f"/v1/jobs/{job['id']}/report.html").text == page.text  # rendered once, then cached


def test_a_report_page_of_an_unknown_job_is_404(client):
    response = client.get("/v1/jobs/nope/report.html")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_the_upload_page_and_its_assets_come_from_the_service_itself(client):
    page = client.get("/")
    assert page.status_code == 200 and '<form id="job-form">' in page.text
    assert not re.search(r'(src|href)="https?:', page.text)
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/../api.py").status_code == 404
