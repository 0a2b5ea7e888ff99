"""Issue 33's smaller probes: configs that broke the JSON reader, a time budget the server would cut,
a 413 that kept reading, and a DELETE racing readers of the job's results (real server, real clients)."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from tests.support.service_models import convnet
from tests.support.service_processes import wait_until

MODEL = convnet().SerializeToString()
FAST = {"ratio": 0.5, "benchmark": False, "round_to": 1}


def _post(client, config: str):
    return client.post("/v1/jobs", files={"model": ("m.onnx", MODEL)}, data={"config": config})


@pytest.mark.parametrize(
    "config",
    [
        '{"seed": ' + "9" * 5000 + "}",  # past Python's digit limit for int(): ValueError, not JSONDecodeError
        '{"ratio": ' + "[" * 30_000 + "]" * 30_000 + "}",  # past the recursion limit: RecursionError
    ],
    ids=["5000-digit-integer", "30000-nested-brackets"],
)
def test_every_config_the_json_reader_refuses_is_a_422(client, config):
    response = _post(client, config)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_config"


def test_a_time_budget_beyond_the_servers_job_limit_is_refused_naming_both(client, embedded_settings):
    limit = embedded_settings.soft_time_limit_s
    response = _post(client, json.dumps({**FAST, "time_budget": limit + 60}))
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert f"{limit + 60:g} s" in message and f"{limit} s" in message and "time_budget" in message
    assert _post(client, json.dumps({**FAST, "time_budget": limit})).status_code == 202


def test_after_a_413_the_server_closes_the_connection_instead_of_reading_on(start_api, embedded_env):
    """A chunked upload that never ends: the server answers 413 once past its limit, then must hang up
    (it read 14 GB in 20 s before). The client stops sending when the connection goes."""
    server = start_api({**embedded_env, "ONNXPRUNE_MAX_UPLOAD_MB": "1"})
    boundary = "b0undary"
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="m.onnx"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    chunk = bytes(64 * 1024)
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent, cap = 0, 200 * 2**20  # 200x the limit: without the fix the server reads all of it
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        try:
            while sent < cap:
                sock.sendall(framed)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert sent < cap, "the server kept reading the body after its 413"


ROUTES = ["", "/report", "/plan", "/model", "/report.html"]


def test_a_delete_racing_readers_gives_whole_bodies_or_404s_never_a_500(start_api, embedded_env, model_path):
    server = start_api(embedded_env)
    for trial in range(4):
        with httpx.Client(base_url=server.url, timeout=60) as client:
            with open(model_path, "rb") as model:
                job_id = client.post(
                    "/v1/jobs", files={"model": ("m.onnx", model)}, data={"config": json.dumps({**FAST, "seed": trial})}
                ).json()["id"]
            wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded", 120, "the job")  # noqa: B023
            full = {route: client.get(f"/v1/jobs/{job_id}{route}").content for route in ROUTES}
        problems, statuses = _race_delete_with_readers(server.url, job_id, full)
        assert problems == [], problems
        assert 200 in statuses and 404 in statuses


def _race_delete_with_readers(url: str, job_id: str, full: dict[str, bytes]) -> tuple[list[str], list[int]]:
    """Two readers per route read the job in a loop while it is deleted: what went wrong, and every status."""
    problems: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()

    def read(route: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as reader:
            while not stop.is_set():
                try:
                    response = reader.get(f"/v1/jobs/{job_id}{route}")
                except httpx.HTTPError as exc:  # a body cut short raises here (RemoteProtocolError)
                    problems.append(f"{route}: {type(exc).__name__}: {exc}")
                    continue
                statuses.append(response.status_code)
                if response.status_code == 200 and response.content != full[route]:
                    problems.append(f"{route}: a body of {len(response.content)} bytes, not {len(full[route])}")
                elif response.status_code not in (200, 404):
                    problems.append(f"{route}: {response.status_code} {response.text[:200]}")
                if response.status_code == 404:
                    return

    readers = [threading.Thread(target=read, args=(route,)) for route in ROUTES for _ in range(2)]
    for reader in readers:
        reader.start()
    time.sleep(0.3)
    assert httpx.delete(f"{url}/v1/jobs/{job_id}", timeout=30).status_code == 204
    time.sleep(0.5)
    stop.set()
    for reader in readers:
        reader.join(30)
    return problems, statuses
