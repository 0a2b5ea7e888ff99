"""The Celery task: as thin as a web view, it passes a job id to the shared runner.

Workers use the solo pool: the pipeline starts its own (daemonic) onnxruntime child processes, which
a prefork pool child may not have. The solo pool does not enforce Celery's time limits, so the task
does: SIGALRM raises ``SoftTimeLimitExceeded`` at the soft limit, and a watchdog ends the process at
the hard limit (the unacked job is then redelivered, and ``run_job`` stops it after too many tries).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from service.store import JobStore
from workers.celery_app import TASK_NAME, celery_app, settings
from workers.jobs import run_job

log = logging.getLogger(__name__)
store = JobStore(settings.database_path)


@celery_app.task(name=TASK_NAME, bind=True, max_retries=settings.max_retries)
def run_job_task(self: Task, job_id: str) -> str:
    try:
        with _time_limits(settings.soft_time_limit_s, settings.time_limit_s):
            return run_job(job_id, store, settings.jobs_dir, max_attempts=settings.max_retries + 1).value
    except SoftTimeLimitExceeded:
        store.fail(job_id, "timeout", f"the job ran past {settings.soft_time_limit_s} s and was stopped")
        return "failed"
    except Exception as exc:  # infrastructure error: the runner already failed user errors
        log.exception("job %s: attempt %d failed", job_id, self.request.retries + 1)
        message = f"{type(exc).__name__}: {exc}"
        if self.request.retries >= self.max_retries:
            store.fail(job_id, "internal_error", f"failed after {self.request.retries + 1} attempts ({message})")
            return "failed"
        store.requeue(job_id, message)
        raise self.retry(exc=exc, countdown=settings.retry_delay_s) from exc


@contextmanager
def _time_limits(soft_s: int, hard_s: int) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # a prefork or thread pool enforces Celery's own limits
        return

    def soft(_signum: int, _frame: object) -> None:
        raise SoftTimeLimitExceeded(f"soft time limit of {soft_s} s")

    def hard() -> None:
        log.error("hard time limit of %d s exceeded; exiting so the job is redelivered", hard_s)
        os._exit(1)

    previous = signal.signal(signal.SIGALRM, soft)
    signal.setitimer(signal.ITIMER_REAL, soft_s)
    watchdog = threading.Timer(hard_s, hard)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
