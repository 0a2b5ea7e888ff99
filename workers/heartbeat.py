"""A Celery worker's liveness for container healthchecks, independent of how busy it is.

``celery inspect ping`` is answered by the worker's own loop, which the solo pool blocks for as long as
a job runs (minutes): a busy, healthy worker looked dead and the healthcheck flapped under load. A
daemon thread touches a file instead, as long as the worker still takes jobs (a thread alone would
keep beating in a worker whose consumer a broker stall had wedged); the healthcheck reads its age:

    python -m onnxprune.workers.heartbeat --max-age 60      # exit 0 when the worker is alive
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_PATH = Path(os.environ.get("ONNXPRUNE_HEARTBEAT_FILE", "/tmp/onnxprune-worker.heartbeat"))
INTERVAL_S = 10.0


def start_heartbeat(
    path: Path = DEFAULT_PATH, interval_s: float = INTERVAL_S, alive: Callable[[], bool] | None = None
) -> threading.Thread:
    """Touch ``path`` now and every ``interval_s`` seconds for as long as the process lives and
    ``alive`` (asked each time: whether the worker still takes jobs, ``jobs.consumption``) says so."""

    def beat() -> None:
        while True:
            if alive is None or alive():
                path.touch()
            time.sleep(interval_s)

    path.touch()
    thread = threading.Thread(target=beat, name="onnxprune-heartbeat", daemon=True)
    thread.start()
    return thread


def is_alive(path: Path = DEFAULT_PATH, max_age_s: float = 6 * INTERVAL_S) -> bool:
    try:
        return time.time() - path.stat().st_mtime <= max_age_s
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Exit 0 when the worker's heartbeat file is fresh.")
    parser.add_argument("--file", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--max-age", type=float, default=6 * INTERVAL_S, help="seconds")
    args = parser.parse_args(argv)
    return 0 if is_alive(args.file, args.max_age) else 1


if __name__ == "__main__":
    sys.exit(main())
