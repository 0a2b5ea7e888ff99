"""Start and stop the real processes the service tests talk to: uvicorn API servers and Celery workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/13"  # a DB of our own; we still delete only our prefix's keys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    inherited = os.environ.get("PYTHONPATH")
    python_path = str(REPO) + (os.pathsep + inherited if inherited else "")
    full_env = {**os.environ, **env, "PYTHONPATH": python_path}
    with open(log, "ab") as out:
        # A new session so that stop() can signal the process and every child it started.
        return subprocess.Popen(
            args, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def api_command(port: int) -> list[str]:
    """The API as users start it (uvicorn with the app factory), on 127.0.0.1:``port``."""
    return [sys.executable, "-m", "uvicorn", "onnxprune.service.api:create_app", "--factory", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]  # fmt: skip


class ApiServer:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> ApiServer:
        self.process = spawn(
            api_command(self.port),
            self.env,
            self.log,
        )
        wait_until(self._healthy, 30, f"API on {self.url} (log: {self.log})")
        return self

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"API exited with {self.process.returncode}: {self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        stop(self.process)
        self.process = None


class Worker:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen | None = None

    def start(self) -> Worker:
        self.process = spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "onnxprune.jobs.celery_app",
                "worker",
                "--pool=solo",
                "--loglevel=info",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            self.env,
            self.log,
        )
        wait_until(lambda: b"ready." in self.log.read_bytes() or self._died(), 60, f"worker (log: {self.log})")
        self._died()
        return self

    def _died(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"worker exited with {self.process.returncode}: {self.log.read_text()[-3000:]}")
        return False

    def kill(self) -> None:
        """SIGKILL the worker and its children at once, like a machine that lost power."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        stop(self.process)
        self.process = None


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
