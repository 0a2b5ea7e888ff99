"""Run one stored job through ``run_pipeline``: shared by the embedded runner and the Celery task.

Delivery is at-least-once (a broker redelivers unacked messages; the reconciler re-sends lost ones),
so a job may be handed to two workers at once. Fencing makes that harmless:

- an attempt starts only by claiming a lease (token, owner, expiry) in the store; a job that is
  finished, or running under a live lease, is not claimable and the delivery does nothing;
- a heartbeat renews the lease; only the holder's progress, result and failure writes apply, so an
  attempt whose lease expired (a stalled worker) is fenced off and stops at its next stage;
- each attempt works in its own directory and publishes its results under its own key
  (``jobs.artifacts``); the store's conditional ``succeed`` records the one that counts, so a late
  duplicate can never replace it (the pipeline is deterministic: results are byte-identical anyway).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import TypeVar

from onnxprune.graphops.plan import PruningPlan
from onnxprune.jobs.artifacts import ArtifactStore, AttemptSpace, Published, open_artifact_store
from onnxprune.jobs.files import MODEL, PLAN, REPORT, REPORT_HTML
from onnxprune.jobs.job_store import JobRecord, JobStatus, JobStore, StoreUnavailable
from onnxprune.jobs.policy import after_attempt
from onnxprune.jobs.settings import Settings
from onnxprune.workers.job_process import JobLimits, JobRequest, run_job_process
from onnxprune.workers.options import PruneOptions

log = logging.getLogger(__name__)
T = TypeVar("T")
# A job's progress is written at most this often: each write is a database round trip (with
# PostgreSQL, over the network), and a small job reported ~18 of them in a few seconds (issue 28).
PROGRESS_WRITE_INTERVAL_S = 1.0


class AttemptStopped(Exception):
    """Raised from the progress callback when this attempt no longer holds the job (cancelled or fenced)."""


class Outcome(str, Enum):
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"  # cancelled, removed, or taken over by another attempt while this one ran
    skipped = "skipped"  # nothing to do: finished, gone, or held by a live attempt
    retry = "retry"  # an infrastructure error; the job is queued again, the caller retries later


def attempt_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class Heartbeat:
    """Renews the lease every third of its lifetime from a thread; ``lost`` once a renewal fails."""

    def __init__(self, store: JobStore, job_id: str, token: str, ttl_s: float) -> None:
        self._store, self._job_id, self._token, self._ttl_s = store, job_id, token, ttl_s
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job_id[:8]}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._ttl_s / 3):
            try:
                if not self._store.renew(self._job_id, self._token, self._ttl_s):
                    self.lost.set()
                    return
            except Exception:  # a store hiccup: keep trying until the lease really expires
                log.warning("job %s: lease renewal failed", self._job_id, exc_info=True)


def job_limits(settings: Settings) -> JobLimits:
    """The sandbox of a service job: the configured memory, the soft time limit as its wall time
    (the child is killed and the job fails as ``timeout``, once; the worker process lives on), a
    lower CPU priority than the API's, and its share of the CPU (``workers.job_threads``)."""
    return JobLimits(
        memory_mib=settings.job_memory_mib,
        wall_s=float(settings.soft_time_limit_s),
        nice=settings.job_nice,
        threads=settings.job_threads or None,
        jobs_at_once=settings.jobs_at_once(),
        max_result_mib=settings.max_result_mib,
    )


def run_job(job_id: str, store: JobStore, settings: Settings, artifacts: ArtifactStore | None = None) -> Outcome:
    """One delivery of the job: claim it, run the pipeline, publish, record the outcome.

    Errors are sorted by ``jobs.policy``: a user error fails the job now; an infrastructure error
    requeues it (``Outcome.retry``: the caller waits ``retry_delay_s`` and calls again) until the
    retries are spent. Attempts are bounded across redeliveries too: a job whose worker died
    ``max_retries + 1`` times is failed instead of being handed on forever.
    """
    max_attempts = settings.max_retries + 1
    artifacts = artifacts or open_artifact_store(settings)
    token = _patiently(
        lambda: store.claim(job_id, attempt_owner(), settings.lease_ttl_s, max_attempts=max_attempts),
        settings.lease_ttl_s / 2,
    )
    if token is None:
        return _not_claimed(job_id, store, max_attempts)
    try:
        return _attempt(job_id, token, store, settings, artifacts)
    except Exception as exc:
        job = store.get(job_id)
        attempts = job.attempts if job is not None else 1
        failure = after_attempt(exc, attempts, settings.max_retries)
        if failure.retry:
            log.exception("job %s: attempt %d failed; retrying", job_id, attempts)
            return Outcome.retry if store.requeue(job_id, token, failure.message) else Outcome.cancelled
        if failure.code in ("internal_error", "storage_full"):
            log.exception("job %s: attempt %d failed; giving up", job_id, attempts)
        else:
            log.info("job %s failed (%s): %s", job_id, failure.code, failure.message)
        if not store.fail(job_id, failure.code, failure.message, token=token):
            return Outcome.cancelled
        _release_upload(job_id, store, artifacts)
        return Outcome.failed


def _release_upload(job_id: str, store: JobStore, artifacts: ArtifactStore) -> None:
    """A failed job's upload is of no more use: remove it now, so it stops counting against the byte
    budgets (the retention sweep retries what fails here)."""
    try:
        artifacts.remove_inputs(job_id)
        store.release_inputs(job_id)
    except Exception:  # noqa: BLE001 - the sweep (service.retention) removes it later
        log.warning("job %s: could not remove the upload of the failed job yet", job_id, exc_info=True)


def _remove_if_cancelled(job_id: str, store: JobStore, artifacts: ArtifactStore) -> None:
    """The API removes a cancelled job's files at once, but its sandbox may still have been writing
    until it was killed (within ``JobLimits.stop_poll_s``): remove what it left. A job taken over by
    another attempt (fenced) keeps its files."""
    job = store.get(job_id)
    if job is None or job.status is JobStatus.cancelled:
        artifacts.remove(job_id)


def _not_claimed(job_id: str, store: JobStore, max_attempts: int) -> Outcome:
    job = store.get(job_id)
    if job is not None and _given_up(job, max_attempts):
        store.fail(job_id, "internal_error", f"the job was interrupted {job.attempts} times; giving up")
        return Outcome.failed
    state = "gone" if job is None else f"{job.status.value}, lease held by {job.lease_owner}"
    log.info("job %s: nothing to do (%s)", job_id, state)
    return Outcome.skipped


def _given_up(job: JobRecord, max_attempts: int) -> bool:
    if job.status.terminal or job.attempts < max_attempts:
        return False
    return job.lease_expires is None or job.lease_expires < time.time()


def _attempt(job_id: str, token: str, store: JobStore, settings: Settings, artifacts: ArtifactStore) -> Outcome:
    job = store.get(job_id)
    if job is None:
        return Outcome.cancelled
    options = PruneOptions.model_validate_json(job.config)
    with Heartbeat(store, job_id, token, settings.lease_ttl_s) as heartbeat:
        # A database that is briefly away (a restart, a fail-over) does not stop the attempt: the lease
        # decides once it is back, and the writes that must land (succeed) wait for it a little.
        written = [-math.inf]  # when progress was last written

        def progress(stage: str, fraction: float) -> None:
            if heartbeat.lost.is_set():
                raise AttemptStopped(job_id)
            now = time.monotonic()
            if now - written[0] < PROGRESS_WRITE_INTERVAL_S:
                return  # written just now; ``keep_going`` watches the lease meanwhile
            written[0] = now
            try:
                held = store.progress(job_id, token, stage, fraction)
            except StoreUnavailable as exc:
                log.warning("job %s: progress not recorded: %s", job_id, exc)
                return
            if not held:
                raise AttemptStopped(job_id)

        def keep_going() -> bool:
            try:
                return not heartbeat.lost.is_set() and store.holds(job_id, token)
            except StoreUnavailable:
                return not heartbeat.lost.is_set()

        space: AttemptSpace | None = None
        published: Published | None = None
        try:
            space = artifacts.checkout(job_id, token)
            plan = PruningPlan.from_json(space.plan.read_text()) if space.plan is not None else None
            request = JobRequest(
                space.model,
                space.work / MODEL,
                options,
                data=space.data,
                plan=plan,
                report_page_title=f"onnxprune job {job_id}",
            )
            sandbox = space.work / "sandbox"
            result = run_job_process(
                request,
                sandbox,
                limits=job_limits(settings),
                progress=progress,
                keep_going=keep_going,
                latency_cache=settings.latency_cache(),
            )
            os.replace(result.report_path, space.work / REPORT)
            os.replace(result.plan_path, space.work / PLAN)
            if result.report_page_path is not None:
                os.replace(result.report_page_path, space.work / REPORT_HTML)
            shutil.rmtree(sandbox)  # the request, the child's log and scratch: not part of the result
            patience_s = settings.lease_ttl_s / 2
            if not _patiently(lambda: store.holds(job_id, token), patience_s):
                raise AttemptStopped(job_id)
            published = artifacts.publish(job_id, token, space)
            done = _record_success(store, job_id, token, published, patience_s)
        except Exception:
            if space is not None:
                artifacts.discard(job_id, space, published)
            if not store.holds(job_id, token):
                _remove_if_cancelled(job_id, store, artifacts)
                return Outcome.cancelled  # cancelled, removed, or fenced: the job is not ours any more
            raise
    if not done:  # cancelled or fenced while the last step ran: these results do not count
        artifacts.discard(job_id, space, published)
        _remove_if_cancelled(job_id, store, artifacts)
        return Outcome.cancelled
    artifacts.discard(job_id, space)  # the scratch space only: the results are the job's now
    return Outcome.succeeded


def _patiently(call: Callable[[], T], patience_s: float) -> T:
    """``call()``, tried again while the store is unavailable, for up to ``patience_s``."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return call()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _record_success(store: JobStore, job_id: str, token: str, published: Published, patience_s: float) -> bool:
    """Make this attempt's result the job's; True if it is (also when a retried ``succeed`` finds its
    own earlier commit, whose answer the connection lost: its objects must then not be discarded)."""
    succeed = functools.partial(
        store.succeed, job_id, token, published.sha256, result_key=published.result_key, result_bytes=published.size
    )
    if _patiently(succeed, patience_s):
        return True
    job = store.get(job_id)
    return (
        job is not None
        and job.status is JobStatus.succeeded
        and published.result_key is not None
        and job.result_key == published.result_key
    )
