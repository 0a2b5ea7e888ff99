"""What the Celery workers of a queue can run, published in Redis for the API to read at upload.

In Celery mode the API process is not where jobs run (its image has no torch), so its own
capabilities say nothing. Each worker publishes its own when it starts (``jobs.celery_app``); the
workers of one queue are built from one image, so one key per queue suffices: the last started wins.
Before any worker has published, the API accepts (and a job that cannot run fails with the reason).
"""

from __future__ import annotations

import json

from onnxprune.jobs.settings import Settings
from onnxprune.workers.capabilities import local_capabilities


def _key(settings: Settings) -> str:
    return f"{settings.redis_prefix}capabilities:{settings.queue}"


def publish_capabilities(settings: Settings) -> None:
    """This process's capabilities (``workers.capabilities``), as the workers' of ``settings.queue``."""
    import redis

    if not settings.redis_url:
        return  # embedded mode: the API checks its own process
    with redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2) as connection:
        connection.set(_key(settings), json.dumps(sorted(local_capabilities())))


READ_TIMEOUT_S = 0.5


def read_published_capabilities(settings: Settings) -> frozenset[str] | None:
    """What the workers of ``settings.queue`` published; None when none has yet (or Redis is away)."""
    import redis

    if not settings.redis_url:
        return None
    try:  # a short wait: a broker that is away is the submit's broker probe to report, not this read's
        with redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=READ_TIMEOUT_S, socket_timeout=READ_TIMEOUT_S
        ) as connection:
            value = connection.get(_key(settings))
    except redis.RedisError:
        return None
    return None if value is None else frozenset(json.loads(value))
