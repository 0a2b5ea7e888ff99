"""Where a user's graph runs: a process with memory, CPU and wall-time limits.

onnxruntime executes uploaded (hostile) models: a segfault, an abort or a runaway allocation
in its native code must cost a child process, never the worker. Two ways in:

- a job runs whole in one sandboxed child (``workers.job_process``), which calls ``enter_sandbox``
  first; from then on ``run_in_child`` runs its target right there, in the sandbox, so the stages
  of a job share one process (no interpreter start, no model copy per stage);
- anywhere else (``onnxprune bench``, ``analyze``, the Python API's one-off calls) ``run_in_child``
  starts a fresh interpreter of its own (no inherited threads or locks from a web or Celery parent),
  which limits its own address space with ``RLIMIT_AS``, disables core dumps, and sends back either
  the result or the exception text, as plain data (``workers.plain_data``: JSON and npz, never
  pickle: a compromised child must not run code in its parent). Not multiprocessing's "spawn" (nor
  "forkserver"): both re-run the caller's ``__main__`` in the child, so a user's script without an
  ``if __name__ == "__main__":`` guard would start its own work again there and fail.

Either way, every way the run can fail becomes a one-line ``RunnerError``.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import pickle
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from onnxprune.graphops.errors import ModelRejected
from onnxprune.workers import plain_data

_MIB = 1024 * 1024
_PR_SET_PDEATHSIG = 1
# Texts onnxruntime, the C++ runtime and Python use when an allocation fails.
_ALLOCATION_FAILURES = ("bad_alloc", "failed to allocate", "cannot allocate memory", "memoryerror", "out of memory")

Result = TypeVar("Result")


class RunnerError(ModelRejected):
    """onnxruntime could not run the model: it crashed, ran out of memory or time, or raised.

    A user error: the same model fails the same way on retry.
    """


class SandboxLimit(RuntimeError):
    """The sandbox was stopped by one of its limits or by the host.

    Not a user error (``ModelRejected``): the same input may pass on a machine with more memory or
    less load. The CLI exits 1; the service sorts the kinds (``jobs.policy``): a breach of the job's
    own limits fails it, a kill by the host is retried once.
    """


class SandboxTimeout(SandboxLimit):
    """The sandbox ran past its wall-time or CPU-time limit."""


class SandboxOutOfMemory(SandboxLimit):
    """The sandbox ran out of its own memory limit."""


class SandboxKilled(SandboxLimit):
    """SIGKILL from outside without the sandbox passing its own memory limit: the host's OOM killer
    (the machine ran short, maybe because of other work) or an operator; a machine fault."""


class SandboxStarved(SandboxTimeout):
    """The wall-time limit passed while the sandbox got little CPU: an overloaded host, a machine fault."""


_inside_sandbox = False  # set once by ``enter_sandbox``: this process is the sandbox


@dataclass(frozen=True)
class RunnerLimits:
    memory_mib: int = 4096  # address space of the child, onnxruntime and numpy included (~300 MiB)
    timeout_s: float = 300.0
    max_result_mib: int = 512  # results (model outputs) sent back to the parent


def run_in_child(
    target: Callable[..., Result], args: tuple[Any, ...] = (), *, limits: RunnerLimits = RunnerLimits()
) -> Result:
    """``target(*args)`` in a fresh child process; its return value, or a ``RunnerError``.

    ``target`` and its arguments must be picklable (a module-level function). Inside a job's
    sandbox (``enter_sandbox``) the target runs in this process, under the job's limits.
    """
    if _inside_sandbox:
        return _run_here(target, args)
    with tempfile.TemporaryDirectory(prefix="onnxprune-child-") as workdir:
        request, log_path = os.path.join(workdir, "request.pickle"), os.path.join(workdir, "child.log")
        with open(request, "wb") as file:  # parent to child only: the child never sends pickle back
            pickle.dump(sys.path, file)  # read first, so the target's module imports as it does here
            pickle.dump((target, args, limits), file, protocol=pickle.HIGHEST_PROTOCOL)
        read_fd, write_fd = os.pipe()
        receiver = Connection(read_fd, writable=False)
        try:
            with open(log_path, "wb") as log:
                child = subprocess.Popen(
                    [sys.executable, "-c", _CHILD_BOOTSTRAP, request, str(write_fd)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(write_fd,),
                )
        finally:
            os.close(write_fd)
        try:
            message = _receive(receiver, child, limits)
        finally:
            receiver.close()
            if child.poll() is None:
                child.kill()
            child.wait()
        with open(log_path, "rb") as log:
            log_tail = log.read()[-4000:].decode("utf-8", "replace")
    if message is None:
        raise _crash_error(child.returncode, log_tail, limits)
    status, payload = message
    if status == "ok":
        result: Result = payload  # what ``target`` returned in the child, as plain data
        return result
    if status == "rejected":  # the target refused the model itself: its own message, unchanged
        raise ModelRejected(payload)
    if _mentions_allocation_failure(payload):
        raise SandboxOutOfMemory(
            f"onnxruntime exceeded the memory limit of {limits.memory_mib} MiB while running the model"
        )
    raise RunnerError(f"onnxruntime could not run the model: {payload}")


def enter_sandbox(memory_mib: int, cpu_seconds: int) -> None:
    """Make this process the sandbox of one job: limits on memory and CPU, no core dumps, killed
    with its parent. Called first thing by the job's child, before it reads the user's model."""
    global _inside_sandbox
    apply_limits(memory_mib, cpu_seconds)
    _inside_sandbox = True


def inside_sandbox() -> bool:
    """Whether this process is a job's sandbox: ``run_in_child`` then runs targets here, so they may take
    callables (progress) that could not cross to a fresh child."""
    return _inside_sandbox


def cpu_budget(wall_s: float) -> int:
    """CPU seconds for a wall-time limit on every core: a backstop should the parent die before its
    own wall-time limit fires (SIGXCPU, then SIGKILL 5 s later)."""
    return int(wall_s * (os.cpu_count() or 1)) + 10


def apply_limits(memory_mib: int, cpu_seconds: int) -> None:
    """Limits on this process: address space, CPU time, no core dumps; killed when its parent dies."""
    _die_with_parent()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    memory = memory_mib * _MIB
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def _run_here(target: Callable[..., Result], args: tuple[Any, ...]) -> Result:
    """``target(*args)`` in this process (the sandbox), failures turned into ``RunnerError`` as a child's are."""
    try:
        return target(*args)
    except (ModelRejected, SandboxLimit):  # RunnerError included: already says what went wrong
        raise
    except MemoryError:
        raise SandboxOutOfMemory("the job exceeded its memory limit while running the model") from None
    except Exception as error:  # the same one line a child would send back
        text = " ".join(f"{type(error).__name__}: {error}".split())[:1000]
        if _mentions_allocation_failure(text):
            raise SandboxOutOfMemory(f"onnxruntime ran out of memory while running the model: {text}") from error
        raise RunnerError(f"onnxruntime could not run the model: {text}") from error


def _receive(receiver: Any, child: Any, limits: RunnerLimits) -> tuple[str, Any] | None:
    if not receiver.poll(limits.timeout_s):
        child.kill()
        raise SandboxTimeout(f"onnxruntime timed out after {limits.timeout_s:g} s while running the model")
    try:
        data = receiver.recv_bytes(limits.max_result_mib * _MIB + 65536)
    except (EOFError, OSError):
        return None  # the child died before sending anything (or sent more than the limit)
    try:
        status, payload = plain_data.decode(data)  # never unpickle what a sandbox sends
    except (ValueError, TypeError, KeyError, struct.error) as exc:
        raise RunnerError(f"the sandbox sent back a malformed result ({type(exc).__name__})") from None
    return str(status), payload


def _crash_error(exitcode: int | None, log_tail: str, limits: RunnerLimits) -> RunnerError | SandboxLimit:
    if _mentions_allocation_failure(log_tail):
        return SandboxOutOfMemory(
            f"onnxruntime exceeded the memory limit of {limits.memory_mib} MiB while running the model"
        )
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        name = signal.Signals(number).name if number in signal.valid_signals() else "unknown"
        if number == signal.SIGKILL:
            return SandboxKilled(
                f"onnxruntime was killed (signal 9, {name}) from outside while running the model, "
                f"below its memory limit of {limits.memory_mib} MiB: likely the machine ran short of memory"
            )
        return RunnerError(f"onnxruntime crashed (signal {number}, {name}) while running the model")
    return RunnerError(f"onnxruntime exited with status {exitcode} without a result while running the model")


def _mentions_allocation_failure(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _ALLOCATION_FAILURES)


# The child's first lines: the parent's import path (as "spawn" would give it), then ``child_main``.
# A ``-c`` program, so neither the caller's ``__main__`` nor the working directory is imported.
_CHILD_BOOTSTRAP = (
    "import pickle, sys\n"
    "with open(sys.argv[1], 'rb') as f: sys.path[:] = pickle.load(f)\n"
    "from onnxprune.workers.sandbox import child_main\n"
    "child_main(sys.argv[1], int(sys.argv[2]))\n"
)


def child_main(request: str, result_fd: int) -> None:
    """The child's entry point (``_CHILD_BOOTSTRAP``): run the request, send back plain data on ``result_fd``."""
    sender = Connection(result_fd, readable=False)
    with open(request, "rb") as file:
        pickle.load(file)  # the import path, already applied by the bootstrap
        target, args, limits = pickle.load(file)
    try:
        _child_main(sender, target, args, limits)
    finally:
        sender.close()


def _child_main(sender: Any, target: Callable[..., Any], args: tuple[Any, ...], limits: RunnerLimits) -> None:
    faulthandler.enable()
    apply_limits(limits.memory_mib, cpu_budget(limits.timeout_s))
    try:
        result = target(*args)
    except MemoryError:
        sender.send_bytes(plain_data.encode(("error", "MemoryError")))
        return
    except ModelRejected as error:
        sender.send_bytes(plain_data.encode(("rejected", str(error)[:2000])))
        return
    except Exception as error:  # every failure goes back to the parent as one line
        text = " ".join(f"{type(error).__name__}: {error}".split())
        traceback.print_exc()
        sender.send_bytes(plain_data.encode(("error", text[:1000])))
        return
    if _approximate_size(result) > limits.max_result_mib * _MIB:
        sender.send_bytes(
            plain_data.encode(("error", f"the model's outputs exceed the limit of {limits.max_result_mib} MiB"))
        )
        return
    try:
        message = plain_data.encode(("ok", result))
    except TypeError as error:  # a target of ours returned something else: our bug, said as such
        message = plain_data.encode(("error", f"internal error: the result is not plain data ({error})"))
    sender.send_bytes(message)


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
