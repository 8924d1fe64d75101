"""ASGI middleware for the whole server: limits, security headers, HEAD, metrics."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fisheye.serving.auth import presented_secret
from fisheye.serving.errors import error_response
from fisheye.serving.metrics import START_KEY, Metrics
from fisheye.serving.rate_limit import Credentials, RateLimiter
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


@dataclass(frozen=True)
class Client:
    """Who sent a request, for the rate limits: never the secret it presented."""

    address: str
    identity: str | None  # the name of the credential it presented, when that verifies
    presented: bool  # whether it presented a token or key at all


class ServingMiddleware:
    """Everything the server does around each HTTP request, in one ASGI layer.

    - limits: 431 for headers over `max_header_bytes`, 503 past `max_concurrent_requests`
      (probes and scrapes exempt), 429 past a client's rate limit on /v1 (when set) or for
      credentials that do not verify from an address with too many failed ones, 408
      when a request is not answered within `request_timeout_s`;
    - security headers on every response, and no `server` banner;
    - HEAD on any GET route: the GET's status and headers, without the body;
    - metrics: requests and latency by route template, method and status; in-flight count.
    One layer (one wrapper of `send`) instead of four keeps the per-request cost down.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: ServeSettings,
        metrics: Metrics,
        api_docs_path: str = "/docs",
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.api_docs_path = api_docs_path
        self.in_flight = 0
        self.limiter = (
            RateLimiter(
                settings.rate_limit_per_s, settings.rate_limit_burst, settings.rate_limit_clients
            )
            if settings.rate_limit_per_s > 0
            else None
        )
        # Failed authentications per client address (brute force, made-up credentials).
        self.auth_failures = (
            RateLimiter(
                settings.auth_failures_per_minute / 60.0,
                settings.auth_failure_burst,
                settings.rate_limit_clients,
            )
            if settings.auth_failures_per_minute > 0
            else None
        )
        self.credentials = Credentials(
            settings.api_keys, settings.admin_token, settings.feedback_token
        )
        self._csp = (b"content-security-policy", CSP.encode())
        self._csp_docs = (b"content-security-policy", CSP_API_DOCS.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope[START_KEY] = start
        method = scope["method"]
        head = method == "HEAD"
        csp = self._csp_docs if scope["path"] == self.api_docs_path else self._csp
        status = 500
        started = body_sent = False

        async def send_wrapped(message: Message) -> None:
            nonlocal status, started, body_sent
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = [h for h in message.get("headers", []) if h[0] != b"server"]
                message = {**message, "headers": [*headers, *SECURITY_HEADERS, csp]}
            elif message["type"] == "http.response.body" and head:
                if body_sent:
                    return
                body_sent = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        inner = {**scope, "method": "GET"} if head else scope
        client = self._client(scope)
        refused = self._refusal(scope, client)
        limited = scope["path"] not in UNLIMITED_PATHS
        self.metrics.in_flight.inc()
        self.in_flight += limited
        try:
            if refused is not None:
                await refused(scope, receive, send_wrapped)
            else:
                await self._run(inner, receive, send_wrapped, lambda: started)
        finally:
            if status in (401, 403) and client is not None:
                self._failed_auth(client)
            self.in_flight -= limited
            self.metrics.in_flight.dec()
            labels = (route_label(inner), method, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)

    def _client(self, scope: Scope) -> Client | None:
        """Who sends a /v1 request, when a rate limit or the failed-authentication limit is on."""
        if (self.limiter is None and self.auth_failures is None) or not scope["path"].startswith(
            "/v1/"
        ):
            return None
        presented = presented_secret(Headers(scope=scope))
        return Client(
            address=(scope.get("client") or ("unknown",))[0],
            identity=self.credentials.identify(presented),
            presented=presented is not None,
        )

    def _refusal(self, scope: Scope, client: Client | None) -> Response | None:
        """The 431, 503 or 429 for a request refused before it reaches the app, else None."""
        s = self.settings
        header_bytes = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if header_bytes > s.max_header_bytes:
            return error_response(
                431,
                "headers_too_large",
                f"the request headers are {header_bytes:,} bytes; the limit is "
                f"{s.max_header_bytes:,}",
                headers={"Connection": "close"},
            )
        if scope["path"] not in UNLIMITED_PATHS and self.in_flight >= s.max_concurrent_requests:
            return error_response(
                503,
                "overloaded",
                f"the server is handling {self.in_flight} requests; retry shortly",
                headers={"Retry-After": "1"},
            )
        if client is not None:
            return self._too_many_failures(client) or self._rate_limited(client)
        return None

    def _failed_auth(self, client: Client) -> None:
        """Count a refused credential (a 401 or 403 for a token or key that does not verify)
        against the address it came from; a request without one guesses nothing."""
        if self.auth_failures is not None and client.presented and client.identity is None:
            self.auth_failures.take(client.address)

    def _too_many_failures(self, client: Client) -> Response | None:
        """429 for a credential that does not verify, from an address that failed too often."""
        if self.auth_failures is None or client.identity is not None or not client.presented:
            return None
        wait = self.auth_failures.peek(client.address)
        if wait <= 0:
            return None
        self.metrics.rate_limited.inc()
        return error_response(
            429,
            "too_many_auth_failures",
            f"too many failed authentications from this address (the limit is "
            f"{self.settings.auth_failures_per_minute:g} per minute); retry after the "
            "Retry-After seconds with a valid token or key",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )

    def _rate_limited(self, client: Client) -> Response | None:
        """429 when the client (its verified credential, else its address) is over its rate."""
        if self.limiter is None:
            return None
        key = f"id:{client.identity}" if client.identity else f"ip:{client.address}"
        wait = self.limiter.take(key)
        if wait <= 0:
            return None
        self.metrics.rate_limited.inc()
        return error_response(
            429,
            "rate_limited",
            f"too many requests: the limit is {self.settings.rate_limit_per_s:g} per second "
            f"(bursts of {self.settings.rate_limit_burst}); retry after the Retry-After seconds",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, started: Callable[[], bool]
    ) -> None:
        timeout = self.settings.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self.app(scope, receive, send)
        except TimeoutError:
            log.warning("%s %s timed out after %g s", scope["method"], scope["path"], timeout)
            if not started():
                response = error_response(
                    408,
                    "request_timeout",
                    f"the request was not completed within {timeout:g} s",
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)


def route_label(scope: Scope) -> str:
    """The route template that answered (never the raw path, which would explode labels)."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    return "static" if scope.get("path", "").startswith("/static/") else "unmatched"
