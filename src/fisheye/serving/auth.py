"""Who may do what: the admin token, the feedback token and the prediction API keys.

Secrets are compared in constant time (`hmac.compare_digest`) and never logged; a refusal
is counted in `fisheye_auth_failures_total` by scope and reason. Routes behind a token use
`authenticated_route`, which checks it before anything reads the body: an anonymous client
gets 401, never a validation error that tells it what the route expects.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import Request, Response
from pydantic import SecretStr
from starlette.datastructures import Headers

from fisheye.serving.errors import APIError
from fisheye.serving.limits import LimitedRoute
from fisheye.serving.metrics import Metrics

log = logging.getLogger(__name__)
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def presented_secret(headers: Headers) -> str | None:
    """The token of `Authorization: Bearer TOKEN`, else of `X-API-Key: TOKEN`."""
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    key = headers.get("x-api-key")
    return (key.strip() or None) if key is not None else None


def matches(given: str, secrets: Sequence[SecretStr]) -> bool:
    """Whether `given` is one of `secrets`, comparing each in constant time."""
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(given.encode(), secret.get_secret_value().encode())
    return found


def check(
    request: Request, secrets: Sequence[SecretStr], scope: str, what: str, metrics: Metrics
) -> None:
    """401 without credentials, 403 with wrong ones (`what` names the credential wanted)."""
    given = presented_secret(request.headers)
    if given is None:
        metrics.auth_failures.labels(scope, "missing").inc()
        raise APIError(
            401,
            "unauthorized",
            f"this endpoint needs {what}: send `Authorization: Bearer <token>`",
            headers=CHALLENGE,
        )
    if not matches(given, secrets):
        metrics.auth_failures.labels(scope, "wrong").inc()
        client = request.client.host if request.client else "unknown"
        log.warning(
            "refused %s %s from %s: wrong %s", request.method, request.url.path, client, what
        )
        raise APIError(403, "forbidden", f"the {what} is not valid")


async def require_admin(request: Request) -> None:
    """The admin token, or 403 when FISHEYE_ADMIN_TOKEN is unset (admin endpoints disabled)."""
    state = request.app.state.serving
    token = state.settings.admin_token
    if token is None or not token.get_secret_value():
        state.metrics.auth_failures.labels("admin", "disabled").inc()
        raise APIError(
            403,
            "admin_disabled",
            "the admin endpoints are disabled: start the server with FISHEYE_ADMIN_TOKEN set "
            "to enable them",
        )
    check(request, [token], "admin", "admin token", state.metrics)


async def require_feedback_token(request: Request) -> None:
    """The feedback token, when FISHEYE_FEEDBACK_TOKEN is set (else anyone may send feedback)."""
    state = request.app.state.serving
    token = state.settings.feedback_token
    if token is not None and token.get_secret_value():
        check(request, [token], "feedback", "feedback token", state.metrics)


def require_api_key(request: Request) -> None:
    """An API key, when FISHEYE_API_KEYS is set (a plain call: the prediction hot path)."""
    state = request.app.state.serving
    keys = state.settings.api_keys
    if keys:
        check(request, keys, "predict", "API key", state.metrics)


def authenticated_route(
    require: Callable[[Request], Awaitable[None]],
) -> type[LimitedRoute]:
    """A `LimitedRoute` class whose routes run `require` first: before the body is read,
    parsed or validated, and before its size and content type are checked."""

    class AuthenticatedRoute(LimitedRoute):
        def get_route_handler(self) -> Callable[[Request], Any]:
            handler = super().get_route_handler()

            async def authenticated(request: Request) -> Response:
                await require(request)
                return await handler(request)

            return authenticated

    return AuthenticatedRoute
