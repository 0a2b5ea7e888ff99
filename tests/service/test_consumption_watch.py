"""The worker's consumption watch: idle while jobs wait means a stuck consumer; it is nudged to reconnect,
and reported dead (no heartbeat) when nudging does not help."""

from __future__ import annotations

import threading
import time

import pytest
from kombu.asynchronous import Hub, set_event_loop
from kombu.transport.redis import Transport

from onnxprune.jobs.consumption import GIVE_UP_AFTER, ConsumptionWatch, reconnect_consumer, remember_event_loop
from onnxprune.workers.heartbeat import start_heartbeat


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_watch(waiting: list[int]) -> tuple[ConsumptionWatch, Clock, list[str]]:
    clock, nudges = Clock(), []
    watch = ConsumptionWatch(lambda: waiting[0], lambda: nudges.append("nudge"), stall_after_s=30, clock=clock)
    return watch, clock, nudges


def test_an_idle_worker_with_jobs_waiting_is_nudged_then_reported_dead():
    watch, clock, nudges = make_watch([3])
    assert watch.check() and nudges == []
    clock.now += 29
    assert watch.check() and nudges == []
    clock.now += 1
    assert watch.check() and nudges == ["nudge"]  # first nudge: still alive, the reconnect gets its chance
    clock.now += 10
    assert watch.check() and nudges == ["nudge"]  # not nudged again at once
    clock.now += 20
    assert watch.check() and nudges == ["nudge"] * 2
    clock.now = 1000.0 + GIVE_UP_AFTER * 30
    assert not watch.check()  # nudging did not help: the healthcheck restarts the worker


def test_a_busy_worker_or_an_empty_queue_is_alive_and_never_nudged():
    waiting = [2]
    watch, clock, nudges = make_watch(waiting)
    watch.task_started()
    clock.now += 1000
    assert watch.check()
    watch.task_finished()
    waiting[0] = 0
    clock.now += 1000
    assert watch.check()
    waiting[0] = 2
    assert watch.check()  # waiting starts now, not when the queue was last seen empty
    clock.now += 29
    assert watch.check() and nudges == []


def test_taking_a_job_resets_the_stall():
    watch, clock, nudges = make_watch([1])
    watch.check()
    clock.now += 200
    assert not watch.check() and nudges == ["nudge"]
    watch.task_started()
    watch.task_finished()
    assert watch.check()
    clock.now += 29
    assert watch.check() and nudges == ["nudge"]


def test_a_broker_that_does_not_answer_is_not_the_workers_fault():
    clock, nudges = Clock(), []

    def down() -> int:
        raise ConnectionError("stalled")

    watch = ConsumptionWatch(down, lambda: nudges.append("nudge"), stall_after_s=30, clock=clock)
    for _ in range(10):
        clock.now += 100
        assert watch.check()
    assert nudges == []


def _assert_nudge_raises_on_the_loop(hub: Hub) -> None:
    """A nudge from another thread (the watch's) comes out of ``hub``'s loop as a connection error."""
    hub.propagate_errors = Transport.connection_errors
    loop = hub.create_loop()
    caller = threading.Thread(target=reconnect_consumer)
    caller.start()
    caller.join()
    with pytest.raises(Transport.connection_errors):
        for _ in range(100):
            next(loop)


def test_the_nudge_raises_a_connection_error_on_the_workers_event_loop():
    """Celery's asynloop propagates the transport's connection errors out of the hub, and its consumer
    then reconnects: the nudge must be one of them, raised on the loop (not in the watch's thread)."""
    hub = Hub()
    set_event_loop(hub)
    try:
        _assert_nudge_raises_on_the_loop(hub)
    finally:
        set_event_loop(None)
        hub.close()


def test_a_second_stall_is_nudged_too_after_kombu_forgot_the_event_loop():
    """Each reconnect resets the hub, which clears kombu's global event loop (``Hub._close``) while the
    consumer goes on with the same hub: the first nudge worked, every later one found no loop."""
    hub = Hub()
    set_event_loop(hub)
    try:
        remember_event_loop()  # what the worker does when it is ready
        hub.reset()  # what Celery's asynloop does after the first reconnect
        _assert_nudge_raises_on_the_loop(hub)
    finally:
        set_event_loop(None)
        hub.close()


def test_the_heartbeat_file_stays_old_while_the_worker_is_not_alive(tmp_path):
    path = tmp_path / "beat"
    start_heartbeat(path, interval_s=0.05, alive=lambda: False)
    first = path.stat().st_mtime_ns
    time.sleep(0.3)
    assert path.stat().st_mtime_ns == first
