"""The pieces of access control: reading credentials, comparing them, the token bucket."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from starlette.datastructures import Headers

from fisheye.serving.auth import matches, presented_secret
from fisheye.serving.rate_limit import RateLimiter
from fisheye.serving.settings import ServeSettings


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"authorization": "Bearer abc"}, "abc"),
        ({"authorization": "bearer  abc "}, "abc"),
        ({"authorization": "Basic abc"}, None),
        ({"authorization": "Bearer "}, None),
        ({"x-api-key": "k"}, "k"),
        ({"x-api-key": " "}, None),
        ({}, None),
    ],
)
def test_presented_secret(headers: dict[str, str], expected: str | None) -> None:
    assert presented_secret(Headers(headers)) == expected


def test_matches_any_of_the_secrets_and_nothing_else() -> None:
    keys = [SecretStr("alpha"), SecretStr("beta")]
    assert matches("beta", keys) and matches("alpha", keys)
    assert not matches("alph", keys) and not matches("alphaa", keys) and not matches("", keys)
    assert not matches("alpha", [])


def test_api_keys_come_comma_separated_and_stay_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FISHEYE_API_KEYS", "one, two,,three ")
    monkeypatch.setenv("FISHEYE_ADMIN_TOKEN", "s3cr3t-x")
    s = ServeSettings()
    assert [k.get_secret_value() for k in s.api_keys] == ["one", "two", "three"]
    assert "s3cr3t-x" not in repr(s) and "three" not in repr(s)


def test_the_token_bucket_allows_bursts_then_the_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", now=0.0) == pytest.approx(0.5)  # empty: one token in 0.5 s
    assert limiter.take("a", now=0.5) == pytest.approx(0.0, abs=1e-9)
    assert limiter.take("b", now=0.5) == 0.0  # each client has its own bucket
    assert limiter.take("a", now=10.0) == 0.0  # refilled, but never beyond the burst
    assert [limiter.take("a", now=10.0) for _ in range(3)][-1] > 0


def test_the_token_bucket_forgets_the_least_recent_clients() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=2)
    for client in ("a", "b", "c"):
        limiter.take(client, now=0.0)
    assert len(limiter) == 2
    assert limiter.take("a", now=0.0) == 0.0  # forgotten: a full bucket again
    assert limiter.take("c", now=0.0) > 0
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)
