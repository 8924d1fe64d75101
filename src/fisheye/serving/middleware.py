"""ASGI middleware for the whole server: request limits, security headers, HEAD requests."""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fisheye.serving.errors import error_response
from fisheye.serving.settings import ServeSettings

log = logging.getLogger(__name__)

# Probes and scrapes must answer even when the server is saturated.
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# The web page and the API docs load only their own files; nothing may frame them.
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# Swagger UI sets inline styles.
CSP_API_DOCS = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class ServerLimitsMiddleware:
    """431 for oversized headers, 503 past the concurrency limit, 408 for slow requests."""

    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        s = self.settings
        header_bytes = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if header_bytes > s.max_header_bytes:
            response = error_response(
                431,
                "headers_too_large",
                f"the request headers are {header_bytes:,} bytes; the limit is "
                f"{s.max_header_bytes:,}",
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        limited = scope["path"] not in UNLIMITED_PATHS
        if limited and self.in_flight >= s.max_concurrent_requests:
            response = error_response(
                503,
                "overloaded",
                f"the server is handling {self.in_flight} requests; retry shortly",
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        started = False

        async def send_started(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        self.in_flight += limited
        try:
            async with asyncio.timeout(s.request_timeout_s):
                await self.app(scope, receive, send_started)
        except TimeoutError:
            log.warning(
                "%s %s timed out after %g s", scope["method"], scope["path"], s.request_timeout_s
            )
            if not started:
                response = error_response(
                    408,
                    "request_timeout",
                    f"the request was not completed within {s.request_timeout_s:g} s",
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
        finally:
            self.in_flight -= limited


class SecurityHeadersMiddleware:
    """Security headers on every response; no `server` banner (set in uvicorn)."""

    def __init__(self, app: ASGIApp, api_docs_path: str = "/docs") -> None:
        self.app = app
        self.api_docs_path = api_docs_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = CSP_API_DOCS if scope["path"] == self.api_docs_path else CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"server"]
                headers += [*SECURITY_HEADERS, (b"content-security-policy", csp.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HeadMiddleware:
    """HEAD on any GET route: the GET response's status and headers, without the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        body_sent = False

        async def send_headers_only(message: Message) -> None:
            nonlocal body_sent
            if message["type"] == "http.response.body":
                if body_sent:
                    return
                body_sent = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)
