"""Hostile uploads are refused from their headers, before anything big is unpacked, with a 4xx.

Runs the embedded app in-process (TestClient); nothing here needs Redis.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import helper

from onnxprune.jobs.settings import Settings
from onnxprune.service.api import create_app
from tests.support.service_models import convnet

MODEL = convnet().SerializeToString()


def _post(client, model: bytes = MODEL, data: bytes | None = None, config: str = '{"benchmark": false}'):
    files = {"model": ("m.onnx", model, "application/octet-stream")}
    if data is not None:
        files["data"] = ("d.npz", data, "application/octet-stream")
    return client.post("/v1/jobs", files=files, data={"config": config})


def _npz_declaring(shape: tuple[int, ...], payload_bytes: int, *, name: str = "x.npy", chunk: int = 1 << 20) -> bytes:
    """An npz whose one member declares ``shape`` (float32) and holds ``payload_bytes`` zeros, written in
    chunks so that the test itself never holds the unpacked array."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open(name, "w", force_zip64=True) as member:
            member.write(header.getvalue())
            zeros = bytes(chunk)
            left = payload_bytes
            while left > 0:
                member.write(zeros[: min(chunk, left)])
                left -= chunk
    return out.getvalue()


def _nothing_left(client, settings: Settings) -> bool:
    jobs_dir = settings.jobs_dir
    return client.app.state.store.list("", limit=1, offset=0)[1] == 0 and (
        not jobs_dir.exists() or list(jobs_dir.iterdir()) == []
    )


def test_a_bomb_of_compressed_zeros_is_refused_from_its_header_with_flat_memory(client, embedded_settings):
    bomb = _npz_declaring((50_000_000,), 200_000_000)  # 200 MB of zeros in a few hundred KB
    assert len(bomb) < embedded_settings.max_upload_bytes
    tracemalloc.start()  # numpy and zipfile buffers are traced; the app runs in this process
    try:
        response = _post(client, data=bomb)
        grown_mib = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"
    assert grown_mib < 40
    assert _nothing_left(client, embedded_settings)


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (_npz_declaring((10**12,), 64), 422, "declares 4000000000000 bytes"),
        (_npz_declaring((10,), 8), 422, "declares 40 bytes"),
        (_npz_declaring((2,), 8, name="x.txt"), 422, "not a .npy"),
        (b"PK\x03\x04" + b"\0" * 64, 422, "npz"),
    ],
    ids=["10^12 elements", "short payload", "not npy", "broken zip"],
)
def test_a_malformed_npz_is_a_4xx_never_a_500(client, embedded_settings, data, status, words):
    response = _post(client, data=data)

    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]
    assert _nothing_left(client, embedded_settings)


def test_real_compressed_data_is_accepted(client):
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez_compressed(buffer, input=rng.standard_normal((4, 3, 16, 16)).astype(np.float32))

    assert _post(client, data=buffer.getvalue()).status_code == 202


def test_a_multipart_boundary_over_256_characters_is_a_400(client):
    boundary = "b" * 300
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="m.onnx"\r\n\r\n').encode()
    body += MODEL + f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/v1/jobs", content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )

    assert response.status_code == 400, response.text
    assert "boundary" in response.json()["error"]["message"].lower()


def test_offsets_and_limits_are_bounded(client):
    key = {"Authorization": "Bearer a-client-key-of-our-own-1234"}
    for query in (f"offset={2**63 + 1}", "offset=-1", "limit=101", f"limit={2**64}"):
        assert client.get(f"/v1/jobs?{query}", headers=key).status_code == 422, query


def _with_dangling_input() -> bytes:
    model = convnet()
    model.graph.node.append(helper.make_node("Relu", ["nowhere"], ["extra"], name="dangling"))
    return model.SerializeToString()


def _with_custom_op_in_a_function() -> bytes:
    model = convnet()
    body = helper.make_node("Evil", ["x"], ["y"], domain="com.evil")
    model.functions.append(
        helper.make_function(
            "local", "wrapper", ["x"], ["y"], [body], [helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)]
        )
    )
    model.opset_import.append(helper.make_opsetid("local", 1))
    return model.SerializeToString()


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (_with_dangling_input(), "onnx.checker"),
        (_with_custom_op_in_a_function(), "com.evil"),
    ],
    ids=["dangling input", "custom op in a local function"],
)
def test_models_that_would_fail_later_are_refused_at_upload(client, embedded_settings, model, words):
    response = _post(client, model=model)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_model"
    assert words in response.json()["error"]["message"]
    assert _nothing_left(client, embedded_settings)


@pytest.mark.parametrize("config", ['{"seed": -1}', f'{{"seed": {2**32}}}', '{"flops_regularization": 1e400}'])
def test_out_of_range_options_are_refused(client, config):
    response = _post(client, config=config)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_config"


@pytest.fixture
def tiny_disk(tmp_path) -> Path:
    """A 1 MiB tmpfs (needs root and mount, as in CI's container); skipped with the reason otherwise."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_answers_507_storage_full(tiny_disk):
    settings = Settings(redis_url=None, data_dir=tiny_disk / "data", max_upload_mb=4, retry_delay_s=0)
    with TestClient(create_app(settings)) as client:
        filler = tiny_disk / "filler"
        with open(filler, "wb") as out:  # leave a little room for the database, none for an upload
            try:
                out.write(bytes(1 << 20))
            except OSError:
                pass
        response = _post(client, model=MODEL + bytes(600_000))

    assert response.status_code == 507, response.text
    assert response.json()["error"] == {
        "code": "storage_full",
        "message": "storage full: the server has no disk space left for this job",
    }
