"""Whether a Celery worker still takes jobs, and a nudge for one that stopped after a broker stall.

A Redis stall of 20 s could leave a worker that answers pings, keeps its heartbeat file fresh and never
consumes again (``Couldn't ack ... TimeoutError``, then nothing: celery/celery#2415, #8030). A thread's
heartbeat says the process lives, not that it works. The watch asks the broker instead: jobs waiting
in this worker's queue while the worker sits idle past ``stall_after_s`` mean its consumer is stuck.
It then makes the consumer reconnect (as Celery does on a lost connection), and stops reporting the
worker alive if that did not help, so that the container's healthcheck restarts it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
GIVE_UP_AFTER = 3  # in units of ``stall_after_s``: past it the worker no longer reports itself alive


class ConsumptionWatch:
    """Idle while jobs wait for ``stall_after_s``: stalled. ``check`` is called from a heartbeat thread;
    ``task_started``/``task_finished`` from the worker's task signals."""

    def __init__(
        self,
        waiting_jobs: Callable[[], int],
        reconnect: Callable[[], None],
        *,
        stall_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._waiting_jobs, self._reconnect, self._clock = waiting_jobs, reconnect, clock
        self.stall_after_s = stall_after_s
        self._lock = threading.Lock()
        self._busy = False
        self._waiting_since: float | None = None  # since when jobs wait while this worker is idle
        self._nudged_at: float | None = None
        self.nudges = 0

    def task_started(self) -> None:
        with self._lock:
            self._busy, self._waiting_since, self._nudged_at = True, None, None

    def task_finished(self) -> None:
        with self._lock:
            self._busy = False

    def check(self) -> bool:
        """Whether the worker counts as alive now; nudges a stuck consumer to reconnect."""
        with self._lock:
            busy = self._busy
        if busy:
            return True
        try:
            waiting = self._waiting_jobs()
        except Exception as exc:  # the broker is down or stalled: not this worker's fault, nothing to nudge
            log.info("consumption check: cannot ask the broker: %s", exc)
            return True
        now = self._clock()
        with self._lock:
            if self._busy or waiting == 0:
                self._waiting_since = self._nudged_at = None
                return True
            if self._waiting_since is None:
                self._waiting_since = now
            waited = now - self._waiting_since
            if waited < self.stall_after_s:
                return True
            alive = waited < GIVE_UP_AFTER * self.stall_after_s  # nudges did not help: let the healthcheck act
            if self._nudged_at is not None and now - self._nudged_at < self.stall_after_s:
                return alive  # give the reconnect time to take the next job
            self._nudged_at = now
            self.nudges += 1
        log.error(
            "%d jobs have waited %.0f s while this worker is idle: its broker connection is stuck; reconnecting",
            waiting,
            waited,
        )
        self._reconnect()
        return alive


# The worker's event loop (kombu's hub). kombu clears its global on every reconnect (``Hub.reset`` ->
# ``_close`` -> ``set_event_loop(None)``) while the consumer goes on with the same hub, so a second stall
# found "no event loop" and the worker stayed idle with jobs waiting: the hub is kept here instead.
_worker_hub: Any = None


def remember_event_loop() -> None:
    """Keep the running worker's hub for later nudges (called when the worker is ready)."""
    from kombu.asynchronous import get_event_loop

    global _worker_hub
    _worker_hub = get_event_loop() or _worker_hub


def reconnect_consumer() -> None:
    """Make the running worker's consumer drop its broker connection and connect again.

    The callback runs on the worker's event loop (kombu's hub), where a connection error propagates to
    Celery's consumer, which restarts its connection, channels and consumers (``asynloop`` sets
    ``hub.propagate_errors`` to the transport's connection errors; ``OSError`` is one of them).
    """
    remember_event_loop()
    hub = _worker_hub
    if hub is None:  # no event loop (a worker started without one): nothing to nudge
        log.warning("no event loop to reconnect the consumer on")
        return

    def drop_connection() -> None:
        raise ConnectionResetError("onnxprune: jobs wait while the consumer is idle; reconnecting to the broker")

    hub.call_soon(drop_connection)


def redis_queue_length(redis_url: str, key: str) -> Callable[[], int]:
    """How many messages wait in the Redis list ``key`` (kombu's queue), asked with short timeouts."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=10)

    def length() -> int:
        return int(client.llen(key))

    return length
