"""Re-send jobs that nobody will run: the broker lost their message, or their worker died.

At-least-once delivery plus fencing (``jobs.run``) makes a re-send safe: a duplicate of a job that is
running under a live lease, or finished, does nothing. So the reconciler only has to be sure not to
re-send too eagerly (a grace period) nor forever (a bounded number of re-sends, then the job fails).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from onnxprune.jobs.job_store import JobRecord, JobStatus, JobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reconciled:
    resent: list[str]
    failed: list[str]


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
) -> Reconciled:
    """One pass: re-send each orphaned job, or fail it once it has been re-sent ``max_resends`` times."""
    now = time.time() if now is None else now
    resent: list[str] = []
    failed: list[str] = []
    for job in store.active():
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
    return Reconciled(resent, failed)
