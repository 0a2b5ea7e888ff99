"""Rate-limited logs: a hostile model can make graph libraries warn thousands of times per upload.

``RateLimit`` lets through at most ``burst`` records per (logger, message template) in each window and
counts the rest; the next record let through says how many similar ones were dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimit(logging.Filter):
    def __init__(self, burst: int = 5, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst, self.window_s, self.clock = burst, window_s, clock
        self._seen: dict[tuple[str, str], tuple[float, int, int]] = {}  # key -> (window start, let through, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        start, passed, dropped = self._seen.get(key, (now, 0, 0))
        if now - start >= self.window_s:
            start, passed = now, 0
        if passed >= self.burst:
            self._seen[key] = (start, passed, dropped + 1)
            return False
        if dropped:
            record.msg = f"{record.msg} ({dropped} similar messages suppressed)"
        self._seen[key] = (start, passed + 1, 0)
        if len(self._seen) > 10_000:  # bounded memory whatever the messages
            self._seen.clear()
        return True


def install_rate_limit(burst: int = 5, window_s: float = 60.0) -> None:
    """Route Python warnings to logging and rate-limit every root handler (adding one if there is none)."""
    logging.captureWarnings(True)
    root = logging.getLogger()
    if not root.handlers:
        handler: logging.Handler = logging.StreamHandler()
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    for handler in root.handlers:
        if not any(isinstance(f, RateLimit) for f in handler.filters):
            handler.addFilter(RateLimit(burst, window_s))
