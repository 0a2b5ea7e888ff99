"""The retry policy, written once for the embedded runner and the Celery task.

User errors (the model, its data or its options) fail a job once with a clear code: a rerun of the same
deterministic pipeline would fail the same way. Only infrastructure errors (an I/O error, a lost worker,
a bug of ours) are retried, a bounded number of times, then fail as ``internal_error`` -- or
``storage_full`` when the disk is full, so that an operator sees what to fix.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from onnxprune.graphops.errors import AnalysisBug, ModelRejected

STORAGE_FULL_MESSAGE = "storage full: the server has no disk space left for this job"


class JobTimeout(Exception):
    """An attempt ran past the soft time limit (raised by the worker's SIGALRM handler)."""


@dataclass(frozen=True)
class Failure:
    """How one failed attempt is recorded: its error code, message, and whether to try again."""

    code: str
    message: str
    retry: bool
    max_retries: int | None = None  # fewer retries than the deployment's for this kind of failure


def is_storage_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)


def disk_nearly_full(path: Path, reserve_bytes: int = 1 << 20) -> bool:
    """Whether the disk holding ``path`` has less than ``reserve_bytes`` free (SQLite reports a full
    disk as a plain "disk I/O error" when it cannot grow its shared-memory file)."""
    try:
        return shutil.disk_usage(path).free < reserve_bytes
    except OSError:
        return False


def classify(exc: BaseException) -> Failure:
    """The error code of an exception raised by an attempt, and whether it is worth retrying."""
    # Imported here: the pipeline (onnxruntime, torch on demand) loads only where jobs run.
    from celery.exceptions import SoftTimeLimitExceeded

    from onnxprune.workers.job_process import SandboxFailure
    from onnxprune.workers.sandbox import (
        RunnerError,
        SandboxKilled,
        SandboxOutOfMemory,
        SandboxStarved,
        SandboxTimeout,
    )
    from onnxprune.workers.verification import VerificationFailed

    message = str(exc) or type(exc).__name__
    # The machine, not the job: killed from outside below its own limits, or starved of CPU. Once more,
    # on a machine that may have recovered (or another worker); twice is not chance any more.
    if isinstance(exc, SandboxKilled):
        return Failure("resource_limit", message, retry=True, max_retries=1)
    if isinstance(exc, SandboxStarved):
        return Failure("timeout", message, retry=True, max_retries=1)
    if isinstance(exc, (JobTimeout, SoftTimeLimitExceeded, SandboxTimeout)):
        return Failure("timeout", message, retry=False)
    if isinstance(exc, SandboxOutOfMemory):
        return Failure("resource_limit", message, retry=False)
    if isinstance(exc, RunnerError):  # the model crashed or was refused by onnxruntime
        return Failure("model_rejected", message, retry=False)
    if isinstance(exc, ModelRejected):
        return Failure("model_rejected", message, retry=False)
    if isinstance(exc, VerificationFailed):
        # The pruned model did not match the masked original, so nothing was published. The pipeline is
        # deterministic: a retry fails identically. It is our limitation (never blamed on the user), not
        # an infrastructure fault, so it fails once under its own code.
        return Failure(
            "verification_failed", f"the pruned model failed verification and was not kept: {message}", retry=False
        )
    if isinstance(exc, AnalysisBug):
        # A handler bug: deterministic like verification, so a retry would only repeat it.
        return Failure("internal_error", f"{type(exc).__name__}: {exc}", retry=False)
    if is_storage_full(exc):
        return Failure("storage_full", STORAGE_FULL_MESSAGE, retry=True)
    if isinstance(exc, SandboxFailure):  # its message names the error raised in the sandbox
        return Failure("internal_error", message, retry=True)
    return Failure("internal_error", f"{type(exc).__name__}: {exc}", retry=True)


def after_attempt(exc: BaseException, attempts_done: int, max_retries: int) -> Failure:
    """The failure to record after attempt number ``attempts_done`` (1-based) raised ``exc``.

    ``retry`` is True only when the error is retryable and retries are left; the final message of an
    exhausted infrastructure error says how many attempts were made.
    """
    failure = classify(exc)
    if not failure.retry:
        return failure
    if attempts_done <= min(max_retries, failure.max_retries if failure.max_retries is not None else max_retries):
        return failure
    if failure.code == "storage_full":
        return Failure(failure.code, failure.message, retry=False)
    if failure.code in ("resource_limit", "timeout"):  # the machine twice: say so, under the kind's code
        return Failure(failure.code, f"{failure.message} (on each of {attempts_done} attempts)", retry=False)
    return Failure(failure.code, f"failed after {attempts_done} attempts ({failure.message})", retry=False)
