"""The artifact store contract, run over every implementation (local directory, S3 via moto's server):
an upload committed by the API is what a worker checks out; an attempt's results count only once the
job store records its ``result_key``; a late duplicate can never replace them; reads stream ranges."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

import pytest

from onnxprune.jobs.artifacts import ArtifactMissing, ArtifactStore, AttemptSpace, Published
from onnxprune.jobs.files import MODEL, PLAN, REPORT
from onnxprune.jobs.job_store import StoreUnavailable

MODEL_BYTES = bytes(range(256)) * 40  # 10 KiB, every byte value


def _upload(store: ArtifactStore, job_id: str, *, data: bytes | None = None) -> int:
    staged = store.staging(job_id)
    staged.upload.write_bytes(b"onnx-model-bytes")
    if data is not None:
        staged.data.write_bytes(data)
    return store.commit_inputs(job_id)


def _run_attempt(store: ArtifactStore, job_id: str, token: str, model: bytes) -> tuple[AttemptSpace, Published]:
    space = store.checkout(job_id, token)
    (space.work / MODEL).write_bytes(model)
    (space.work / PLAN).write_text('{"groups": []}')
    (space.work / REPORT).write_text(f'{{"token": "{token}"}}')
    return space, store.publish(job_id, token, space)


def test_a_committed_upload_is_what_an_attempt_checks_out(artifact_store: ArtifactStore) -> None:
    job_id = uuid.uuid4().hex
    assert _upload(artifact_store, job_id, data=b"npz-bytes") == len(b"onnx-model-bytes") + len(b"npz-bytes")
    space = artifact_store.checkout(job_id, "t1")
    assert space.model.read_bytes() == b"onnx-model-bytes"
    assert space.data is not None and space.data.read_bytes() == b"npz-bytes"
    assert list(space.work.iterdir()) == []
    other = uuid.uuid4().hex
    _upload(artifact_store, other)
    assert artifact_store.checkout(other, "t1").data is None


def test_published_results_read_back_whole_and_in_ranges(artifact_store: ArtifactStore) -> None:
    job_id = uuid.uuid4().hex
    _upload(artifact_store, job_id)
    space, published = _run_attempt(artifact_store, job_id, "t1", MODEL_BYTES)
    assert published.sha256 == hashlib.sha256(MODEL_BYTES).hexdigest()
    assert published.size == len(MODEL_BYTES) + len('{"groups": []}') + len('{"token": "t1"}')
    key = published.result_key
    assert artifact_store.size(job_id, key, MODEL) == len(MODEL_BYTES)
    assert artifact_store.read_result(job_id, key, PLAN) == b'{"groups": []}'
    assert b"".join(artifact_store.stream(job_id, key, MODEL, 0, len(MODEL_BYTES) - 1)) == MODEL_BYTES
    assert b"".join(artifact_store.stream(job_id, key, MODEL, 1000, 4999)) == MODEL_BYTES[1000:5000]
    artifact_store.discard(job_id, space)  # the scratch space only
    assert artifact_store.read_result(job_id, key, MODEL) == MODEL_BYTES


def test_a_late_duplicate_attempt_cannot_replace_the_result_that_counts(artifact_store: ArtifactStore) -> None:
    """Attempt 1 publishes and its key is recorded; attempt 2 (fenced, or a redelivery) publishes other
    bytes afterwards: readers of the recorded key still get attempt 1's."""
    job_id = uuid.uuid4().hex
    _upload(artifact_store, job_id)
    _, first = _run_attempt(artifact_store, job_id, "first", MODEL_BYTES)
    late_space, late = _run_attempt(artifact_store, job_id, "late", b"different bytes")
    artifact_store.discard(job_id, late_space, late)  # its succeed() found the lease gone
    recorded = first.result_key
    assert artifact_store.read_result(job_id, recorded, MODEL) == MODEL_BYTES
    assert artifact_store.read_result(job_id, recorded, REPORT) == b'{"token": "first"}'


def test_removal_leaves_nothing_readable(artifact_store: ArtifactStore) -> None:
    job_id = uuid.uuid4().hex
    _upload(artifact_store, job_id)
    _, published = _run_attempt(artifact_store, job_id, "t1", MODEL_BYTES)
    artifact_store.remove_inputs(job_id)
    with pytest.raises(FileNotFoundError):
        artifact_store.checkout(job_id, "t2")
    assert artifact_store.read_result(job_id, published.result_key, MODEL) == MODEL_BYTES  # results stay
    artifact_store.remove(job_id)
    with pytest.raises(ArtifactMissing):
        artifact_store.read_result(job_id, published.result_key, MODEL)
    with pytest.raises(ArtifactMissing):
        artifact_store.size(job_id, published.result_key, MODEL)


def test_orphans_are_jobs_untouched_since_the_cutoff(artifact_store: ArtifactStore) -> None:
    job_id = uuid.uuid4().hex
    _upload(artifact_store, job_id)
    assert job_id not in artifact_store.orphans(before=time.time() - 3600)
    assert job_id in artifact_store.orphans(before=time.time() + 3600)


def test_an_unreachable_object_store_keeps_nothing(tmp_path: Path, s3_env: dict[str, str]) -> None:
    """The S3 endpoint is down: committing an upload raises StoreUnavailable (the API answers 503)
    and the staged upload is gone."""
    from onnxprune.jobs.s3_artifacts import S3Artifacts

    store = S3Artifacts.from_url("s3://bucket/prefix", tmp_path / "scratch", endpoint_url="http://127.0.0.1:9")
    job_id = uuid.uuid4().hex
    staged = store.staging(job_id)
    staged.upload.write_bytes(b"model")
    with pytest.raises(StoreUnavailable):
        store.commit_inputs(job_id)
    assert not staged.root.exists()


def test_a_reachable_store_answers_the_readiness_ping(artifact_store: ArtifactStore) -> None:
    artifact_store.ping()  # raises StoreUnavailable when it cannot be reached


def test_an_unreachable_object_store_fails_the_ping_quickly(tmp_path: Path, s3_env: dict[str, str]) -> None:
    from onnxprune.jobs.s3_artifacts import S3Artifacts

    store = S3Artifacts.from_url("s3://bucket/prefix", tmp_path / "scratch", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StoreUnavailable, match="bucket bucket"):
        store.ping()


def test_a_jobs_directory_that_cannot_be_made_fails_the_ping(tmp_path: Path) -> None:
    from onnxprune.jobs.artifacts import LocalArtifacts

    (tmp_path / "data").write_text("a file where the data directory should be")
    with pytest.raises(StoreUnavailable, match="not a writable directory"):
        LocalArtifacts(tmp_path / "data" / "jobs").ping()
