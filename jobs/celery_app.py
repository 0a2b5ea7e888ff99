"""The Celery app as a factory: Redis broker, one job per worker process at a time, acked after the job.

Start a worker with ``onnxprune worker`` or ``celery -A onnxprune.jobs.celery_app worker --pool=solo``. Importing
this module builds nothing: ``celery -A`` reads the module's ``app`` attribute, which is made from the
``ONNXPRUNE_*`` environment on first access (module ``__getattr__``). The task carries only a job id;
the job's config and files are in the job store.

Workers use the solo pool: each job runs in a sandboxed child process of its own
(``workers.job_process``), which the worker waits on in Python. The solo pool does not enforce
Celery's time limits, so the task does: SIGALRM raises ``JobTimeout`` at the soft limit, which kills
the job's sandbox (the job fails once as ``timeout``, the worker lives on), and a watchdog ends the
process at the hard limit should anything still hang.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from celery import Celery, Task
from celery.signals import after_setup_logger, task_postrun, task_prerun, worker_ready

from onnxprune.jobs.consumption import ConsumptionWatch, reconnect_consumer, redis_queue_length, remember_event_loop
from onnxprune.jobs.policy import JobTimeout
from onnxprune.jobs.settings import Settings, load_settings

TASK_NAME = "onnxprune.run_job"

log = logging.getLogger(__name__)


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings`` with the job task registered (the store opens on the first job)."""
    app = Celery("onnxprune", broker=settings.redis_url or "redis://127.0.0.1:6379/0", set_as_current=False)
    restore_every = max(1, min(10, settings.visibility_timeout_s // 10))
    app.conf.update(
        task_default_queue=settings.queue,
        task_routes={TASK_NAME: {"queue": settings.queue}},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in the job store, not in a result backend
        # A job is acked only when it has finished, and a worker holds one job at a time, so a
        # killed worker loses nothing: the unacked message comes back after the visibility timeout.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # The pipeline starts its own child process per job: one job, the solo pool; several (as many as
        # the CPUs hold, ``Settings.jobs_at_once``), threads that each wait on their job's child.
        worker_pool=worker_pool(settings),
        worker_concurrency=settings.jobs_at_once(),
        task_soft_time_limit=settings.soft_time_limit_s,
        task_time_limit=settings.time_limit_s,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "global_keyprefix": settings.redis_prefix,
            "unacked_restore_interval": restore_every,
            "unacked_restore_throttle": 1,
            # A stalled or refusing Redis must fail fast: the API answers 503 rather than hang.
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
            # A connection that a stall left half-dead is found (TCP keepalive, a PING before reusing
            # one idle this long) and replaced, rather than read from forever.
            "socket_keepalive": True,
            "health_check_interval": 10,
            "retry_on_timeout": True,
        },
        # The worker reconnects for as long as the broker stays away (Celery's default gives up after
        # 100 tries and the worker exits); jobs it held come back through the visibility timeout.
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    _register_task(app, settings)
    after_setup_logger.connect(_rate_limit_worker_logs, weak=False, dispatch_uid="onnxprune-rate-limit")

    watch = ConsumptionWatch(
        redis_queue_length(app.conf.broker_url, f"{settings.redis_prefix}{settings.queue}"),
        reconnect_consumer,
        stall_after_s=settings.consumer_stall_s,
    )
    task_prerun.connect(lambda **_: watch.task_started(), weak=False, dispatch_uid="onnxprune-busy")
    task_postrun.connect(lambda **_: watch.task_finished(), weak=False, dispatch_uid="onnxprune-idle")

    def on_ready(**_: object) -> None:
        _worker_ready(settings, watch)

    worker_ready.connect(on_ready, weak=False, dispatch_uid="onnxprune-worker-ready")
    return app


def worker_pool(settings: Settings) -> str:
    return "solo" if settings.jobs_at_once() == 1 else "threads"


def _worker_ready(settings: Settings, watch: ConsumptionWatch) -> None:
    """Start the liveness heartbeat the container healthcheck reads (``workers.heartbeat``: a busy solo
    worker cannot answer pings), beating while the worker takes jobs (``jobs.consumption``), and tell the
    API what this worker can run, so it refuses at upload what none can (``jobs.capabilities``)."""
    from onnxprune.jobs.capabilities import publish_capabilities
    from onnxprune.workers.heartbeat import INTERVAL_S, start_heartbeat

    remember_event_loop()  # kombu forgets it on the first reconnect; the nudges need it for every stall
    start_heartbeat(interval_s=min(INTERVAL_S, settings.consumer_stall_s / 3), alive=watch.check)
    try:
        publish_capabilities(settings)
    except Exception:  # noqa: BLE001 - the worker still runs jobs; the API then accepts and the job says why
        log.exception("could not publish this worker's capabilities")


def _rate_limit_worker_logs(**_: object) -> None:
    from onnxprune.jobs.logs import install_rate_limit

    install_rate_limit()


def _register_task(app: Celery, settings: Settings) -> None:
    from onnxprune.jobs.artifacts import ArtifactStore, open_artifact_store
    from onnxprune.jobs.job_store import JobStore, open_job_store

    stores: list[tuple[JobStore, ArtifactStore]] = []

    def store() -> tuple[JobStore, ArtifactStore]:
        if not stores:
            stores.append((open_job_store(settings), open_artifact_store(settings)))
        return stores[0]

    # celery ships no type hints, so its decorators are untyped
    @app.task(name=TASK_NAME, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    def run_job_task(self: Task, job_id: str) -> str:
        from onnxprune.jobs.run import Outcome, run_job  # the pipeline loads only in workers

        job_store, artifacts = store()
        with _time_limits(settings.soft_time_limit_s, settings.time_limit_s):
            outcome = run_job(job_id, job_store, settings, artifacts)
        if outcome is Outcome.retry:
            raise self.retry(countdown=settings.retry_delay_s)
        return str(outcome.value)


@contextmanager
def _time_limits(soft_s: int, hard_s: int) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # a prefork or thread pool enforces Celery's own limits
        return

    def soft(_signum: int, _frame: object) -> None:
        raise JobTimeout(f"the job ran past its time limit of {soft_s} s and was stopped")

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


@lru_cache(maxsize=1)
def app_from_environment() -> Celery:
    """The worker's app, from ``ONNXPRUNE_*`` env; built once, on first use."""
    return make_celery(load_settings())


def __getattr__(name: str) -> Celery:
    # ``celery -A onnxprune.jobs.celery_app`` looks up ``app``; building it lazily keeps imports side-effect free.
    if name in ("app", "celery_app"):
        return app_from_environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
