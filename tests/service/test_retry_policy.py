"""onnxprune.jobs.policy: user errors fail once under a clear code; only infrastructure errors are retried."""

from __future__ import annotations

import errno
import sqlite3

import pytest

from onnxprune.graphops.errors import AnalysisBug, ModelRejected
from onnxprune.jobs.policy import JobTimeout, after_attempt, classify
from onnxprune.workers.job_process import SandboxFailure
from onnxprune.workers.sandbox import (
    RunnerError,
    SandboxKilled,
    SandboxLimit,
    SandboxOutOfMemory,
    SandboxStarved,
    SandboxTimeout,
)
from onnxprune.workers.verification import VerificationFailed

CASES = [
    (ModelRejected("node 'x' is odd"), "model_rejected", False),
    (SandboxTimeout("the job ran past its time limit of 60 s and was stopped"), "timeout", False),
    (SandboxOutOfMemory("the job exceeded its memory limit"), "resource_limit", False),
    (SandboxKilled("the job's process was killed (SIGKILL) from outside"), "resource_limit", True),
    (SandboxStarved("the job ran past its time limit while the machine gave it little CPU"), "timeout", True),
    (RunnerError("onnxruntime could not run the model: Invalid input"), "model_rejected", False),
    (JobTimeout("the job ran past its time limit of 1740 s and was stopped"), "timeout", False),
    (VerificationFailed("pruned model output 'y' deviates from the oracle"), "verification_failed", False),
    (OSError(errno.ENOSPC, "No space left on device"), "storage_full", True),
    (sqlite3.OperationalError("database or disk is full"), "storage_full", True),
    (OSError("connection reset"), "internal_error", True),
    (KeyError("bug"), "internal_error", True),
    (SandboxFailure("KeyError: 'bug'"), "internal_error", True),
    (AnalysisBug("onnxprune bug: the Relu handler failed on node 'r'"), "internal_error", False),
]


@pytest.mark.parametrize(("error", "code", "retry"), CASES, ids=[c[1] + ":" + type(c[0]).__name__ for c in CASES])
def test_each_error_has_one_code_and_only_infrastructure_errors_retry(error, code, retry):
    failure = classify(error)
    assert (failure.code, failure.retry) == (code, retry)


def test_retries_are_bounded_and_the_last_message_counts_the_attempts():
    error = OSError("connection reset")
    assert after_attempt(error, 1, max_retries=2).retry
    assert after_attempt(error, 2, max_retries=2).retry
    final = after_attempt(error, 3, max_retries=2)
    assert not final.retry and final.message == "failed after 3 attempts (OSError: connection reset)"
    full = after_attempt(OSError(errno.ENOSPC, "No space left on device"), 3, max_retries=2)
    assert (full.code, full.retry) == ("storage_full", False) and full.message.startswith("storage full")


@pytest.mark.parametrize("error", [SandboxKilled("killed from outside"), SandboxStarved("starved of CPU")])
def test_a_machine_fault_in_the_sandbox_is_retried_once(error):
    assert after_attempt(error, 1, max_retries=2).retry
    final = after_attempt(error, 2, max_retries=2)
    assert not final.retry and final.message.endswith("(on each of 2 attempts)")
    assert not after_attempt(error, 1, max_retries=0).retry


@pytest.mark.parametrize("kind", [SandboxTimeout, SandboxOutOfMemory, SandboxKilled, SandboxStarved])
def test_sandbox_limits_are_not_user_errors(kind):
    """The CLI answers exit 2 to ModelRejected (the input is at fault); a limit or the host is not that."""
    assert issubclass(kind, SandboxLimit) and not issubclass(kind, ModelRejected)
