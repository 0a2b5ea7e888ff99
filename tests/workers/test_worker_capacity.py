"""A worker runs as many jobs at once as its CPUs hold, and each job's threads are its share."""

from __future__ import annotations

import pytest

from onnxprune.jobs.celery_app import make_celery
from onnxprune.jobs.run import job_limits
from onnxprune.jobs.settings import DEFAULT_JOB_THREADS, Settings
from onnxprune.workers.job_threads import usable_cpus

BROKER = "redis://127.0.0.1:6379/15"  # never connected to: the app is only configured


def test_a_celery_worker_runs_as_many_jobs_as_its_cpus_hold_at_two_threads_each():
    settings = Settings(redis_url=BROKER)
    expected = max(1, int(usable_cpus() // DEFAULT_JOB_THREADS))

    app = make_celery(settings)
    limits = job_limits(settings)

    assert settings.jobs_at_once() == expected
    assert app.conf.worker_concurrency == expected
    assert app.conf.worker_pool == ("solo" if expected == 1 else "threads")
    assert limits.jobs_at_once == expected and limits.threads is None
    assert limits.thread_budget().threads == max(1, int(usable_cpus() // expected))


@pytest.mark.parametrize(
    ("fields", "jobs"),
    [
        ({"worker_concurrency": 3}, 3),  # the operator's number wins
        ({"job_threads": 1}, max(1, int(usable_cpus()))),  # one thread a job: a job per CPU
        ({"job_threads": 64}, 1),  # more threads than CPUs: still one job
    ],
)
def test_the_operators_settings_size_a_workers_concurrency(fields, jobs):
    settings = Settings(redis_url=BROKER, **fields)

    assert settings.jobs_at_once() == jobs
    assert make_celery(settings).conf.worker_pool == ("solo" if jobs == 1 else "threads")


def test_embedded_mode_shares_the_cpu_among_its_embedded_workers():
    settings = Settings(embedded_workers=2, job_threads=0)

    limits = job_limits(settings)

    assert settings.jobs_at_once() == 2 == limits.jobs_at_once
    assert limits.thread_budget().threads == max(1, int(usable_cpus() // 2))


def test_job_threads_reaches_every_job_of_the_service():
    assert job_limits(Settings(job_threads=3)).thread_budget().threads == 3
