"""The Celery app: Redis broker, one job per worker process at a time, messages acked after the job.

Start a worker with ``onnxprune worker`` or ``celery -A workers.celery_app worker``. The task only
carries a job id; the job's config and files are in the job store (see ``service.store``).
"""

from __future__ import annotations

from celery import Celery

from service.settings import Settings

TASK_NAME = "onnxprune.run_job"


def make_celery(settings: Settings) -> Celery:
    app = Celery("onnxprune", broker=settings.redis_url or "redis://127.0.0.1:6379/0")
    restore_every = max(1, min(10, settings.visibility_timeout_s // 10))
    app.conf.update(
        include=["workers.tasks"],
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
        worker_pool="solo",  # the pipeline starts its own child processes; see workers.tasks
        task_soft_time_limit=settings.soft_time_limit_s,
        task_time_limit=settings.time_limit_s,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "global_keyprefix": settings.redis_prefix,
            "unacked_restore_interval": restore_every,
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


settings = Settings()
celery_app = app = make_celery(settings)
