"""onnxprune.jobs.run.run_job sorts failures: a rejected model fails once, anything else is retried (bounded).

The job's sandboxed pipeline is replaced here by functions that raise, to pin the runner's error policy; every
other service test runs the real pipeline.
"""

from __future__ import annotations

import time

import pytest

import onnxprune.jobs.run as jobs
from onnxprune.graphops.errors import ModelRejected
from onnxprune.jobs.settings import Settings
from onnxprune.jobs.store import JobRecord, JobStatus, JobStore
from onnxprune.service.runners import EmbeddedRunner
from onnxprune.workers.options import PruneOptions


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(redis_url=None, data_dir=tmp_path, max_retries=2, retry_delay_s=0)


@pytest.fixture
def store(settings) -> JobStore:
    store = JobStore(settings.database_path)
    store.create(
        JobRecord(
            id="job1",
            owner="",
            fingerprint="f",
            status=JobStatus.queued,
            config=PruneOptions().model_dump_json(),
            created_at=time.time(),
        )
    )
    (settings.jobs_dir / "job1").mkdir(parents=True)
    (settings.jobs_dir / "job1" / "input.onnx").write_bytes(b"the pipeline is replaced in these tests")
    return store


def _pipeline_raising(error: Exception, calls: list):
    def run_job_process(*args, **kwargs):
        calls.append(1)
        raise error

    return run_job_process


def test_a_rejected_model_fails_the_job_once_without_retry(monkeypatch, settings, store):
    calls: list = []
    monkeypatch.setattr(jobs, "run_job_process", _pipeline_raising(ModelRejected("node 'x' is odd"), calls))

    runner = EmbeddedRunner(settings, store)
    runner._run("job1")

    job = store.get("job1")
    assert (job.status, job.error_code, job.error_message, job.attempts) == (
        JobStatus.failed,
        "model_rejected",
        "node 'x' is odd",
        1,
    )
    assert len(calls) == 1


def test_an_infrastructure_error_is_retried_then_fails_as_internal(monkeypatch, settings, store):
    calls: list = []
    monkeypatch.setattr(jobs, "run_job_process", _pipeline_raising(OSError("disk full"), calls))

    EmbeddedRunner(settings, store)._run("job1")

    job = store.get("job1")
    assert job.status is JobStatus.failed and job.error_code == "internal_error"
    assert job.error_message == "failed after 3 attempts (OSError: disk full)"
    assert len(calls) == job.attempts == 3


def test_a_finished_or_cancelled_job_is_not_run_again(monkeypatch, settings, store):
    calls: list = []
    monkeypatch.setattr(jobs, "run_job_process", _pipeline_raising(RuntimeError("must not run"), calls))
    store.cancel("job1")

    assert jobs.run_job("job1", store, settings) is jobs.Outcome.skipped
    assert calls == []


def test_store_transitions_are_conditional(store):
    token = store.claim("job1", "w1", 60, max_attempts=3)
    assert token and store.claim("job1", "w2", 60, max_attempts=3) is None  # a live lease: a duplicate waits
    assert store.cancel("job1")
    assert not store.progress("job1", token, "apply", 0.5)
    assert not store.succeed("job1", token, "sha")
    assert store.claim("job1", "w2", 60, max_attempts=3) is None
    assert store.get("job1").status is JobStatus.cancelled


def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced_off(store):
    first = store.claim("job1", "w1", -1, max_attempts=3)  # expires at once: a worker that stalled
    second = store.claim("job1", "w2", 60, max_attempts=3)

    assert first and second and first != second
    assert not store.progress("job1", first, "apply", 0.5)
    assert not store.renew("job1", first, 60)
    assert not store.succeed("job1", first, "stale")
    assert not store.fail("job1", "internal_error", "stale", token=first)
    assert store.progress("job1", second, "apply", 0.5)
    assert store.succeed("job1", second, "sha")
    job = store.get("job1")
    assert (job.status, job.output_sha256, job.attempts) == (JobStatus.succeeded, "sha", 2)
    assert store.claim("job1", "w3", 60, max_attempts=3) is None  # finished: a late delivery does nothing


def test_attempts_are_bounded_across_redeliveries(store):
    for _ in range(3):
        assert store.claim("job1", "w", -1, max_attempts=3)
    assert store.claim("job1", "w", 60, max_attempts=3) is None


def _pipeline_reporting(events: int, writes: list):
    """A pipeline that reports ``events`` progress events at once (three stages), then finds the model bad."""

    def run_job_process(*args, progress, **kwargs):
        for index in range(events):
            progress(["analyse", "select", "finetune"][index * 3 // events], index / events)
        raise ModelRejected("the model is bad")

    return run_job_process


@pytest.mark.parametrize(("interval_s", "expected"), [(60.0, 1), (0.0, 30)])
def test_progress_is_written_at_most_once_per_interval(monkeypatch, settings, store, interval_s, expected):
    """Each write is a database round trip (over the network with PostgreSQL): a burst of progress
    events within the interval writes the first only."""
    writes: list = []
    real = store.progress
    monkeypatch.setattr(store, "progress", lambda *args: writes.append(args[2]) or real(*args))
    monkeypatch.setattr(jobs, "PROGRESS_WRITE_INTERVAL_S", interval_s)
    monkeypatch.setattr(jobs, "run_job_process", _pipeline_reporting(30, writes))

    assert jobs.run_job("job1", store, settings) is jobs.Outcome.failed
    assert len(writes) == expected and writes[0] == "analyse"
