"""The job store contract, run over every implementation (SQLite, PostgreSQL): what the API, the
workers and the reconciler rely on. Each test names the guarantee it pins."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from onnxprune.jobs.job_store import (
    Admission,
    AdmissionRefused,
    IdempotencyConflict,
    JobRecord,
    JobStatus,
    JobStore,
    StoreUnavailable,
)


def _job(
    job_id: str | None = None,
    *,
    owner: str = "alice",
    created_at: float | None = None,
    status=JobStatus.queued,
    **fields,
) -> JobRecord:
    return JobRecord(
        id=job_id or uuid.uuid4().hex,
        owner=owner,
        fingerprint="f" * 64,
        status=status,
        config='{"ratio": 0.5}',
        created_at=time.time() if created_at is None else created_at,
        **fields,
    )


def test_a_created_job_reads_back_field_for_field(job_store: JobStore) -> None:
    job = _job(idempotency_key="k1", has_data=True, input_bytes=1234, quota_key="address:10.0.0.1")
    job_store.create(job)
    stored = job_store.get(job.id)
    assert stored is not None
    assert stored == JobRecord(**{**job.__dict__, "sent_at": job.created_at})
    assert job_store.get("no-such-job") is None


def test_an_idempotency_key_used_twice_names_the_first_job(job_store: JobStore) -> None:
    first = job_store.create(_job(idempotency_key="same"))
    with pytest.raises(IdempotencyConflict) as conflict:
        job_store.create(_job(idempotency_key="same"))
    assert conflict.value.existing.id == first.id
    job_store.create(_job(idempotency_key="same", owner="bob"))  # keys are per owner


def test_listing_is_newest_first_with_a_stable_order_and_a_total(job_store: JobStore) -> None:
    ids = [f"job{i:02d}" for i in range(7)]
    for i, job_id in enumerate(ids):
        job_store.create(_job(job_id, created_at=1000.0 + i // 2))  # pairs share a timestamp: ordered by id
    job_store.create(_job(owner="bob"))
    page1, total = job_store.list("alice", limit=3, offset=0)
    page2, _ = job_store.list("alice", limit=3, offset=3)
    page3, _ = job_store.list("alice", limit=3, offset=6)
    assert total == 7
    assert [j.id for j in page1 + page2 + page3] == ["job06", "job04", "job05", "job02", "job03", "job00", "job01"]


def test_a_claim_is_exclusive_while_its_lease_lives_and_fenced_once_it_expires(job_store: JobStore) -> None:
    job = job_store.create(_job())
    first = job_store.claim(job.id, "host-a", ttl_s=0.3, max_attempts=3)
    assert first is not None
    assert job_store.claim(job.id, "host-b", ttl_s=0.3, max_attempts=3) is None  # a duplicate delivery
    assert job_store.progress(job.id, first, "analyse", 0.4)
    time.sleep(0.4)  # the first attempt stalls past its lease
    second = job_store.claim(job.id, "host-b", ttl_s=30, max_attempts=3)
    assert second is not None and second != first
    # The stalled attempt is fenced off: nothing it writes applies.
    assert not job_store.renew(job.id, first, 30)
    assert not job_store.holds(job.id, first)
    assert not job_store.progress(job.id, first, "apply", 0.9)
    assert not job_store.succeed(job.id, first, "a" * 64, result_key="attempts/first")
    assert not job_store.fail(job.id, "internal_error", "late", token=first)
    assert job_store.succeed(job.id, second, "b" * 64, result_key="attempts/second", result_bytes=10)
    done = job_store.get(job.id)
    assert done is not None
    assert (done.status, done.output_sha256, done.result_key, done.attempts) == (
        JobStatus.succeeded,
        "b" * 64,
        "attempts/second",
        2,
    )
    assert job_store.claim(job.id, "host-c", ttl_s=30, max_attempts=5) is None  # finished: never again


def test_attempts_are_bounded(job_store: JobStore) -> None:
    job = job_store.create(_job())
    token = job_store.claim(job.id, "a", ttl_s=30, max_attempts=1)
    assert token is not None
    assert job_store.requeue(job.id, token, "worker lost")
    assert job_store.claim(job.id, "a", ttl_s=30, max_attempts=1) is None
    requeued = job_store.get(job.id)
    assert requeued is not None and requeued.status is JobStatus.queued and requeued.error_message == "worker lost"


def test_progress_only_moves_forward(job_store: JobStore) -> None:
    job = job_store.create(_job())
    token = job_store.claim(job.id, "a", ttl_s=30, max_attempts=1)
    assert token is not None
    assert job_store.progress(job.id, token, "score", 0.6)
    assert job_store.progress(job.id, token, "plan", 0.2)
    record = job_store.get(job.id)
    assert record is not None and (record.stage, record.progress) == ("plan", 0.6)


def test_cancel_and_finish_race_has_one_winner(job_store: JobStore) -> None:
    cancelled, finished = job_store.create(_job()), job_store.create(_job())
    token_c = job_store.claim(cancelled.id, "a", ttl_s=30, max_attempts=1)
    token_f = job_store.claim(finished.id, "a", ttl_s=30, max_attempts=1)
    assert token_c is not None and token_f is not None
    assert job_store.cancel(cancelled.id)
    assert not job_store.succeed(cancelled.id, token_c, "c" * 64)
    assert job_store.succeed(finished.id, token_f, "f" * 64)
    assert not job_store.cancel(finished.id)
    assert not job_store.fail(finished.id, "internal_error", "reconciler")  # no token: active jobs only
    statuses = [job_store.get(j.id).status for j in (cancelled, finished)]  # type: ignore[union-attr]
    assert statuses == [JobStatus.cancelled, JobStatus.succeeded]


def test_the_reconciler_queries(job_store: JobStore) -> None:
    old, new, done = (job_store.create(_job(created_at=t)) for t in (100.0, 200.0, 50.0))
    token = job_store.claim(done.id, "a", ttl_s=30, max_attempts=1)
    assert token is not None and job_store.fail(done.id, "model_rejected", "bad", token=token)
    assert job_store.active_ids() == [old.id, new.id]
    assert [j.id for j in job_store.active()] == [old.id, new.id]
    assert job_store.counts() == {"queued": 2, "running": 0}
    assert job_store.mark_resent(old.id)
    assert not job_store.mark_resent(done.id)
    resent = job_store.get(old.id)
    assert resent is not None and resent.resends == 1 and (resent.sent_at or 0) > 100.0
    assert set(job_store.expired_ids(before=150.0)) == {old.id}  # done finished now, so it is not expired
    assert job_store.delete(old.id) and not job_store.delete(old.id)


def test_counts_and_bytes_follow_the_quota_key(job_store: JobStore) -> None:
    job_store.create(_job(owner="key-1", quota_key="address:10.0.0.1", input_bytes=100))
    job_store.create(_job(owner="key-2", quota_key="address:10.0.0.1", input_bytes=50))
    job_store.create(_job(owner="bob", input_bytes=7))
    assert job_store.counts("address:10.0.0.1") == {"queued": 2, "running": 0}
    assert job_store.counts("bob") == {"queued": 1, "running": 0}
    assert job_store.stored_bytes("address:10.0.0.1") == 150
    assert job_store.stored_bytes() == 157


@pytest.mark.parametrize(
    ("admission", "new", "reason"),
    [
        (Admission(max_active=2), _job(owner="carol"), "queue_full"),
        (Admission(max_active=10, max_active_per_owner=2), _job(owner="key-3", quota_key="address:10.0.0.1"), "quota_exceeded"),
        (Admission(max_bytes_per_owner=160), _job(owner="x", quota_key="address:10.0.0.1", input_bytes=11), "owner_bytes"),
        (Admission(max_bytes_total=200), _job(owner="carol", input_bytes=51), "total_bytes"),
    ],
)  # fmt: skip
def test_admission_refuses_past_each_limit(
    job_store: JobStore, admission: Admission, new: JobRecord, reason: str
) -> None:
    job_store.create(_job(owner="key-1", quota_key="address:10.0.0.1", input_bytes=100))
    job_store.create(_job(owner="key-2", quota_key="address:10.0.0.1", input_bytes=50))
    with pytest.raises(AdmissionRefused) as refused:
        job_store.create(new, admission)
    assert refused.value.reason == reason
    assert job_store.get(new.id) is None
    job_store.create(_job(owner="dave", input_bytes=1), Admission(max_active=3, max_bytes_total=200))


def test_cancelled_and_released_uploads_stop_counting(job_store: JobStore) -> None:
    cancelled, failed = job_store.create(_job(input_bytes=100)), job_store.create(_job(input_bytes=30))
    token = job_store.claim(failed.id, "a", ttl_s=30, max_attempts=1)
    assert token is not None and job_store.fail(failed.id, "model_rejected", "bad", token=token)
    assert job_store.cancel(cancelled.id)
    assert job_store.stored_bytes("alice") == 30
    assert job_store.with_stale_inputs(before=time.time() + 1) == [failed.id]
    assert job_store.release_inputs(failed.id)
    assert job_store.stored_bytes() == 0 and job_store.with_stale_inputs(before=time.time() + 1) == []


def test_admission_holds_under_concurrent_creates(job_store: JobStore, make_job_store) -> None:
    """Twenty creators on separate connections at once, limit 5: exactly 5 get in."""
    stores = [make_job_store() for _ in range(4)]
    start = threading.Barrier(20)
    outcomes: list[str] = []

    def create(i: int) -> None:
        start.wait()
        try:
            stores[i % 4].create(_job(owner=f"owner-{i}"), Admission(max_active=5))
            outcomes.append("created")
        except AdmissionRefused as refused:
            outcomes.append(refused.reason)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("created") == 5 and outcomes.count("queue_full") == 15
    assert job_store.counts() == {"queued": 5, "running": 0}


def test_an_unreachable_database_is_store_unavailable(tmp_path) -> None:
    from onnxprune.jobs.pg_store import PostgresJobStore
    from onnxprune.jobs.store import SqliteJobStore

    with pytest.raises(StoreUnavailable):
        PostgresJobStore("postgresql://postgres@127.0.0.1:9/test", connect_timeout_s=1)
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(StoreUnavailable):
        SqliteJobStore(tmp_path / "a-directory")


def test_a_restored_record_keeps_every_field_and_is_not_restored_twice(job_store: JobStore) -> None:
    job = _job(
        status=JobStatus.succeeded,
        stage="done",
        progress=1.0,
        attempts=2,
        output_sha256="e" * 64,
        started_at=5.0,
        finished_at=6.0,
        sent_at=4.5,
        resends=1,
        result_key="attempts/copied",
        input_bytes=10,
        result_bytes=20,
        idempotency_key="k",
    )
    assert job_store.restore(job)
    assert job_store.get(job.id) == job
    assert not job_store.restore(job)
    assert not job_store.restore(_job(idempotency_key="k"))  # the owner's key is taken
    assert [j.id for j in job_store.all_records()] == [job.id]
