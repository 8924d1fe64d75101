"""Multipart photo uploads, parsed as they stream in, in memory, within their limits.

Files are counted and measured part by part as the body arrives: the request is refused
(413) the moment one file passes its size limit or one file too many begins, and nothing
is ever written to disk. The route's whole-body limit (`limits.LimitedRoute`) bounds the
body, and an `UploadBudget` shared by all requests bounds the photo bytes held in memory
at once (503 beyond it).

The parser runs on the event loop, and its cost grows with the number of parts, not their
bytes (python-multipart finds boundaries with `bytes.find`, but calls back into Python for
every part and header). So parts besides the photos are bounded too, in number
(`max_form_fields`) and in bytes with every part's headers (`FORM_BYTES`): a body of 174,000
tiny text fields is refused (413) after a few dozen, instead of holding the loop for
seconds while every other request waits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header

from fisheye.serving.capacity import UploadBudget
from fisheye.serving.errors import APIError
from fisheye.serving.limits import DEFAULT_BODY
from fisheye.serving.settings import MB

MAX_PART_HEADERS = 8
FORM_BYTES = DEFAULT_BODY  # the other fields' values and all part headers: a JSON body's limit


@dataclass
class Upload:
    """One uploaded file."""

    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str | None = None
    filename: str | None = None
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


def _decode_header(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


class _Collector:
    """python-multipart callbacks that keep the parts named `field`, within the limits."""

    def __init__(
        self,
        field_name: str,
        max_files: int,
        max_file_bytes: int,
        single: bool,
        budget: UploadBudget,
        max_fields: int,
    ):
        self.budget = budget
        self.max_fields = max_fields
        self.fields = 0  # parts that are not files of `field_name`
        self.form_bytes = 0  # their values, and every part's headers
        self.taken = 0
        self.field = field_name
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self.single = single
        self.files: list[Upload] = []
        self.part = _Part()
        self._header_field = b""
        self._header_value = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_form_bytes(end - start)
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_form_bytes(end - start)
        self._header_value += data[start:end]

    def _count_form_bytes(self, n: int) -> None:
        self.form_bytes += n
        if self.form_bytes > FORM_BYTES:
            raise APIError(
                413,
                "form_too_large",
                f"the form fields and part headers are over the {FORM_BYTES // 1024} KiB limit",
            )

    def on_header_end(self) -> None:
        self.part.headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field = self._header_value = b""

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(
            self.part.headers.get(b"content-disposition", b"")
        )
        if disposition != b"form-data" or b"name" not in options:
            raise APIError(422, "invalid_request", "a multipart part has no form-data name")
        self.part.name = _decode_header(options[b"name"])
        filename = options.get(b"filename")
        self.part.filename = _decode_header(filename) if filename is not None else None
        if self.part.name != self.field:
            self.fields += 1
            if self.fields > self.max_fields:
                raise APIError(
                    413,
                    "too_many_fields",
                    f"more than {self.max_fields} form fields besides the photos; "
                    f"the limit is {self.max_fields}",
                )
            return
        if self.part.filename is None:
            raise APIError(
                422, "invalid_request", f"{self.field}: expected a file upload, got a text field"
            )
        if len(self.files) >= self.max_files:
            if self.single:
                raise APIError(
                    422,
                    "invalid_request",
                    f"send one photo in the field `{self.field}`; /v1/predict/batch takes several",
                )
            raise APIError(
                413,
                "too_many_files",
                f"more than {self.max_files} files; the limit is {self.max_files}",
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.name != self.field:
            self._count_form_bytes(end - start)  # other fields are counted and ignored
            return
        self.part.size += end - start
        self.budget.take(end - start)
        self.taken += end - start
        if self.part.size > self.max_file_bytes:
            raise APIError(
                413,
                "file_too_large",
                f"{self.part.filename or 'the file'} is over the "
                f"{self.max_file_bytes / MB:g} MiB limit",
            )
        self.part.chunks.append(data[start:end])

    def on_part_end(self) -> None:
        if self.part.name != self.field:
            return
        content_type = self.part.headers.get(b"content-type")
        self.files.append(
            Upload(
                self.part.filename,
                _decode_header(content_type) if content_type is not None else None,
                b"".join(self.part.chunks),
            )
        )


@asynccontextmanager
async def read_uploads(
    request: Request,
    field_name: str,
    budget: UploadBudget,
    *,
    max_files: int,
    max_file_bytes: int,
    max_fields: int,
    single: bool = False,
) -> AsyncIterator[list[Upload]]:
    """The files of a multipart/form-data body's field `field_name`, in order.

    Their bytes count against `budget` until the block ends. 413 for a file over
    `max_file_bytes`, more than `max_files` files (422 when `single` and a second file
    arrives), more than `max_fields` other parts, or more than `FORM_BYTES` of other parts
    and part headers; 415 for another content type, 422 for a malformed body or a missing
    field, 503 when the budget is spent.
    """
    header = request.headers.get("content-type")
    if header is None:
        raise APIError(422, "invalid_request", f"{field_name}: required field is missing")
    content_type, params = parse_options_header(header)
    if content_type != b"multipart/form-data":
        raise APIError(
            415,
            "unsupported_media_type",
            "send the photos as multipart/form-data (e.g. curl -F file=@photo.jpg)",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise APIError(422, "invalid_request", "the multipart body has no boundary")
    collector = _Collector(field_name, max_files, max_file_bytes, single, budget, max_fields)
    try:
        try:
            parser = MultipartParser(
                boundary, collector.callbacks(), max_header_count=MAX_PART_HEADERS
            )
            async for chunk in request.stream():
                if chunk:
                    parser.write(chunk)
            parser.finalize()
        except (MultipartParseError, ValueError) as exc:
            raise APIError(422, "invalid_request", f"malformed multipart body: {exc}") from None
        if not collector.files:
            raise APIError(422, "invalid_request", f"{field_name}: required field is missing")
        yield collector.files
    finally:
        budget.give(collector.taken)
