"""Request limits declared next to each route, enforced before a large body is read.

A route states its limits with `@limits(...)`; routers use `LimitedRoute`, which checks them
for that route alone. A route that declares nothing accepts a small body (`DEFAULT_BODY`),
so a new endpoint is safe by default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Message

from fisheye.serving.errors import APIError
from fisheye.serving.settings import ServeSettings

DEFAULT_BODY = 64 * 1024  # JSON bodies and forms without files
MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries around the photo bytes
_ATTR = "__fisheye_limits__"


@dataclass(frozen=True)
class RouteLimits:
    """What one route accepts: a body size (from the settings) and its content types."""

    body_bytes: Callable[[ServeSettings], int] = lambda _: DEFAULT_BODY
    content_types: tuple[str, ...] = ()


def limits(
    *,
    body_bytes: Callable[[ServeSettings], int] | None = None,
    content_types: tuple[str, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a route's body limit (bytes, from the settings) and accepted content types."""
    declared = RouteLimits(body_bytes or RouteLimits.body_bytes, content_types)

    def mark(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        setattr(endpoint, _ATTR, declared)
        return endpoint

    return mark


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


class LimitedRoute(APIRoute):
    """An APIRoute that enforces its endpoint's `RouteLimits` (413 / 415 as JSON errors).

    A declared Content-Length over the limit is refused before any of the body is read; a
    body without one (chunked) is counted as it streams and stopped at the limit.
    """

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()
        declared: RouteLimits = getattr(self.endpoint, _ATTR, RouteLimits())

        async def limited(request: Request) -> Response:
            settings: ServeSettings = request.app.state.serving.settings
            limit = declared.body_bytes(settings)
            content_type = request.headers.get("content-type")
            if (
                declared.content_types
                and content_type is not None
                and _media_type(content_type) not in declared.content_types
            ):
                raise APIError(
                    415,
                    "unsupported_media_type",
                    f"this endpoint takes {' or '.join(declared.content_types)}, "
                    f"not {_media_type(content_type)}",
                )
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise APIError(
                    413,
                    "request_too_large",
                    f"the request body is {int(length):,} bytes; the limit is {limit:,}",
                    headers={"Connection": "close"},
                )
            received = 0
            receive = request.receive

            async def counted() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise APIError(
                            413,
                            "request_too_large",
                            f"the request body is over the {limit:,} byte limit",
                            headers={"Connection": "close"},
                        )
                return message

            return await handler(Request(request.scope, counted, request._send))

        return limited
