"""Bearer tokens isolate jobs; the retention sweep removes old jobs and orphaned uploads."""

from __future__ import annotations

import os
import time

import pytest
from fastapi.testclient import TestClient

from onnxprune.jobs.settings import Settings
from onnxprune.service.api import create_app
from onnxprune.service.retention import remove_expired
from tests.support.service_models import convnet

MODEL = convnet().SerializeToString()


def _submit(client: TestClient, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(
        "/v1/jobs", files={"model": ("m.onnx", MODEL)}, data={"config": '{"benchmark": false}'}, headers=headers
    )


@pytest.fixture
def token_client(tmp_path):
    settings = Settings(redis_url=None, data_dir=tmp_path / "data", api_tokens="alice-secret, bob-secret")
    with TestClient(create_app(settings)) as client:
        yield client


def test_without_a_valid_token_every_job_route_is_401(token_client):
    for response in (_submit(token_client), _submit(token_client, "mallory"), token_client.get("/v1/jobs")):
        assert response.status_code == 401
        assert response.json()["error"] == {"code": "unauthorized", "message": "missing or invalid bearer token"}
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert token_client.get("/healthz").status_code == 200


def test_a_token_sees_only_its_own_jobs(token_client):
    alice = {"Authorization": "Bearer alice-secret"}
    bob = {"Authorization": "Bearer bob-secret"}
    job_id = _submit(token_client, "alice-secret").json()["id"]

    assert token_client.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 200
    assert token_client.get(f"/v1/jobs/{job_id}", headers=bob).status_code == 404
    assert token_client.delete(f"/v1/jobs/{job_id}", headers=bob).status_code == 404
    assert token_client.get("/v1/jobs", headers=bob).json()["total"] == 0
    assert token_client.get("/v1/jobs", headers=alice).json()["total"] == 1


def test_without_tokens_ids_are_capabilities_and_listing_is_scoped_to_a_client_key(client):
    alice = {"Authorization": "Bearer alice-random-client-key-0001"}
    bob = {"Authorization": "Bearer bob-random-client-key-00002"}
    with_key = client.post(
        "/v1/jobs", files={"model": ("m.onnx", MODEL)}, data={"config": '{"benchmark": false}'}, headers=alice
    ).json()["id"]
    anonymous = _submit(client).json()["id"]

    assert client.get("/v1/jobs").status_code == 403  # no key: no listing at all
    assert client.get("/v1/jobs").json()["error"]["code"] == "listing_disabled"
    assert [j["id"] for j in client.get("/v1/jobs", headers=alice).json()["jobs"]] == [with_key]
    assert client.get("/v1/jobs", headers=bob).json()["total"] == 0
    assert client.get("/v1/jobs/not-a-job-id", headers=bob).status_code == 404
    # Whoever holds an id may fetch the job (links to results carry no header).
    assert client.get(f"/v1/jobs/{with_key}").status_code == 200
    assert client.get(f"/v1/jobs/{anonymous}", headers=bob).status_code == 200
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer short"}).status_code == 401


def test_retention_removes_old_jobs_and_orphaned_uploads_but_keeps_recent_ones(tmp_path):
    settings = Settings(redis_url=None, data_dir=tmp_path / "data", retention_hours=1)
    with TestClient(create_app(settings)) as client:
        job_id = _submit(client).json()["id"]
    orphan = settings.jobs_dir / "crashed-upload"
    orphan.mkdir()
    old = time.time() - 2 * 3600
    os.utime(orphan, (old, old))

    from onnxprune.jobs.store import JobStore

    store = JobStore(settings.database_path)
    assert remove_expired(settings, store) == 0
    assert not orphan.exists()
    assert (settings.jobs_dir / job_id).exists()

    assert remove_expired(settings, store, now=time.time() + 2 * 3600) == 1
    assert store.get(job_id) is None
    assert not (settings.jobs_dir / job_id).exists()
