"""Request body limits, enforced before a large body is read into the server."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fisheye.serving.errors import error_response


class BodyTooLargeError(HTTPException):
    """Raised from `receive` when a streamed body passes its limit (FastAPI re-raises it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the {limit:,} byte limit")


class BodyLimitMiddleware:
    """413 with a JSON body for requests over a per-path byte limit.

    A declared Content-Length over the limit is refused before any of the body is read; a
    body without one (chunked) is counted as it streams and stopped at the limit.
    """

    def __init__(self, app: ASGIApp, limits: dict[str, int], default: int) -> None:
        self.app = app
        self.limits = limits
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = error_response(
                413,
                "request_too_large",
                f"the request body is {int(declared):,} bytes; the limit is {limit:,}",
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
            return message

        await self.app(scope, limited_receive, send)
