"""An attempt rides out a database that is briefly away (a restart): the writes that must land are
tried again, and a ``succeed`` whose commit landed but whose answer was lost is recognised as its own
(its published objects must not then be discarded as a late duplicate's)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from onnxprune.jobs.artifacts import Published
from onnxprune.jobs.job_store import JobRecord, JobStatus, StoreUnavailable
from onnxprune.jobs.run import _patiently, _record_success
from onnxprune.jobs.store import SqliteJobStore


class CommitsThenLosesTheAnswer(SqliteJobStore):
    """``succeed`` commits, then raises as if the connection dropped before the answer came back."""

    def succeed(self, *args, **kwargs) -> bool:  # type: ignore[no-untyped-def]
        if super().succeed(*args, **kwargs):
            raise StoreUnavailable("connection lost after the commit")
        return False


def _running(store: SqliteJobStore) -> str:
    store.create(JobRecord("job1", "owner", "f", JobStatus.queued, "{}", time.time()))
    token = store.claim("job1", "host", ttl_s=60, max_attempts=3)
    assert token is not None
    return token


def test_a_lost_answer_to_a_committed_succeed_counts_as_success(tmp_path: Path) -> None:
    store = CommitsThenLosesTheAnswer(tmp_path / "jobs.sqlite3")
    token = _running(store)
    ours = Published(f"attempts/{token}", "a" * 64, 10)
    assert _record_success(store, "job1", token, ours, patience_s=2)
    job = store.get("job1")
    assert job is not None and job.status is JobStatus.succeeded and job.result_key == ours.result_key


def test_another_attempts_success_is_not_taken_for_ours(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    token = _running(store)
    assert store.succeed("job1", token, "b" * 64, result_key=f"attempts/{token}")
    late = Published("attempts/late", "c" * 64, 10)
    assert not _record_success(store, "job1", "late", late, patience_s=0)


def test_calls_are_retried_while_the_store_is_away_then_give_up(tmp_path: Path) -> None:
    outcomes = iter([StoreUnavailable("restarting"), StoreUnavailable("restarting"), True])

    def flaky() -> bool:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert _patiently(flaky, patience_s=5) is True

    def down() -> bool:
        raise StoreUnavailable("down")

    with pytest.raises(StoreUnavailable):
        _patiently(down, patience_s=0.6)
