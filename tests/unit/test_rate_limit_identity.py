"""Rate limits keyed on who a client is, not on what it presents: made-up tokens and API keys
fall into their address's bucket, failed authentications are counted against the address,
and the limiter never keeps a presented secret."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from fisheye.serving.app import create_app
from fisheye.serving.metrics import Metrics
from fisheye.serving.middleware import ServingMiddleware
from fisheye.serving.rate_limit import Credentials, RateLimiter
from fisheye.serving.settings import ServeSettings
from tests.helpers.photos import encode, photo

KEY = "key-right-6d2a"
ADMIN = "admin-right-91be"
PNG = encode(photo(1), "PNG")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _api_key(token: str) -> dict[str, str]:
    return {"X-API-Key": token}


@pytest.fixture
def serve(tmp_path: Path, tiny_bundle: Path):
    """Start an app on the tiny bundle with extra settings; yields a ready TestClient."""
    clients: list[TestClient] = []

    def start(**settings) -> TestClient:
        s = ServeSettings(
            model=tiny_bundle,
            threads=1,
            model_workers=1,
            prediction_db=tmp_path / "log.db",
            **settings,
        )
        client = TestClient(create_app(s))
        client.__enter__()
        clients.append(client)
        state = client.app.state.serving  # type: ignore[attr-defined]
        state.wait_loaded(60)
        assert state.ready, state.load_error
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def _predict(client: TestClient, headers: dict[str, str]) -> int:
    return client.post("/v1/predict", files={"file": ("a.png", PNG)}, headers=headers).status_code


@pytest.mark.parametrize("header", [_bearer, _api_key], ids=["bearer", "x-api-key"])
def test_a_made_up_token_per_request_shares_the_address_bucket(serve, header) -> None:
    client = serve(api_keys=KEY, rate_limit_per_s=0.01, rate_limit_burst=2)
    codes = [_predict(client, header(f"made-up-{i}")) for i in range(12)]
    assert codes[:2] == [403, 403]  # the burst: refused by authentication, not served
    assert set(codes[2:]) == {429}
    # A valid key has its own bucket: the address's empty bucket does not hold it back.
    assert _predict(client, header(KEY)) == 200
    assert _predict(client, header(KEY)) == 200
    assert _predict(client, header(KEY)) == 429  # ...and its own limit


def test_rotating_fake_tokens_without_any_keys_configured_are_limited(serve) -> None:
    """With open prediction routes, a token that verifies nothing counts as the address."""
    client = serve(rate_limit_per_s=0.01, rate_limit_burst=3)
    codes = [_predict(client, _bearer(f"fake-{i}")) for i in range(10)]
    assert codes.count(200) == 3 and codes.count(429) == 7


def test_failed_authentications_are_throttled_per_address(serve) -> None:
    """No rate limit set: wrong keys still end in 429 once the address failed too often."""
    client = serve(
        api_keys=KEY, admin_token=ADMIN, auth_failure_burst=3, auth_failures_per_minute=0.001
    )
    guesses = itertools.cycle([_bearer, _api_key])
    codes = [_predict(client, next(guesses)(f"guess-{i}")) for i in range(8)]
    assert codes[:3] == [403, 403, 403]
    assert set(codes[3:]) == {429}
    res = client.post("/v1/admin/reload", headers=_bearer("guess-admin"))
    assert res.status_code == 429 and res.json()["error"] == "too_many_auth_failures"
    assert int(res.headers["retry-after"]) >= 1
    # The right key is served; without credentials the route answers as before (401).
    assert _predict(client, _api_key(KEY)) == 200
    assert _predict(client, {}) == 401
    assert client.get("/v1/admin/status", headers=_bearer(ADMIN)).status_code == 200


def test_a_valid_credential_never_counts_as_a_failure(serve) -> None:
    """An API key sent to an admin route is refused (403), but it is a known client."""
    client = serve(
        api_keys=KEY, admin_token=ADMIN, auth_failure_burst=2, auth_failures_per_minute=0.001
    )
    for _ in range(6):
        assert client.post("/v1/admin/reload", headers=_api_key(KEY)).status_code == 403
    assert _predict(client, _bearer("guess")) == 403  # the address has failed nothing yet


def _middleware(**settings) -> ServingMiddleware:
    async def app(scope, receive, send) -> None:
        ok = dict(scope["headers"]).get(b"authorization") == f"Bearer {KEY}".encode()
        await send({"type": "http.response.start", "status": 200 if ok else 403, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    s = ServeSettings(model=Path("unused"), api_keys=KEY, **settings)
    return ServingMiddleware(app, s, Metrics())


async def _call(middleware: ServingMiddleware, token: str, address: str) -> int:
    status = 0

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/model",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "client": (address, 1234),
    }
    await middleware(scope, receive, send)
    return status


def test_the_limiters_never_keep_presented_secrets() -> None:
    """10,000 distinct 15 KB tokens from two addresses: two buckets, and no token in them."""
    middleware = _middleware(rate_limit_per_s=1000.0, rate_limit_burst=100_000)

    async def flood() -> None:
        for i in range(10_000):
            await _call(middleware, f"{i:05d}" + "x" * 15_000, f"10.0.0.{i % 2}")
        await _call(middleware, KEY, "10.0.0.1")

    asyncio.run(flood())
    for limiter in (middleware.limiter, middleware.auth_failures):
        assert limiter is not None
        keys = set(limiter._buckets)  # noqa: SLF001 (what the limiter keeps is the point)
        assert all(len(k) < 64 and "xxxx" not in k for k in keys), keys
    assert set(middleware.limiter._buckets) == {"ip:10.0.0.0", "ip:10.0.0.1", "id:api-key-1"}  # noqa: SLF001
    assert set(middleware.auth_failures._buckets) == {"10.0.0.0", "10.0.0.1"}  # noqa: SLF001


def test_failures_from_one_address_do_not_throttle_another() -> None:
    middleware = _middleware(auth_failure_burst=2, auth_failures_per_minute=0.001)

    async def run() -> list[int]:
        a = [await _call(middleware, f"bad-{i}", "10.0.0.1") for i in range(4)]
        b = [await _call(middleware, "bad", "10.0.0.2"), await _call(middleware, KEY, "10.0.0.1")]
        return a + b

    assert asyncio.run(run()) == [403, 403, 429, 429, 403, 200]


def test_credentials_name_the_secret_that_matches() -> None:
    creds = Credentials([SecretStr("a"), SecretStr("b")], SecretStr("adm"), None)
    assert creds.identify("b") == "api-key-2"
    assert creds.identify("adm") == "admin"
    assert creds.identify("c") is None and creds.identify(None) is None
    assert Credentials().identify("") is None


def test_peek_takes_nothing() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.peek("a", now=0.0) == 0.0
    assert limiter.take("a", now=0.0) == 0.0
    assert limiter.peek("a", now=0.5) == pytest.approx(0.5)
    assert limiter.peek("a", now=0.5) == pytest.approx(0.5)
    assert limiter.take("a", now=1.0) == 0.0
