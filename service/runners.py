"""Who runs a job once the API has accepted it: an in-process pool (embedded) or Celery workers."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from service.settings import Settings
from service.store import JobStore

log = logging.getLogger(__name__)


class Runner(Protocol):
    def start(self) -> None: ...
    def submit(self, job_id: str) -> None: ...
    def ready(self) -> str | None:
        """None when jobs can run, else why not (one line)."""
    def capabilities(self) -> frozenset[str] | None:
        """Optional parts the job runners have (``workers.capabilities``); None when unknown."""
    def close(self) -> None: ...


class EmbeddedRunner:
    """Threads in the API process; the pipeline itself runs onnxruntime in child processes.

    Jobs left queued or running by a previous process (an API restart) are picked up again at start.
    One API process per data dir in this mode: two would both pick them up.
    """

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self._settings = settings
        self._store = store
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self._settings.embedded_workers, thread_name_prefix="onnxprune-job")
        for job_id in self._store.active_ids():
            self.submit(job_id)

    def submit(self, job_id: str) -> None:
        if self._pool is None:
            raise RuntimeError("the embedded runner is not started")
        self._pool.submit(self._run, job_id)

    def _run(self, job_id: str) -> None:
        from workers.jobs import run_job  # the pipeline is imported only where jobs run

        for attempt in range(self._settings.max_retries + 1):
            try:
                run_job(job_id, self._store, self._settings.jobs_dir,
                        max_attempts=self._settings.max_retries + 1)
                return
            except Exception as exc:  # infrastructure error: retry a bounded number of times
                log.exception("job %s: attempt %d failed", job_id, attempt + 1)
                message = f"{type(exc).__name__}: {exc}"
                if attempt == self._settings.max_retries:
                    self._store.fail(job_id, "internal_error", f"failed after {attempt + 1} attempts ({message})")
                    return
                self._store.requeue(job_id, message)
                time.sleep(self._settings.retry_delay_s)

    def ready(self) -> str | None:
        return None if self._pool is not None else "the embedded runner is not started"

    def capabilities(self) -> frozenset[str] | None:
        from workers.capabilities import local_capabilities

        return local_capabilities()  # jobs run in this process

    def close(self) -> None:
        if self._pool is not None:
            # Running jobs are not waited for: they stay 'running' and restart with the next process.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class CeleryRunner:
    """Sends the job id to the Celery queue; a cancelled job is skipped when a worker reaches it."""

    def __init__(self, settings: Settings) -> None:
        from workers.celery_app import make_celery

        self._settings = settings
        self._app = make_celery(settings)

    def start(self) -> None:
        pass

    def submit(self, job_id: str) -> None:
        from workers.celery_app import TASK_NAME

        self._app.send_task(TASK_NAME, args=[job_id], task_id=job_id)

    def ready(self) -> str | None:
        try:
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            replies = self._app.control.ping(timeout=1.0)
        except Exception as exc:  # any broker trouble means "not ready", with its reason
            return f"broker unreachable: {type(exc).__name__}: {exc}"
        if not replies:
            return "no worker answered a ping within 1 s"
        return None

    def capabilities(self) -> frozenset[str] | None:
        """What the workers of our queue said they have when they started (None before any has)."""
        from workers.capabilities import read_published_capabilities

        return read_published_capabilities(self._settings)

    def close(self) -> None:
        self._app.close()


def make_runner(settings: Settings, store: JobStore) -> Runner:
    return EmbeddedRunner(settings, store) if settings.embedded else CeleryRunner(settings)
