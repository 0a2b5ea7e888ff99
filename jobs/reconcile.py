"""Re-send jobs that nobody will run: the broker lost their message, or their worker died.

At-least-once delivery plus fencing (``jobs.run``) makes a re-send safe: a duplicate of a job that is
running under a live lease, or finished, does nothing. So the reconciler only has to be sure not to
re-send too eagerly (a grace period) nor forever (a bounded number of re-sends, then the job fails).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from onnxprune.jobs.job_store import JobRecord, JobStatus, JobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reconciled:
    resent: list[str]
    failed: list[str]
    untaken: list[str] = field(default_factory=list)  # in the broker, waiting past ``untaken_after_s``, none running


# Queued jobs whose messages are in the broker but that no worker takes are not lost (a re-send would
# queue them twice): either every worker is gone or their consumers are wedged (a Redis stall did that
# to Celery workers, which then answered pings). The workers' own watch reconnects or restarts them
# (jobs.consumption); the reconciler says so loudly, since only an operator can fix missing workers.
UNTAKEN_AFTER_S = 120.0


def needs_resend(job: JobRecord, pending: Collection[str] | None, now: float, grace_s: float) -> bool:
    """Whether ``job`` is orphaned: queued but not in the broker (``pending``; None: unknown, so
    assume lost), or running under an expired lease; and left alone for ``grace_s`` since then."""
    if job.status is JobStatus.queued:
        if pending is not None and job.id in pending:
            return False
        since = job.sent_at or job.created_at
    elif job.status is JobStatus.running:
        if job.lease_expires is None or job.lease_expires >= now:
            return False  # a live attempt holds it
        since = max(job.lease_expires, job.sent_at or 0.0)
    else:
        return False
    return now - since >= grace_s


def reconcile(
    store: JobStore,
    pending: Collection[str] | None,
    resend: Callable[[str], None],
    *,
    grace_s: float,
    max_resends: int,
    now: float | None = None,
    untaken_after_s: float = UNTAKEN_AFTER_S,
) -> Reconciled:
    """One pass: re-send each orphaned job, or fail it once it has been re-sent ``max_resends`` times."""
    now = time.time() if now is None else now
    resent: list[str] = []
    failed: list[str] = []
    active = store.active()
    untaken = _untaken(active, pending, now, untaken_after_s)
    if untaken:
        log.error(
            "reconciler: %d jobs have waited in the broker for over %.0f s and no job is running: "
            "no worker is taking jobs (none running, or their broker connections are stuck)",
            len(untaken),
            untaken_after_s,
        )
    for job in active:
        if not needs_resend(job, pending, now, grace_s):
            continue
        if job.resends >= max_resends:
            message = f"the job was lost {job.resends + 1} times (broker or worker failures); giving up"
            if store.fail(job.id, "internal_error", message):
                failed.append(job.id)
            continue
        try:
            resend(job.id)
        except Exception as exc:  # the broker is still down: try again next pass, without counting
            log.warning("reconciler: cannot re-send job %s: %s", job.id, exc)
            break
        store.mark_resent(job.id)
        resent.append(job.id)
    if resent or failed:
        log.warning("reconciler: re-sent %d jobs, failed %d lost ones", len(resent), len(failed))
    return Reconciled(resent, failed, untaken)


def _untaken(active: list[JobRecord], pending: Collection[str] | None, now: float, after_s: float) -> list[str]:
    if pending is None or any(job.status is JobStatus.running for job in active):
        return []
    return [
        job.id
        for job in active
        if job.status is JobStatus.queued and job.id in pending and now - (job.sent_at or job.created_at) >= after_s
    ]
