"""Receive a job upload: stream the multipart body to disk in chunks, then check what arrived.

The body is parsed as it arrives (never spooled whole in memory or in a temp dir outside our
control); each file part is capped at ``ONNXPRUNE_MAX_UPLOAD_MB``. Nothing here runs the model:
``check_model`` uses graphops' static checks, ``check_data`` reads the npz without pickle.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from fastapi import Request
from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from graphops.errors import ModelRejected
from service.errors import ApiError
from jobs.files import JobFiles
from workers.options import PruneOptions

MAX_CONFIG_BYTES = 64 * 1024
# An npz is a zip: its arrays may decompress to far more than the upload. Cap the unpacked size.
MAX_DATA_EXPANSION = 4


@dataclass
class Upload:
    model_bytes: int = 0
    data_bytes: int | None = None
    config_text: str | None = None


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    sink: BinaryIO | None = None
    text: bytearray | None = None
    size: int = 0


class _Receiver:
    """python-multipart callbacks that route the ``model``/``data`` parts to files, ``config`` to memory."""

    def __init__(self, files: JobFiles, max_bytes: int) -> None:
        self.files = files
        self.max_bytes = max_bytes
        self.upload = Upload()
        self.part = _Part()
        self.seen: set[str] = set()
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self.part = _Part()

    def _header_end(self) -> None:
        self.part.headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field.clear()
        self._value.clear()

    def _headers_done(self) -> None:
        _, params = parse_options_header(self.part.headers.get("content-disposition", ""))
        name = params.get(b"name", b"").decode("latin-1")
        if name not in ("model", "data", "config"):
            raise ApiError(400, "bad_request", f"unexpected form part {name!r}; send model, data and config")
        if name in self.seen:
            raise ApiError(400, "bad_request", f"form part {name!r} given twice")
        self.seen.add(name)
        self.part.name = name
        if name == "config":
            self.part.text = bytearray()
        else:
            path = self.files.upload if name == "model" else self.files.data
            self.part.sink = open(path, "wb")  # noqa: SIM115 - closed in _end or close()

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        part.size += end - start
        if part.text is not None:
            if part.size > MAX_CONFIG_BYTES:
                raise ApiError(413, "payload_too_large", f"config is larger than {MAX_CONFIG_BYTES} bytes")
            part.text.extend(data[start:end])
        elif part.sink is not None:
            if part.size > self.max_bytes:
                raise ApiError(
                    413, "payload_too_large",
                    f"{part.name} upload exceeds the limit of {self.max_bytes / 2**20:g} MB",
                )
            part.sink.write(data[start:end])

    def _end(self) -> None:
        part = self.part
        if part.sink is not None:
            part.sink.close()
            part.sink = None
        if part.name == "model":
            self.upload.model_bytes = part.size
        elif part.name == "data":
            self.upload.data_bytes = part.size
        elif part.name == "config" and part.text is not None:
            try:
                self.upload.config_text = part.text.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(422, "invalid_config", "config is not UTF-8 JSON") from None

    def close(self) -> None:
        if self.part.sink is not None:
            self.part.sink.close()


async def receive_upload(request: Request, files: JobFiles, max_bytes: int) -> Upload:
    """Stream the body into ``files``; raise :class:`ApiError` (4xx) on anything malformed or too big."""
    ctype, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError(400, "bad_request", "send multipart/form-data with a 'model' file part")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > 2 * max_bytes + MAX_CONFIG_BYTES + 65536:
        raise ApiError(413, "payload_too_large", f"request exceeds the limit of {max_bytes / 2**20:g} MB")
    files.root.mkdir(parents=True, exist_ok=False)
    receiver = _Receiver(files, max_bytes)
    parser = MultipartParser(boundary, receiver.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise ApiError(400, "bad_request", f"malformed multipart body: {exc}") from None
    finally:
        receiver.close()
    if "model" not in receiver.seen:
        raise ApiError(400, "bad_request", "missing form part 'model' (the .onnx file)")
    if receiver.upload.model_bytes == 0:
        raise ApiError(422, "invalid_model", "the model file is empty")
    return receiver.upload


def parse_config(text: str | None) -> PruneOptions:
    """The job options; a missing config means all defaults. Messages name the offending field."""
    if text is None or not text.strip():
        return PruneOptions()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(422, "invalid_config", f"config is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(raw, dict):
        raise ApiError(422, "invalid_config", "config must be a JSON object of prune options")
    try:
        return PruneOptions.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_config", describe_validation_error(exc, "config")) from None


def describe_validation_error(exc: ValidationError, prefix: str) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in (prefix, *first["loc"]))
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {message}{more}"


def check_model(path: Path, options: PruneOptions, max_bytes: int) -> None:
    """Static checks only (graphops.loading): the model is never run before a job is accepted."""
    from graphops.loading import load_model, validate_model
    from graphops.shapes import resolve_input_shapes

    try:
        model = load_model(path, max_bytes=max_bytes)
        validate_model(model)
        resolve_input_shapes(model, options.input_shapes)
    except ModelRejected as exc:
        raise ApiError(422, "invalid_model", str(exc)) from None


def check_data(path: Path, max_bytes: int) -> None:
    """A real npz of plain arrays: no pickled objects, no zip bomb."""
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > MAX_DATA_EXPANSION * max_bytes:
            raise ApiError(422, "invalid_data", f"data unpacks to {unpacked} bytes, over the limit")
        with np.load(path, allow_pickle=False) as npz:
            if not npz.files:
                raise ApiError(422, "invalid_data", "data holds no arrays")
            for name in npz.files:
                npz[name]  # reads and checks every array header and payload
    except ApiError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ApiError(422, "invalid_data", f"data is not a readable .npz of arrays: {exc}") from None
