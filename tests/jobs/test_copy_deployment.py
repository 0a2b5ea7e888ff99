"""Moving a one-host deployment to PostgreSQL and S3: a finished job's record, upload and result come
over, and the API of the new deployment serves the same bytes with the same SHA-256."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from onnxprune.jobs.copy_deployment import copy_deployment, main
from onnxprune.jobs.job_store import JobRecord, JobStatus
from onnxprune.jobs.settings import Settings
from onnxprune.jobs.store import SqliteJobStore
from onnxprune.service.api import create_app
from tests.support.cluster_servers import S3Server, fresh_database
from tests.support.service_models import convnet

KEY = "copy-test-client-key-0123"


def test_a_finished_job_is_served_alike_after_the_move(tmp_path: Path, s3_server: S3Server, s3_env) -> None:
    old = Settings(redis_url=None, data_dir=tmp_path / "old", max_upload_mb=1, retry_delay_s=0)
    with TestClient(create_app(old)) as client:
        posted = client.post(
            "/v1/jobs",
            files={"model": ("m.onnx", convnet().SerializeToString())},
            data={"config": '{"ratio": 0.5, "benchmark": false, "round_to": 1}'},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        job_id = posted.json()["id"]
        deadline = time.monotonic() + 120
        while client.get(f"/v1/jobs/{job_id}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline, client.get(f"/v1/jobs/{job_id}").json()
            time.sleep(0.2)
        before = client.get(f"/v1/jobs/{job_id}/model")

    bucket = s3_server.create_bucket()
    with fresh_database() as database_url:
        new = Settings(
            redis_url=None,
            data_dir=tmp_path / "new-host",
            database_url=database_url,
            artifacts_url=f"s3://{bucket}/deploy",
            s3_endpoint_url=s3_server.url,
        )
        copied = copy_deployment(old.data_dir, new)
        again = copy_deployment(old.data_dir, new)  # interrupted and run again: nothing doubles
        with TestClient(create_app(new)) as client:
            job = client.get(f"/v1/jobs/{job_id}").json()
            after = client.get(f"/v1/jobs/{job_id}/model")
            listed = client.get("/v1/jobs", headers={"Authorization": f"Bearer {KEY}"}).json()

    assert (copied.jobs, copied.results, again.jobs, again.skipped) == (1, 1, 0, 1)
    assert job["status"] == "succeeded" and job["report"] is not None
    assert after.content == before.content
    assert after.headers["X-Content-SHA256"] == before.headers["X-Content-SHA256"] == job["output_sha256"]
    assert [j["id"] for j in listed["jobs"]] == [job_id]


def test_it_refuses_while_jobs_are_active(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.create(JobRecord("j1", "o", "f", JobStatus.queued, "{}", time.time()))
    code = main(["--from-data-dir", str(tmp_path), "--to-database", "postgresql://x@127.0.0.1:9/x",
                 "--to-artifacts", "s3://b/p", "--scratch-dir", str(tmp_path / "s")])  # fmt: skip
    assert code == 2
    assert "1 jobs are queued or running" in capsys.readouterr().err
