"""Admission holds under concurrency: the queue limit and the per-caller quota are checked in the same
transaction as the insert (``JobStore.create``), quotas in open mode count the client's address (a
new self-chosen key buys nothing), and byte budgets count what is stored, failed jobs' uploads not
for long. The concurrent tests send real uploads at once to a real API server (Celery mode, no
worker: every accepted job stays queued)."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient

import onnxprune.jobs.run as jobs
from onnxprune.graphops.errors import ModelRejected
from onnxprune.jobs.settings import Settings
from onnxprune.jobs.store import JobStatus, SqliteJobStore
from onnxprune.service.api import create_app
from onnxprune.service.runners import EmbeddedRunner
from tests.support.service_models import convnet

MODEL = convnet().SerializeToString()
CONFIG = '{"benchmark": false}'


def _concurrent_uploads(url: str, count: int) -> list[httpx.Response]:
    """``count`` uploads released at once, each with a client key of its own."""
    start = threading.Barrier(count)
    answers: list[httpx.Response] = []

    def upload() -> None:
        headers = {"Authorization": f"Bearer {uuid.uuid4().hex}"}  # a fresh self-chosen key each
        start.wait()
        answers.append(
            httpx.post(f"{url}/v1/jobs", files={"model": ("m.onnx", MODEL)}, data={"config": CONFIG},
                       headers=headers, timeout=120)
        )  # fmt: skip

    threads = [threading.Thread(target=upload) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def _codes(answers: list[httpx.Response]) -> dict[int, int]:
    found: dict[int, int] = {}
    for answer in answers:
        found[answer.status_code] = found.get(answer.status_code, 0) + 1
    return found


@pytest.mark.service
def test_concurrent_uploads_never_pass_the_queue_limit(celery_env, start_api) -> None:
    api = start_api({**celery_env, "ONNXPRUNE_MAX_ACTIVE_JOBS": "6", "ONNXPRUNE_API_TOKENS": "token-" + "x" * 20})
    token = {"Authorization": "Bearer token-" + "x" * 20}
    start = threading.Barrier(24)
    answers: list[httpx.Response] = []

    def upload() -> None:
        start.wait()
        answers.append(
            httpx.post(f"{api.url}/v1/jobs", files={"model": ("m.onnx", MODEL)}, data={"config": CONFIG},
                       headers=token, timeout=120)
        )  # fmt: skip

    threads = [threading.Thread(target=upload) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _codes(answers) == {202: 6, 429: 18}, [a.text for a in answers if a.status_code not in (202, 429)]
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 429} == {"queue_full"}
    assert httpx.get(f"{api.url}/v1/queue", headers=token).json()["queued"] == 6


@pytest.mark.service
def test_in_open_mode_a_new_key_does_not_buy_a_new_quota(celery_env, start_api) -> None:
    """Six uploads from one address, each with another self-chosen key, quota 2: two get in."""
    api = start_api({**celery_env, "ONNXPRUNE_MAX_ACTIVE_PER_OWNER": "2"})
    answers = _concurrent_uploads(api.url, 6)
    assert _codes(answers) == {202: 2, 429: 4}
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 429} == {"quota_exceeded"}


class _KeepsQueued:
    def start(self) -> None: ...
    def warm_up(self) -> None: ...
    def probe(self, timeout_s: float) -> None: ...
    def submit(self, job_id: str) -> None: ...
    def ready(self) -> str | None:
        return None

    def capabilities(self) -> frozenset[str] | None:
        return None

    def pending_ids(self) -> set[str] | None:
        return set()

    def close(self) -> None: ...


def _client(tmp_path, **limits) -> TestClient:
    app = create_app(Settings(redis_url=None, data_dir=tmp_path / "data", **limits))
    app.state.runner = _KeepsQueued()
    return TestClient(app)


def _post(client: TestClient, key: str = "k" * 24):
    return client.post(
        "/v1/jobs",
        files={"model": ("m.onnx", MODEL)},
        data={"config": CONFIG},
        headers={"Authorization": f"Bearer {key}"},
    )


def test_a_callers_byte_budget_answers_429_until_a_job_is_removed(tmp_path) -> None:
    budget_mb = 1.5 * len(MODEL) / 2**20  # room for one upload, not two
    with _client(tmp_path, max_stored_mb_per_owner=budget_mb, max_active_jobs=100) as client:
        first = _post(client)
        assert first.status_code == 202
        refused = _post(client, key="another-key-" + "k" * 12)  # same address, so the same budget
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "storage_quota_exceeded"
        assert refused.headers["Retry-After"]
        assert client.delete(f"/v1/jobs/{first.json()['id']}").status_code == 200  # cancelled: upload removed
        assert _post(client).status_code == 202


def test_the_deployments_byte_budget_answers_507_before_the_disk_fills(tmp_path) -> None:
    with _client(tmp_path, max_stored_mb=2.5 * len(MODEL) / 2**20) as client:
        assert [_post(client, key=f"caller-{i}-" + "k" * 16).status_code for i in range(3)] == [202, 202, 507]
        assert _post(client).json()["error"]["code"] == "storage_full"


def test_a_failed_jobs_upload_is_removed_at_once_and_stops_counting(tmp_path, monkeypatch) -> None:
    settings = Settings(redis_url=None, data_dir=tmp_path / "data", retry_delay_s=0)
    with _client(tmp_path) as client:
        job_id = _post(client).json()["id"]
    store = SqliteJobStore(settings.database_path)
    assert store.stored_bytes() == len(MODEL)

    def rejected(*args, **kwargs):
        raise ModelRejected("node 'x' is odd")

    monkeypatch.setattr(jobs, "run_job_process", rejected)
    EmbeddedRunner(settings, store)._run(job_id)
    job = store.get(job_id)
    assert job is not None and job.status is JobStatus.failed and job.input_bytes == 0
    assert not (settings.jobs_dir / job_id / "input.onnx").exists()
    assert store.stored_bytes() == 0


def test_the_retention_sweep_removes_failed_uploads_it_finds(tmp_path) -> None:
    """A failed job whose upload the worker could not remove (say the object store was away) loses it
    at the first sweep after ``failed_upload_retention_s``, not after ``retention_hours``."""
    from onnxprune.service.retention import remove_expired

    settings = Settings(redis_url=None, data_dir=tmp_path / "data", failed_upload_retention_s=60)
    with _client(tmp_path) as client:
        job_id = _post(client).json()["id"]
    store = SqliteJobStore(settings.database_path)
    assert store.fail(job_id, "model_rejected", "bad")
    remove_expired(settings, store)
    assert (settings.jobs_dir / job_id / "input.onnx").exists()  # within the grace period
    remove_expired(settings, store, now=time.time() + 61)
    assert not (settings.jobs_dir / job_id / "input.onnx").exists()
    assert store.stored_bytes() == 0 and store.get(job_id) is not None  # the record stays for the user
