"""Node names come from uploaded models: the report page and its plots never parse them, and bound them.

A name with paired ``$`` is mathtext to matplotlib: ``$\\frac{a}{$`` raised on every render, and a
20,000-character ``$...$`` name cost seconds of CPU per render (issue 33).
"""

from __future__ import annotations

import json
import time

import onnx
import pytest
from fastapi.testclient import TestClient

from onnxprune.jobs.files import JobFiles
from onnxprune.jobs.settings import Settings
from onnxprune.service import web
from onnxprune.service.api import create_app
from onnxprune.workers import plots
from onnxprune.workers.html_report import MAX_NAME_CHARS, render_report_html
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import run_pipeline
from onnxprune.workers.report import LayerReport
from tests.support.reports import inlined_plots
from tests.support.small_models import two_branch_model

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")

BROKEN_MATH = r"$\frac{a}{$"
LONG_MATH = "$" + r"\sqrt{x}" * 2500 + "$"  # 20,000 characters of mathtext


UPLOADABLE_MATH = "$" + r"\sqrt{x}" * 124 + "$"  # 994 characters: under the upload's limit on names


def hostile_model(long: str = LONG_MATH) -> onnx.ModelProto:
    """two_branch_model with its nodes named to break or slow a mathtext parser."""
    model = two_branch_model()
    for index, node in enumerate(model.graph.node):
        node.name = BROKEN_MATH + str(index) if index % 2 else long + str(index)
    return model


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    onnx.save(hostile_model(), folder / "m.onnx")
    return run_pipeline(folder / "m.onnx", folder / "out.onnx", PruneOptions(ratio=0.5, benchmark=False)).report


def test_plot_labels_escape_dollars_and_are_short():
    label = plots.plot_label(LONG_MATH)
    assert len(label) <= 41 and "$" not in label.replace(r"\$", "")
    assert plots.plot_label("a$b$c") == r"a\$b\$c"


def test_hostile_names_are_drawn_without_the_mathtext_parser(hostile_report, monkeypatch):
    from matplotlib import mathtext

    def refuse(*_args, **_kwargs):
        raise AssertionError("a label went through the mathtext parser")

    monkeypatch.setattr(mathtext.MathTextParser, "parse", refuse)
    assert any(BROKEN_MATH in layer.name for layer in hostile_report.layers)
    page = render_report_html(hostile_report)
    assert {"plot-channels", "plot-macs"} <= set(inlined_plots(page))


def test_names_are_shortened_in_the_page_and_kept_whole_in_the_report(hostile_report):
    page = render_report_html(hostile_report)
    assert LONG_MATH[:MAX_NAME_CHARS] not in page and LONG_MATH[: MAX_NAME_CHARS - 1] in page
    assert any(layer.name.startswith(LONG_MATH) for layer in hostile_report.layers)


def test_bar_charts_show_the_largest_layers_only(monkeypatch):
    from matplotlib.axes import Axes

    labels_drawn: list[list[str]] = []
    set_xticks = Axes.set_xticks

    def record(self, ticks, labels=None, **kwargs):
        labels_drawn.append(list(labels or []))
        return set_xticks(self, ticks, labels, **kwargs)

    monkeypatch.setattr(Axes, "set_xticks", record)
    layers = [LayerReport(name=f"n{i}", op_type="Conv", macs_before=i, macs_after=i // 2) for i in range(500)]
    assert plots.macs_png(layers).startswith(b"\x89PNG")
    assert labels_drawn == [[f"n{i}" for i in range(440, 500)]]  # the 60 largest, in their order


# ---- the service: the job draws the page in its sandbox; the API only serves it ---------------


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


def submit(client: TestClient, model: onnx.ModelProto, tmp_path) -> dict:
    onnx.save(model, tmp_path / "m.onnx")
    with open(tmp_path / "m.onnx", "rb") as handle:
        created = client.post(
            "/v1/jobs",
            files={"model": ("m.onnx", handle)},
            data={"config": json.dumps({"ratio": 0.5, "benchmark": False})},
        )
    assert created.status_code == 202, created.text
    job = finished(client, created.json()["id"])
    assert job["status"] == "succeeded", job
    return job


def test_a_job_publishes_its_page_and_the_api_draws_nothing(client, tmp_path, monkeypatch):
    job = submit(client, hostile_model(UPLOADABLE_MATH), tmp_path)
    files = JobFiles.of(client.app.state.settings.jobs_dir, job["id"])
    assert (files.result / "report.html").is_file()

    def no_drawing(*_args, **_kwargs):
        raise AssertionError("the API drew a page the job had published")

    monkeypatch.setattr(web, "_draw_in_sandbox", no_drawing)
    page = client.get(f"/v1/jobs/{job['id']}/report.html")
    assert page.status_code == 200, page.text
    assert {"plot-channels", "plot-macs"} <= set(inlined_plots(page.text))


def test_a_failed_drawing_is_recorded_and_not_retried_per_request(client, tmp_path, monkeypatch):
    """A result published without a page (an older job) is drawn by the API in a sandboxed child; when
    that fails, every later GET answers from the record instead of drawing again."""
    job = submit(client, two_branch_model(), tmp_path)
    files = JobFiles.of(client.app.state.settings.jobs_dir, job["id"])
    (files.result / "report.html").unlink()
    files.report.write_text('{"not": "a report"}')  # the child fails to validate it
    children: list[str] = []
    draw = web._draw_in_sandbox

    def counted(*args, **kwargs):
        children.append("drawn")
        return draw(*args, **kwargs)

    monkeypatch.setattr(web, "_draw_in_sandbox", counted)
    for _ in range(3):
        response = client.get(f"/v1/jobs/{job['id']}/report.html")
        assert response.status_code == 500 and response.json()["error"]["code"] == "report_page_failed"
    assert children == ["drawn"]


def test_an_older_result_without_a_page_gets_it_drawn_once(client, tmp_path):
    job = submit(client, two_branch_model(), tmp_path)
    files = JobFiles.of(client.app.state.settings.jobs_dir, job["id"])
    (files.result / "report.html").unlink()
    first = client.get(f"/v1/jobs/{job['id']}/report.html")
    assert first.status_code == 200 and {"plot-channels", "plot-macs"} <= set(inlined_plots(first.text))
    assert (files.root / "report.html").is_file()
    assert client.get(f"/v1/jobs/{job['id']}/report.html").text == first.text
