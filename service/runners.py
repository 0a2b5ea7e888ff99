"""Who runs a job once the API has accepted it: an in-process pool (embedded) or Celery workers."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from onnxprune.jobs.job_store import JobStore
from onnxprune.jobs.settings import Settings

log = logging.getLogger(__name__)


class Runner(Protocol):
    def start(self) -> None: ...
    def warm_up(self) -> None:
        """Prepare the path to the broker (connections, pools) so the first submit is as quick as the rest."""

    def probe(self, timeout_s: float) -> None:
        """Raise unless the broker answers within ``timeout_s`` (a round trip on a new connection)."""

    def submit(self, job_id: str) -> None:
        """Hand the job over (may block on the broker: the API calls it off the event loop)."""

    def ready(self) -> str | None:
        """None when jobs can be handed over, else why not (one line). Busy workers are not a problem."""

    def pending_ids(self) -> set[str] | None:
        """Ids of jobs handed over and not yet taken up or finished, or None when that is unknown."""

    def capabilities(self) -> frozenset[str] | None:
        """Optional parts the job runners have (``workers.capabilities``); None when unknown."""

    def close(self) -> None: ...


class EmbeddedRunner:
    """Threads in the API process; the pipeline itself runs onnxruntime in child processes.

    Jobs left queued by a previous process (an API restart) are picked up again at start; running ones
    once their lease expires (the reconciler). One API process per data dir in this mode.
    """

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self._settings = settings
        self._store = store
        self._pool: ThreadPoolExecutor | None = None
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self._settings.embedded_workers, thread_name_prefix="onnxprune-job")
        for job_id in self._store.active_ids():
            self.submit(job_id)

    def submit(self, job_id: str) -> None:
        if self._pool is None:
            raise RuntimeError("the embedded runner is not started")
        with self._lock:
            self._pending.add(job_id)
        self._pool.submit(self._run, job_id)

    def _run(self, job_id: str) -> None:
        from onnxprune.jobs.run import Outcome, run_job

        try:
            while run_job(job_id, self._store, self._settings) is Outcome.retry:
                time.sleep(self._settings.retry_delay_s)
        finally:
            with self._lock:
                self._pending.discard(job_id)

    def warm_up(self) -> None:
        pass

    def probe(self, timeout_s: float) -> None:
        pass

    def ready(self) -> str | None:
        return None if self._pool is not None else "the embedded runner is not started"

    def pending_ids(self) -> set[str] | None:
        with self._lock:
            return set(self._pending)

    def capabilities(self) -> frozenset[str] | None:
        from onnxprune.workers.capabilities import local_capabilities

        return local_capabilities()  # jobs run in this process

    def close(self) -> None:
        if self._pool is not None:
            # Running jobs are not waited for: they stay 'running' and restart with the next process.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class CeleryRunner:
    """Sends the job id to the Celery queue; a cancelled job is skipped when a worker reaches it."""

    def __init__(self, settings: Settings) -> None:
        from onnxprune.jobs.celery_app import make_celery

        self._settings = settings
        self._app = make_celery(settings)
        self._warmed = threading.Event()

    def start(self) -> None:
        pass

    def warm_up(self) -> None:
        """Finalize the app and open a producer connection: the first send_task otherwise spends
        most of a second on this, over the publish timeout on a loaded machine."""
        try:
            self._app.finalize(auto=True)
            with self._app.producer_or_acquire() as producer:
                producer.connection.ensure_connection(max_retries=1, timeout=2)
        except Exception as exc:  # the broker may be down at start; submits will say so
            log.warning("broker not reachable at start: %s", exc)
        finally:
            self._warmed.set()

    def probe(self, timeout_s: float) -> None:
        import redis

        with redis.Redis.from_url(
            self._settings.redis_url or "", socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        ) as client:
            client.ping()

    def submit(self, job_id: str) -> None:
        from onnxprune.jobs.celery_app import TASK_NAME

        self._app.send_task(TASK_NAME, args=[job_id], task_id=job_id)

    def ready(self) -> str | None:
        if not self._warmed.is_set():
            return "starting: preparing the broker connection"
        try:
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=1)
        except Exception as exc:  # any broker trouble means "not ready", with its reason
            return f"broker unreachable: {type(exc).__name__}: {exc}"
        return None

    def pending_ids(self) -> set[str] | None:
        """Job ids in the queue or delivered and unacked, read from Redis (kombu's layout: a list per
        queue, priority lists beside it, and one ``unacked`` hash)."""
        import redis

        prefix, queue = self._settings.redis_prefix, self._settings.queue
        try:
            with redis.Redis.from_url(
                self._settings.redis_url or "", socket_timeout=2, socket_connect_timeout=2
            ) as client:
                raw = []
                for key in [queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9))]:
                    raw.extend(client.lrange(f"{prefix}{key}", 0, 9999))
                unacked = [json.loads(v)[0] for v in client.hvals(f"{prefix}unacked")]
        except Exception as exc:
            log.warning("cannot read the broker's queue: %s", exc)
            return None
        ids = {json.loads(message).get("headers", {}).get("id") for message in raw}
        ids |= {message.get("headers", {}).get("id") for message in unacked}
        return {i for i in ids if i}

    def capabilities(self) -> frozenset[str] | None:
        """What the workers of our queue said they have when they started (None before any has)."""
        from onnxprune.jobs.capabilities import read_published_capabilities

        return read_published_capabilities(self._settings)

    def close(self) -> None:
        self._app.close()


def make_runner(settings: Settings, store: JobStore) -> Runner:
    return EmbeddedRunner(settings, store) if settings.embedded else CeleryRunner(settings)
