"""A bounded queue answers 429 + Retry-After; the reconciler re-sends only orphaned jobs, a bounded
number of times. The runner is replaced by one that keeps jobs queued, so the limits can be reached."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from onnxprune.jobs.reconcile import needs_resend, reconcile
from onnxprune.jobs.settings import Settings
from onnxprune.jobs.store import JobRecord, JobStatus, JobStore
from onnxprune.service.api import create_app
from tests.support.service_models import convnet

MODEL = convnet().SerializeToString()


class KeepsQueued:
    """A runner whose workers never come: every accepted job stays queued."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def start(self) -> None: ...
    def warm_up(self) -> None: ...
    def probe(self, timeout_s: float) -> None: ...
    def submit(self, job_id: str) -> None:
        self.sent.append(job_id)

    def ready(self) -> str | None:
        return None

    def capabilities(self) -> frozenset[str] | None:
        return None  # unknown: the upload is not refused for a missing capability

    def pending_ids(self) -> set[str] | None:
        return set(self.sent)

    def close(self) -> None: ...


def _post(client: TestClient, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(
        "/v1/jobs", files={"model": ("m.onnx", MODEL)}, data={"config": '{"benchmark": false}'}, headers=headers
    )


@pytest.fixture
def queue_app(tmp_path):
    def make(**limits) -> TestClient:
        app = create_app(Settings(redis_url=None, data_dir=tmp_path / "data", **limits))
        app.state.runner = KeepsQueued()
        return TestClient(app)

    return make


def test_beyond_the_deployment_queue_limit_a_submit_is_a_429_with_retry_after(queue_app):
    with queue_app(max_active_jobs=2) as client:
        accepted = [_post(client).status_code for _ in range(2)]
        refused = _post(client)
        depth = client.get("/v1/queue").json()

    assert accepted == [202, 202]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) > 0
    assert depth == {"queued": 2, "running": 0, "limit": 2}


def test_a_per_token_quota_limits_one_token_and_not_the_others(queue_app):
    with queue_app(api_tokens="alice-token,bob-token", max_active_per_owner=1) as client:
        first = _post(client, "alice-token")
        second = _post(client, "alice-token")
        other = _post(client, "bob-token")

    assert first.status_code == 202 and other.status_code == 202
    assert second.status_code == 429 and second.json()["error"]["code"] == "quota_exceeded"


def _job(store: JobStore, job_id: str, **fields) -> JobRecord:
    record = JobRecord(
        id=job_id,
        owner="",
        fingerprint="f",
        status=JobStatus.queued,
        config="{}",
        created_at=fields.pop("created_at", 0.0),
        sent_at=fields.pop("sent_at", None),
    )
    store.create(record)
    return record


def test_the_reconciler_resends_only_orphans_and_gives_up_after_the_bound(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    now = time.time()
    _job(store, "in-broker", created_at=now - 100)
    _job(store, "lost", created_at=now - 100)
    _job(store, "young", created_at=now - 1)
    _job(store, "held", created_at=now - 100)
    store.claim("held", "w", 60, max_attempts=3)
    _job(store, "dead-worker", created_at=now - 100)
    store.claim("dead-worker", "w", -50, max_attempts=3)  # its lease expired 50 s ago
    sent: list[str] = []

    first = reconcile(store, {"in-broker"}, sent.append, grace_s=30, max_resends=2, now=now)
    assert sorted(first.resent) == ["dead-worker", "lost"] and first.failed == []
    assert reconcile(store, {"in-broker"}, sent.append, grace_s=30, max_resends=2, now=now).resent == []  # grace
    reconcile(store, {"in-broker"}, sent.append, grace_s=30, max_resends=2, now=now + 31)
    last = reconcile(store, {"in-broker"}, sent.append, grace_s=30, max_resends=2, now=now + 62)

    assert sorted(last.failed) == ["dead-worker", "lost"]
    assert sent.count("lost") == 2
    lost = store.get("lost")
    assert lost.status is JobStatus.failed and "lost 3 times" in lost.error_message
    assert store.get("in-broker").status is JobStatus.queued and store.get("held").status is JobStatus.running


def test_unknown_broker_contents_count_as_lost_and_a_broker_error_is_not_counted(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = _job(store, "j", created_at=0.0)

    def refuse(_: str) -> None:
        raise ConnectionError("broker down")

    assert needs_resend(store.get("j"), None, now=100.0, grace_s=30)
    assert reconcile(store, None, refuse, grace_s=30, max_resends=1, now=100.0).resent == []
    assert store.get(job.id).resends == 0


def test_jobs_in_the_broker_that_no_worker_takes_are_reported_not_resent(tmp_path, caplog):
    store = JobStore(tmp_path / "jobs.sqlite3")
    now = time.time()
    _job(store, "waiting", created_at=now - 300)
    _job(store, "fresh", created_at=now - 10)
    sent: list[str] = []
    result = reconcile(store, {"waiting", "fresh"}, sent.append, grace_s=30, max_resends=2, now=now)
    assert result.untaken == ["waiting"] and sent == []
    assert "no worker is taking jobs" in caplog.text
    _job(store, "busy", created_at=now - 300)
    store.claim("busy", "w", 60, max_attempts=3)  # a worker is at work: the queue is just long
    assert reconcile(store, {"waiting", "fresh"}, sent.append, grace_s=30, max_resends=2, now=now).untaken == []
