"""GET /v1/jobs/{id} serves the stored status and a report validated once, identical to a full render."""

from __future__ import annotations

import time

from svc_models import convnet

from jobs.files import JobFiles
from service.schemas import JobPublic
from workers.report import PruneReport

MODEL = convnet().SerializeToString()


def test_a_polled_job_renders_like_the_full_model_and_its_report_is_read_once(client, embedded_settings):
    job_id = client.post(
        "/v1/jobs", files={"model": ("m.onnx", MODEL)}, data={"config": '{"ratio": 0.5, "benchmark": false}'}
    ).json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job_id}").json()["status"] != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.1)

    polled = client.get(f"/v1/jobs/{job_id}")
    report_path = JobFiles.of(embedded_settings.jobs_dir, job_id).report
    record = client.app.state.store.get(job_id)
    expected = JobPublic.of(record, PruneReport.model_validate_json(report_path.read_text()))
    report_path.write_text("not JSON any more")  # a second poll must not read the file again
    again = client.get(f"/v1/jobs/{job_id}")

    assert polled.status_code == again.status_code == 200
    assert polled.headers["content-type"] == "application/json"
    assert polled.json() == expected.model_dump(mode="json")
    assert again.json() == polled.json()
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
