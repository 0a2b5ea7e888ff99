"""The latency-table cache (issue 33): a job's sandbox only reads it; its parent publishes the tables
the job measured once they parse as tables, and publishing (and the service's sweep) keeps the cache
within its age and size."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest

from onnxprune.graphops.latency_table import LatencyCurve, LatencyTable
from onnxprune.workers.job_process import JobRequest, _publish_latency_tables, run_job_process
from onnxprune.workers.latency_cache import (
    MAX_TABLE_BYTES,
    MAX_TABLES_PER_JOB,
    OUTBOX,
    LatencyCache,
    publish_tables,
    read_untrusted_table,
    remove_stale,
)
from onnxprune.workers.options import PruneOptions
from tests.support.service_models import convnet, save

KEY = "0123456789abcdef0123456789abcdef"


def _table(key: str = KEY) -> LatencyTable:
    curve = LatencyCurve("g", 16, (8, 16), (1.0, 2.0), probes={12: 1.5}, points={8: 1.0})
    return LatencyTable(key=key, baseline_ms=2.0, noise_ms=0.1, step=8, step_source="measured", curves={"g": curve})


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_a_valid_table_is_published_as_the_table_it_parses_to(tmp_path):
    _write(tmp_path / "outbox", f"{KEY}.json", _table().to_json())
    cache = LatencyCache(tmp_path / "cache")

    assert publish_tables(tmp_path / "outbox", cache) == [f"{KEY}.json"]
    published = (cache.tables / f"{KEY}.json").read_text()
    assert LatencyTable.from_json(published) == _table()
    assert published == _table().to_json()


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("evil.py", _table().to_json()),  # not a table's name
        (f"{KEY}.json", "not json"),
        (f"{KEY}.json", "[" * 30_000 + "]" * 30_000),
        (f"{KEY}.json", json.dumps({"format": "onnxprune.latency/1", "key": KEY})),  # fields missing
        (f"{KEY}.json", json.dumps({**json.loads(_table().to_json()), "baseline_ms": "fast"})),
        (f"{KEY}.json", json.dumps({**json.loads(_table().to_json()), "format": "other"})),
        (f"{KEY}.json", _table("f" * 32).to_json()),  # a key other than its name
        (f"{KEY}.json", _table().to_json().replace('"baseline_ms": 2.0', '"baseline_ms": NaN')),
        (f"{KEY}.json", _table().to_json().replace('"baseline_ms": 2.0', '"baseline_ms": 1e999')),
        (f"{KEY}.json", _table().to_json() + " " * MAX_TABLE_BYTES),  # too large
    ],
)
def test_anything_but_a_table_named_by_its_key_is_refused(tmp_path, name, text):
    path = _write(tmp_path / "outbox", name, text)
    cache = LatencyCache(tmp_path / "cache")

    assert read_untrusted_table(path) is None
    assert publish_tables(tmp_path / "outbox", cache) == []
    assert not cache.tables.exists()


def test_a_link_or_a_pipe_is_not_read(tmp_path):
    target = _write(tmp_path / "elsewhere", "table.json", _table().to_json())
    (tmp_path / "outbox").mkdir()
    (tmp_path / "outbox" / f"{KEY}.json").symlink_to(target)
    os.mkfifo(tmp_path / "outbox" / f"{'c' * 32}.json")  # reading it would block the parent for good

    assert publish_tables(tmp_path / "outbox", LatencyCache(tmp_path / "cache")) == []


def test_a_flood_of_files_is_not_read_past_a_few(tmp_path):
    for index in range(MAX_TABLES_PER_JOB + 5):
        key = f"{index:032x}"
        _write(tmp_path / "outbox", f"{key}.json", _table(key).to_json())

    published = publish_tables(tmp_path / "outbox", LatencyCache(tmp_path / "cache"))

    assert len(published) == MAX_TABLES_PER_JOB


def _aged(path: Path, days: float) -> None:
    then = time.time() - days * 86400
    os.utime(path, (then, then))


def test_retention_removes_old_tables_then_the_oldest_beyond_the_size_cap(tmp_path):
    size = len(_table().to_json())
    cache = LatencyCache(tmp_path / "cache", max_age_s=30 * 86400, max_total_bytes=2 * size)
    tables = cache.tables
    for name, days in (("old", 31), ("third", 3), ("fourth", 5), ("middle", 2), ("newest", 1)):
        _aged(_write(tables, f"{name}.json", _table().to_json()), days)

    assert remove_stale(cache) == 3
    assert sorted(p.name for p in tables.iterdir()) == ["middle.json", "newest.json"]


def test_publishing_applies_the_retention(tmp_path):
    cache = LatencyCache(tmp_path / "cache", max_age_s=86400)
    _aged(_write(cache.tables, f"{'a' * 32}.json", _table("a" * 32).to_json()), 2)
    _write(tmp_path / "outbox", f"{KEY}.json", _table().to_json())

    publish_tables(tmp_path / "outbox", cache)

    assert [p.name for p in cache.tables.iterdir()] == [f"{KEY}.json"]


# ---- through a job's sandbox -----------------------------------------------------------------


@pytest.mark.integration
def test_a_table_a_job_measured_is_published_by_its_parent_and_reused_by_the_next_job(tmp_path):
    model = save(convnet(), tmp_path / "m.onnx")
    options = PruneOptions(latency_target=0.9, latency_budget_s=1, benchmark=False)
    cache = LatencyCache(tmp_path / "cache")

    run_job_process(JobRequest(model, tmp_path / "a.onnx", options), tmp_path / "first", latency_cache=cache)
    (measured,) = (tmp_path / "first" / OUTBOX).iterdir()  # the child wrote it in its own directory
    assert [p.name for p in cache.tables.iterdir()] == [measured.name]
    assert LatencyTable.from_json((cache.tables / measured.name).read_text()) == LatencyTable.from_json(
        measured.read_text()
    )

    run_job_process(JobRequest(model, tmp_path / "b.onnx", options), tmp_path / "second", latency_cache=cache)
    assert not (tmp_path / "second" / OUTBOX).exists()  # read from the cache, not measured again


@pytest.mark.integration
def test_a_hostile_sandbox_cannot_plant_files_in_the_cache(tmp_path, monkeypatch):
    # The child runs this first (a sitecustomize on its PYTHONPATH), as code a model took over would.
    hostile = tmp_path / "hostile"
    _write(
        hostile,
        "sitecustomize.py",
        textwrap.dedent(f"""
            import os, pathlib
            outbox = pathlib.Path(os.environ["ONNXPRUNE_LATENCY_OUTBOX"])
            outbox.mkdir(parents=True, exist_ok=True)
            (outbox / "{KEY}.json").write_text("import os; os.system('rm -rf /')")
            (outbox / "payload.sh").write_text("#!/bin/sh")
            (outbox / "{"b" * 32}.json").symlink_to("/etc/passwd")
        """),
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hostile), os.environ.get("PYTHONPATH", "")]))
    model = save(convnet(), tmp_path / "m.onnx")
    cache = LatencyCache(tmp_path / "cache")

    options = PruneOptions(ratio=0.5, benchmark=False, round_to=1)
    run_job_process(JobRequest(model, tmp_path / "out.onnx", options), tmp_path / "job", latency_cache=cache)

    assert len(list((tmp_path / "job" / OUTBOX).iterdir())) == 3  # the child did run the planting code
    assert not cache.root.exists()


def test_a_cache_that_cannot_be_written_costs_the_job_nothing(tmp_path):
    _write(tmp_path / "job" / OUTBOX, f"{KEY}.json", _table().to_json())
    (tmp_path / "not a folder").write_text("")

    _publish_latency_tables(tmp_path / "job", LatencyCache(tmp_path / "not a folder"))  # logs, does not raise
