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
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from fastapi import Request
from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from onnxprune.graphops.errors import ModelRejected, PlanError
from onnxprune.graphops.plan import PruningPlan
from onnxprune.jobs.files import JobFiles
from onnxprune.service.errors import ApiError
from onnxprune.workers.options import PruneOptions

if TYPE_CHECKING:  # the TypedDict exists only for type checkers
    import onnx
    from python_multipart.multipart import MultipartCallbacks

MAX_CONFIG_BYTES = 64 * 1024
MAX_PLAN_BYTES = 16 << 20  # kept channel indices of every group: megabytes for the largest models
MAX_NAME_CHARS = 1024  # exporters write names of tens of characters; reports and plans carry every one
# An npz is a zip: its arrays may decompress to far more than the upload. The unpacked size is
# capped by the upload's own size (DATA_RATIO x + DATA_SLACK) and, overall, by 4x the upload limit.
MAX_DATA_EXPANSION = 4
DATA_RATIO = 32
DATA_SLACK = 1 << 20


@dataclass
class Upload:
    model_bytes: int = 0
    data_bytes: int | None = None
    config_text: str | None = None
    plan_bytes: bytes | None = None  # a saved plan to apply instead of scoring (checked by ``parse_plan``)


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

    def callbacks(self) -> MultipartCallbacks:
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
        if name not in ("model", "data", "config", "plan"):
            raise ApiError(400, "bad_request", f"unexpected form part {name!r}; send model, data, config and plan")
        if name in self.seen:
            raise ApiError(400, "bad_request", f"form part {name!r} given twice")
        self.seen.add(name)
        self.part.name = name
        if name in ("config", "plan"):
            self.part.text = bytearray()
        else:
            path = self.files.upload if name == "model" else self.files.data
            self.part.sink = open(path, "wb")  # noqa: SIM115 - closed in _end or close()

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        part.size += end - start
        if part.text is not None:
            limit = MAX_PLAN_BYTES if part.name == "plan" else MAX_CONFIG_BYTES
            if part.size > limit:
                raise ApiError(413, "payload_too_large", f"{part.name} is larger than {limit} bytes")
            part.text.extend(data[start:end])
        elif part.sink is not None:
            if part.size > self.max_bytes:
                raise ApiError(
                    413,
                    "payload_too_large",
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
        elif part.name == "plan" and part.text is not None:
            self.upload.plan_bytes = bytes(part.text)
        elif part.name == "config" and part.text is not None:
            try:
                self.upload.config_text = part.text.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(422, "invalid_config", "config is not UTF-8 JSON") from None

    def close(self) -> None:
        if self.part.sink is not None:
            self.part.sink.close()


async def receive_upload(request: Request, files: JobFiles, max_bytes: int) -> Upload:
    """Stream the body into ``files`` (an existing directory); raise :class:`ApiError` (4xx) on anything malformed or too big."""
    ctype, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError(400, "bad_request", "send multipart/form-data with a 'model' file part")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > 2 * max_bytes + MAX_CONFIG_BYTES + MAX_PLAN_BYTES + 65536:
        raise ApiError(413, "payload_too_large", f"request exceeds the limit of {max_bytes / 2**20:g} MB")
    receiver = _Receiver(files, max_bytes)  # ``files.root`` is the artifact store's staging directory
    try:
        parser = MultipartParser(boundary, receiver.callbacks())  # refuses a boundary over 256 bytes
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except (FormParserError, ValueError, UnicodeDecodeError) as exc:
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
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits; brackets nested past the stack
        raise ApiError(422, "invalid_config", f"config is not JSON this server reads: {str(exc)[:200]}") from None
    if not isinstance(raw, dict):
        raise ApiError(422, "invalid_config", "config must be a JSON object of prune options")
    try:
        return PruneOptions.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_config", describe_validation_error(exc, "config")) from None


def parse_plan(data: bytes) -> PruningPlan:
    """A plan to apply (``onnxprune prune --plan-out``'s JSON); checked against the model by the job."""
    try:
        return PruningPlan.from_json(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(422, "invalid_plan", "plan is not UTF-8 JSON") from None
    except PlanError as exc:
        raise ApiError(422, "invalid_plan", str(exc).splitlines()[0][:500]) from None


def describe_validation_error(exc: ValidationError, prefix: str) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in (prefix, *first["loc"]))
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {message}{more}"


def check_model(path: Path, options: PruneOptions, max_bytes: int, *, has_data: bool = False) -> None:
    """Static checks only: the model is never run before a job is accepted.

    graphops' checks first (their messages name the node at fault), then ``onnx.checker`` in full
    (with strict shape inference), which walks every subgraph and local function: cycles, dangling
    inputs, duplicate outputs and unknown ops are refused here rather than failing the job later.
    """
    import onnx

    from onnxprune.graphops.loading import inline_local_functions, load_model, validate_model
    from onnxprune.graphops.shapes import resolve_input_shapes
    from onnxprune.workers.precision import check_precision

    try:
        model = load_model(path, max_bytes=max_bytes)
        validate_model(model)
        model = inline_local_functions(model)  # as the job will: the checker then sees plain ops
        refuse_long_names(model)
        resolve_input_shapes(model, options.input_shapes)
        check_precision(model, options, has_data=has_data)  # a QDQ model through a float-only path
    except ModelRejected as exc:
        raise ApiError(422, "invalid_model", str(exc)) from None
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ApiError(422, "invalid_model", f"model fails onnx.checker: {first[:500]}") from None


def refuse_long_names(model: onnx.ModelProto) -> None:
    """Node and tensor names are shown in reports and plans, which grow with them (a 10 MB model of long
    names made a 45 MB report): names past ``MAX_NAME_CHARS`` are refused, naming the first."""
    graph = model.graph
    named = [*graph.node, *graph.initializer, *graph.input, *graph.output, *graph.value_info]
    names = (n for item in named for n in (item.name, *getattr(item, "output", ())))
    long = next((name for name in names if len(name) > MAX_NAME_CHARS), None)
    if long is not None:
        raise ApiError(
            422,
            "invalid_model",
            f"name {long[:60]!r}... is {len(long):,} characters long, over the limit of {MAX_NAME_CHARS}; "
            "rename the model's nodes and tensors and upload it again",
        )


def check_data(path: Path, upload_bytes: int, max_bytes: int) -> None:
    """A real npz of plain arrays: no pickled objects, and no zip bomb.

    Every member's size is read from its .npy header before anything is decompressed, and all of
    them together must fit a budget tied to the actual upload (``data_budget``). The payloads are
    then streamed through in chunks (zipfile checks each CRC) so the API's memory stays flat.
    """
    budget = data_budget(upload_bytes, max_bytes)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if not members:
                raise ApiError(422, "invalid_data", "data holds no arrays")
            declared = 0
            for info in members:
                declared += _declared_array_bytes(archive, info)
                if declared > budget:
                    raise ApiError(
                        413,
                        "payload_too_large",
                        f"data arrays declare more than {budget} bytes in all, over the limit for a "
                        f"{upload_bytes}-byte upload",
                    )
            for info in members:
                _stream_through(archive, info)
    except ApiError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        ValueError,
        TypeError,
        KeyError,
        SyntaxError,
        OSError,
        EOFError,
        NotImplementedError,
        RuntimeError,
        OverflowError,
        MemoryError,
    ) as exc:
        raise ApiError(422, "invalid_data", f"data is not a readable .npz of arrays: {exc}"[:500]) from None


def data_budget(upload_bytes: int, max_bytes: int) -> int:
    """Most bytes the arrays of a ``upload_bytes`` npz may unpack to: a generous ratio for real data
    compressed with ``savez_compressed``, far below what a bomb of compressed zeros declares."""
    return min(MAX_DATA_EXPANSION * max_bytes, DATA_RATIO * upload_bytes + DATA_SLACK)


def _declared_array_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """The payload size a member's .npy header declares (only the header is decompressed)."""
    if not info.filename.endswith(".npy"):
        raise ApiError(422, "invalid_data", f"data member {info.filename!r} is not a .npy array")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        header_bytes = member.tell()
    if dtype.hasobject:
        raise ApiError(
            422,
            "invalid_data",
            f"data array {info.filename!r} holds Python objects (pickles), which a .npz "
            "of data may not; use numeric arrays",
        )
    count = 1
    for dim in shape:
        count *= int(dim)
    payload = count * dtype.itemsize
    if info.file_size != header_bytes + payload:
        raise ApiError(
            422,
            "invalid_data",
            f"data array {info.filename!r} declares {payload} bytes of values "
            f"but holds {info.file_size - header_bytes}",
        )
    return payload


def _stream_through(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    with archive.open(info) as member:
        while member.read(1 << 20):
            pass
