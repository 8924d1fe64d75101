"""Rate limits per client: a token bucket per verified identity or client address, and a
bucket of failed authentications per client address.

A client is the name of the credential it presents when that credential verifies (an API key
by its position, the admin or the feedback token), else its address: a made-up token or key
changes nothing, and the presented secret itself is never kept.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Sequence

from pydantic import SecretStr


class RateLimiter:
    """Token buckets keyed by client; used from the event loop only (no locking).

    At most `max_clients` buckets are kept, the least recently seen dropped first (a
    dropped client starts again with a full bucket, which errs on the side of serving).
    """

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("the rate must be positive and the burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, client: str, now: float) -> float:
        tokens, last = self._buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def take(self, client: str, now: float | None = None) -> float:
        """Take one token: 0.0 when the request may go ahead, else the seconds to wait."""
        now = time.monotonic() if now is None else now
        tokens = self._tokens(client, now)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets.pop(client, None)
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    def peek(self, client: str, now: float | None = None) -> float:
        """The seconds until `client` has a token again (0.0: it has one); takes nothing."""
        now = time.monotonic() if now is None else now
        tokens = self._tokens(client, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)


class Credentials:
    """The server's secrets by name, to tell which one a request presents (if any)."""

    def __init__(
        self,
        api_keys: Sequence[SecretStr] = (),
        admin_token: SecretStr | None = None,
        feedback_token: SecretStr | None = None,
    ) -> None:
        named = [(f"api-key-{i}", key) for i, key in enumerate(api_keys, 1)]
        named += [("admin", admin_token), ("feedback", feedback_token)]
        self._secrets = [
            (name, secret.get_secret_value().encode())
            for name, secret in named
            if secret is not None and secret.get_secret_value()
        ]

    def identify(self, presented: str | None) -> str | None:
        """The name of the secret `presented` is, or None (compares with every secret in
        constant time, so the answer's timing tells nothing about which one matched)."""
        if presented is None:
            return None
        given = presented.encode()
        found = None
        for name, secret in self._secrets:
            if hmac.compare_digest(given, secret) and found is None:
                found = name
        return found
