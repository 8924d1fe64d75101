"""JSON error bodies `{"error", "detail"}`: client mistakes are 4xx, never 500.

This is the one place where the runtime's domain errors (a model that cannot be loaded or
changed, a full server) become status codes.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fisheye.serving import changes
from fisheye.serving.capacity import OverloadedError
from fisheye.serving.changes import ModelChangeError
from fisheye.tracking import loading
from fisheye.tracking.loading import ModelLoadError

log = logging.getLogger(__name__)
RETRY = {"Retry-After": "1"}
# The status of each kind of ModelLoadError and ModelChangeError.
STATUS = {
    loading.REGISTRY_UNAVAILABLE: 503,
    loading.NOT_PINNED: 422,
    loading.INVALID: 422,
    loading.BACKEND_UNAVAILABLE: 422,
    changes.CHANGE_IN_PROGRESS: 409,
    changes.NO_CHALLENGER: 404,
    changes.NOTHING_TO_ROLL_BACK: 409,
    changes.WARMUP_FAILED: 500,
}


class APIError(StarletteHTTPException):
    """An error with a status code, a short machine-readable code and a human message.

    It is an HTTPException so that FastAPI passes it through unchanged when it is raised
    while the body is read (a body over its limit), instead of turning it into a 400.
    """

    def __init__(
        self, status: int, error: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, detail, headers)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


def api_error(exc: ModelLoadError | ModelChangeError | OverloadedError) -> APIError:
    """The HTTP error of a domain error."""
    if isinstance(exc, OverloadedError):
        return APIError(503, "overloaded", str(exc), RETRY)
    return APIError(STATUS[exc.kind], exc.kind, exc.detail)


def error_response(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON error response."""
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _slug(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "request"
        msg = err.get("msg", "invalid value")
        if err.get("type") == "missing":
            msg = "required field is missing"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts) or "the request is invalid"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc.status, exc.error, exc.detail, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 413:
        detail = f"{detail}: the request body is over the size limit"
    return error_response(exc.status_code, _slug(exc.status_code), detail, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = _describe_validation(list(exc.errors()))
    return error_response(422, "invalid_request", detail)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ModelLoadError | ModelChangeError | OverloadedError)
    err = api_error(exc)
    return error_response(err.status, err.error, err.detail, err.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "the server failed; this is a bug, not your fault")


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on an app."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for domain in (ModelLoadError, ModelChangeError, OverloadedError):
        app.add_exception_handler(domain, _domain_error)
    app.add_exception_handler(Exception, _unexpected)
