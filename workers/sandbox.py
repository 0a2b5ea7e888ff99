"""Run a function in a child process with memory and wall-time limits.

onnxruntime executes uploaded (hostile) models: a segfault, an abort or a runaway allocation
in its native code must cost a child process, never the worker. The child is started with the
"spawn" context (no inherited threads or locks from a web or Celery parent), limits its own
address space with ``RLIMIT_AS``, disables core dumps, and sends back either the result or the
exception text. The parent turns every way the child can fail into a one-line ``RunnerError``.
"""

from __future__ import annotations

import ctypes
import faulthandler
import multiprocessing
import os
import resource
import signal
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from graphops.errors import ModelRejected

_MIB = 1024 * 1024
_PR_SET_PDEATHSIG = 1
# Texts onnxruntime, the C++ runtime and Python use when an allocation fails.
_ALLOCATION_FAILURES = ("bad_alloc", "failed to allocate", "cannot allocate memory", "memoryerror", "out of memory")

Result = TypeVar("Result")


class RunnerError(ModelRejected):
    """onnxruntime could not run the model: it crashed, ran out of memory or time, or raised.

    A user error: the same model fails the same way on retry.
    """


@dataclass(frozen=True)
class RunnerLimits:
    memory_mib: int = 4096  # address space of the child, onnxruntime and numpy included (~300 MiB)
    timeout_s: float = 300.0
    max_result_mib: int = 512  # results (model outputs) sent back to the parent


def run_in_child(
    target: Callable[..., Result], args: tuple[Any, ...] = (), *, limits: RunnerLimits = RunnerLimits()
) -> Result:
    """``target(*args)`` in a fresh child process; its return value, or a ``RunnerError``.

    ``target`` and its arguments must be picklable (a module-level function).
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    with tempfile.NamedTemporaryFile(prefix="onnxprune-child-", suffix=".log") as log:
        child = context.Process(target=_child_main, args=(sender, log.name, target, args, limits), daemon=True)
        child.start()
        sender.close()
        try:
            message = _receive(receiver, child, limits)
        finally:
            receiver.close()
            if child.is_alive():
                child.kill()
            child.join()
        log.seek(0)
        log_tail = log.read()[-4000:].decode("utf-8", "replace")
    if message is None:
        raise _crash_error(child.exitcode, log_tail, limits)
    status, payload = message
    if status == "ok":
        result: Result = payload  # what ``target`` returned in the child, unpickled
        return result
    if _mentions_allocation_failure(payload):
        raise RunnerError(f"onnxruntime exceeded the memory limit of {limits.memory_mib} MiB while running the model")
    raise RunnerError(f"onnxruntime could not run the model: {payload}")


def _receive(receiver: Any, child: Any, limits: RunnerLimits) -> tuple[str, Any] | None:
    if not receiver.poll(limits.timeout_s):
        child.kill()
        raise RunnerError(f"onnxruntime timed out after {limits.timeout_s:g} s while running the model")
    try:
        message: tuple[str, Any] = receiver.recv()
        return message
    except (EOFError, OSError):
        return None  # the child died before sending anything


def _crash_error(exitcode: int | None, log_tail: str, limits: RunnerLimits) -> RunnerError:
    if _mentions_allocation_failure(log_tail):
        return RunnerError(f"onnxruntime exceeded the memory limit of {limits.memory_mib} MiB while running the model")
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        name = signal.Signals(number).name if number in signal.valid_signals() else "unknown"
        if number == signal.SIGKILL:
            return RunnerError(
                f"onnxruntime was killed (signal 9, {name}) while running the model, likely out of memory"
            )
        return RunnerError(f"onnxruntime crashed (signal {number}, {name}) while running the model")
    return RunnerError(f"onnxruntime exited with status {exitcode} without a result while running the model")


def _mentions_allocation_failure(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _ALLOCATION_FAILURES)


def _child_main(
    sender: Any, log_path: str, target: Callable[..., Any], args: tuple[Any, ...], limits: RunnerLimits
) -> None:
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    faulthandler.enable()
    _die_with_parent()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # A backstop should the parent die before its wall-time limit fires: CPU seconds on every core.
    cpu_seconds = int(limits.timeout_s * (os.cpu_count() or 1)) + 10
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    memory = limits.memory_mib * _MIB
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    try:
        result = target(*args)
    except MemoryError:
        sender.send(("error", "MemoryError"))
        return
    except Exception as error:  # every failure goes back to the parent as one line
        text = " ".join(f"{type(error).__name__}: {error}".split())
        traceback.print_exc()
        sender.send(("error", text[:1000]))
        return
    if _approximate_size(result) > limits.max_result_mib * _MIB:
        sender.send(("error", f"the model's outputs exceed the limit of {limits.max_result_mib} MiB"))
        return
    sender.send(("ok", result))


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to the child when the parent dies (best effort elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _approximate_size(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, dict):
        return sum(_approximate_size(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_approximate_size(item) for item in value)
    return 0
