"""The static checks of an uploaded model, run in a small pool of worker processes with limits.

Parsing and checking a model is CPU-bound Python and C++ that holds the GIL: a 5 MB model of 199,000
nodes took 3.3 s of the API's CPU and 290 MiB, and ``/healthz`` waited up to 3 s behind it. In worker
processes (spawned: no inherited threads, locks or sockets), with an address-space limit and a
deadline, no upload can stall the API's event loop or grow its memory. The processes stay warm:
starting one per upload cost 3 s on a loaded machine.

A check past its deadline, or one that kills its process (memory, a crash in the ONNX checker),
costs the pool: it is replaced, and the checks that were in it when it broke get one more try on
the new one, so that only the model at fault is refused.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from onnxprune.service.errors import ApiError
from onnxprune.workers.options import PruneOptions

log = logging.getLogger(__name__)
Problem = tuple[int, str, str]  # an ApiError as plain data: status, code, message


class UploadChecks:
    """One per process and configuration (``shared``): apps made in one process (tests, reloads) share
    its warm workers rather than each starting its own."""

    @classmethod
    @functools.cache
    def shared(cls, workers: int, memory_mib: int, timeout_s: float) -> UploadChecks:
        return cls(workers, memory_mib, timeout_s)

    def __init__(self, workers: int, memory_mib: int, timeout_s: float) -> None:
        self.workers, self.memory_mib, self.timeout_s = workers, memory_mib, timeout_s
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._generation = 0

    def _current(self) -> tuple[ProcessPoolExecutor, int]:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_enter_limits,
                    initargs=(self.memory_mib,),
                )
                self._generation += 1
            return self._pool, self._generation

    def _replace(self, generation: int) -> None:
        """Drop the pool of ``generation`` (if it is still the current one) and kill its processes."""
        with self._lock:
            if self._pool is None or generation != self._generation:
                return
            pool, self._pool = self._pool, None
        # ProcessPoolExecutor cannot stop a running call; Python 3.14 adds kill_workers(), until then
        # its processes are reached through this attribute.
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.kill()

    def warm_up(self) -> None:
        """Start the processes and import the checks in them before the first upload needs them."""
        with self._lock:
            if self._pool is not None:
                return  # started already (by another app of this process, or an upload)
        pool, _ = self._current()
        for future in [pool.submit(_warm) for _ in range(self.workers)]:
            future.result(timeout=120)

    def close(self) -> None:
        with self._lock:
            generation = self._generation
        self._replace(generation)

    async def check_model(self, path: Path, options: PruneOptions, max_bytes: int, *, has_data: bool) -> None:
        """``uploads.check_model`` in the pool; its ApiError (422) raised here, or one for a check that
        ran past the deadline or killed its process."""
        arguments = (str(path), options.model_dump_json(), max_bytes, has_data)
        for attempt in (1, 2):
            pool, generation = self._current()
            try:
                future: Future[Problem | None] = pool.submit(_check_model, *arguments)
                problem = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
            except TimeoutError:
                self._replace(generation)
                raise ApiError(
                    422, "invalid_model", f"checking the model took longer than this server's {self.timeout_s:g} s"
                ) from None
            except BrokenProcessPool:
                self._replace(generation)
                if attempt == 1:
                    continue  # maybe another upload's model broke the pool: once more, on a fresh one
                raise ApiError(
                    422,
                    "invalid_model",
                    f"checking the model ended its process (over {self.memory_mib} MiB of memory, or a crash "
                    "of the ONNX checker)",
                ) from None
            if problem is not None:
                raise ApiError(*problem)
            return


def _enter_limits(memory_mib: int) -> None:
    """Address space and no core dumps. Not ``sandbox.apply_limits``: its kill-with-parent signal follows
    the *thread* that started the process (here a pool's, which ends before the pool), and its CPU limit
    would add up over the process's life; the deadline bounds each check instead."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mib * 2**20, memory_mib * 2**20))


def _warm() -> None:
    import onnxprune.service.uploads  # noqa: F401


def _check_model(path: str, options_json: str, max_bytes: int, has_data: bool) -> Problem | None:
    from onnxprune.service.uploads import check_model

    try:
        check_model(Path(path), PruneOptions.model_validate_json(options_json), max_bytes, has_data=has_data)
    except ApiError as error:
        return error.status, error.code, error.message
    except MemoryError:
        return 422, "invalid_model", "checking the model ran out of this server's memory for upload checks"
    return None
