"""The latency-table cache of one deployment: jobs read it, only the trusted parent writes it.

A job's sandboxed child may run a hostile model, so it never writes the cache that other jobs read:
it leaves each table it measured in its own working directory (``OUTBOX``), and the parent process
(``workers.job_process``) publishes it here only once it parses as a ``LatencyTable`` of a bounded
size, re-serialized by us (so no byte the child chose but the table's values reaches the cache).
Publishing also applies the retention: tables older than ``max_age_s``, then the oldest beyond
``max_total_bytes``, are removed.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from onnxprune.graphops.latency_table import TABLE_FORMAT, LatencyTable
from onnxprune.workers.fileio import atomic_write_text

log = logging.getLogger(__name__)

OUTBOX = "latency-tables"  # in the job's working directory: tables the child measured, not yet trusted
CACHE_ENV = "ONNXPRUNE_CACHE_DIR"  # the cache's root (tables under ``latency/``); read by the child
OUTBOX_ENV = "ONNXPRUNE_LATENCY_OUTBOX"  # set for a sandboxed child: where its new tables go instead
MAX_TABLE_BYTES = 4 * 2**20  # a ResNet-50 table is tens of KiB; more than this is not one of ours
MAX_TABLES_PER_JOB = 16
_NAME = re.compile(r"[0-9a-f]{32}\.json")  # ``latency.table_key`` + ".json"
_TABLE = TypeAdapter(LatencyTable)


def default_root() -> Path:
    """The CLI's cache root: ``ONNXPRUNE_CACHE_DIR``, else the user's cache folder."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "onnxprune")


@dataclass(frozen=True)
class LatencyCache:
    """Where one deployment keeps its tables and for how long."""

    root: Path = field(default_factory=default_root)
    max_age_s: float = 30 * 86400.0
    max_total_bytes: int = 64 * 2**20

    @property
    def tables(self) -> Path:
        return self.root / "latency"


def publish_tables(outbox: Path, cache: LatencyCache, now: float | None = None) -> list[str]:
    """Validate each table a job left in ``outbox`` and publish the valid ones into ``cache`` (atomically);
    then apply the retention. Returns the names published; what is refused is logged and left behind."""
    published: list[str] = []
    if not outbox.is_dir() or outbox.is_symlink():
        return published
    with os.scandir(outbox) as entries:  # a job measures a table or two: a flood of files is not read
        candidates = sorted(Path(entry.path) for entry in itertools.islice(entries, MAX_TABLES_PER_JOB))
    for path in candidates:
        table = read_untrusted_table(path)
        if table is None:
            log.warning("latency cache: refused %r from a job (not a latency table of ours)", path.name[:80])
            continue
        cache.tables.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache.tables / path.name, table.to_json())
        published.append(path.name)
    if published:
        remove_stale(cache, now)
    return published


def read_untrusted_table(path: Path) -> LatencyTable | None:
    """The table in ``path`` (written by a sandboxed child), or None when it is anything else: a name
    that is not a table key, not a regular file (a link could point anywhere), too large, not JSON,
    not the table format, or a key that differs from its name."""
    if not _NAME.fullmatch(path.name):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_TABLE_BYTES:
            return None
        raw = handle.read(MAX_TABLE_BYTES + 1)
    if len(raw) > MAX_TABLE_BYTES:
        return None
    try:
        data = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
        if not isinstance(data, dict) or data.pop("format", None) != TABLE_FORMAT:
            return None
        table = _TABLE.validate_python(data)
    except (ValueError, ValidationError, RecursionError, UnicodeDecodeError):
        return None
    return table if table.key == path.name.removesuffix(".json") else None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a latency")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is not a latency")
    return value


def remove_stale(cache: LatencyCache, now: float | None = None) -> int:
    """Remove tables older than ``cache.max_age_s``, then the oldest until the rest fit in
    ``cache.max_total_bytes``; return how many went."""
    now = time.time() if now is None else now
    if not cache.tables.is_dir():
        return 0
    entries = []
    for path in cache.tables.iterdir():
        try:
            info = path.lstat()
        except OSError:  # removed meanwhile (another worker's sweep)
            continue
        entries.append((info.st_mtime, info.st_size, path))
    entries.sort(key=lambda entry: entry[0], reverse=True)  # newest first: they are the ones kept
    removed, total, full = 0, 0, False
    for mtime, size, path in entries:
        total += size
        full = full or total > cache.max_total_bytes  # this one and every older one go
        if full or now - mtime > cache.max_age_s:
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("latency cache: removed %d tables past the retention", removed)
    return removed
