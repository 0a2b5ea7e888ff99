"""What one job costs the many-host stores in requests: a progress write or lease renewal is one
statement on PostgreSQL (on sessions that commit without waiting for the WAL flush), and an attempt's
checkout lists the job's inputs once instead of asking for each optional one (issue 28)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from onnxprune.jobs.job_store import JobRecord, JobStatus
from tests.support.cluster_servers import S3Server, empty_jobs_table

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_store(postgres_url):  # type: ignore[no-untyped-def]
    from onnxprune.jobs.pg_store import PostgresJobStore

    store = PostgresJobStore(postgres_url)
    empty_jobs_table(postgres_url)
    yield store
    store.close()


def test_a_progress_write_and_a_renewal_are_one_statement_each_without_waiting_for_the_flush(pg_store):
    import sqlalchemy as sa
    from sqlalchemy import event

    job_id = uuid.uuid4().hex
    pg_store.create(JobRecord(job_id, "me", "f", JobStatus.queued, "{}", time.time()))
    token = pg_store.claim(job_id, "worker", 30, max_attempts=3)
    statements: list[str] = []
    for engine in (pg_store.engine, pg_store.relaxed_engine):
        event.listen(engine, "before_cursor_execute", lambda _c, _cur, sql, *_: statements.append(sql))
    assert pg_store.progress(job_id, token, "select", 0.5) and pg_store.renew(job_id, token, 30)
    assert [sql.split()[0] for sql in statements] == ["UPDATE", "UPDATE"]  # no BEGIN, SET, COMMIT around them
    with pg_store.relaxed_engine.connect() as db:
        assert db.execute(sa.text("SHOW synchronous_commit")).scalar() == "off"
    with pg_store.engine.connect() as db:  # state changes still wait for durability
        assert db.execute(sa.text("SHOW synchronous_commit")).scalar() == "on"
    assert pg_store.get(job_id).stage == "select"


@pytest.fixture
def s3_store(tmp_path: Path, s3_env: dict[str, str], s3_server: S3Server):  # type: ignore[no-untyped-def]
    from onnxprune.jobs.s3_artifacts import S3Artifacts

    store = S3Artifacts.from_url(
        f"s3://{s3_server.create_bucket()}/d", tmp_path / "scratch", endpoint_url=s3_server.url
    )
    calls: Counter[str] = Counter()
    store.client.meta.events.register("before-call.s3", lambda model, **_: calls.update([model.name]))
    return store, calls


@pytest.mark.parametrize("with_data", [False, True])
def test_a_checkout_lists_the_inputs_once_and_fetches_only_those_uploaded(s3_store, with_data):
    store, calls = s3_store
    job_id = uuid.uuid4().hex
    staged = store.staging(job_id)
    staged.upload.write_bytes(b"model")
    if with_data:
        staged.data.write_bytes(b"data")
    store.commit_inputs(job_id)
    calls.clear()
    space = store.checkout(job_id, "t1")
    assert calls == Counter({"ListObjectsV2": 1, "GetObject": 2 if with_data else 1})
    assert space.model.read_bytes() == b"model" and space.plan is None
    assert (space.data.read_bytes() == b"data") if with_data else space.data is None
