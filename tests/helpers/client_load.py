"""Client load for the fleet tests and benchmarks: threads posting photos through one URL.

Each client is a thread with its own httpx client (keep-alive to the balancer) that posts
one photo after another until the load stops and records every request: when it was sent,
the status code or the connection error, the prediction's id, the replica that made it (the
balancer's `X-FishEye-Replica` header, when it adds one) and the photo's true class.
`load_photos` reads real validation photos for the benchmarks.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers.fleet import SERVED_BY
from tests.helpers.paths import VAL

CLIENT_TIMEOUT_S = 60.0  # above the balancer's 35 s: its own answer always arrives first


@dataclass(frozen=True)
class Photo:
    label: str
    name: str
    data: bytes


@dataclass(frozen=True)
class Request:
    """One request as its client saw it. `status` is None after a connection error."""

    sent: float  # seconds since the load started
    took: float
    status: int | None
    error: str | None
    id: str | None
    replica: str | None
    label: str


def load_photos(limit: int = 256, seed: int = 0, folder: Path = VAL) -> list[Photo]:
    """Up to `limit` validation photos drawn at random (seeded), read into memory.

    A random sample keeps the class mix of the set, so the replicas' drift monitors see no
    drift from the benchmark itself."""
    paths = sorted(folder.glob("*/*.jpg"))
    if not paths:
        raise SystemExit(f"no photos under {folder} (the real photos live in ../shared/data)")
    chosen = random.Random(seed).sample(paths, min(limit, len(paths)))
    return [Photo(p.parent.name, p.name, p.read_bytes()) for p in chosen]


class ClientLoad:
    """`clients` threads posting `photos` to `url`/v1/predict until `stop()` or `seconds`
    (a test's safety net)."""

    def __init__(self, url: str, photos: list[Photo], clients: int, seconds: float) -> None:
        self.url = url
        self.photos = photos
        self.clients = clients
        self.seconds = seconds
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = 0.0
        self.ended = 0.0

    def start(self) -> ClientLoad:
        """Start the client threads; returns self."""
        self.started = time.monotonic()
        for k in range(self.clients):
            thread = threading.Thread(target=self._client, args=(k,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def elapsed(self) -> float:
        """Seconds since the load started."""
        return time.monotonic() - self.started

    def join(self) -> list[Request]:
        """Wait for the run's end and for every client's last answer; every request."""
        for thread in self._threads:
            thread.join()
        self.ended = time.monotonic()
        return sorted(self.requests, key=lambda r: r.sent)

    def stop(self) -> None:
        """End the run early (each client finishes its request in flight)."""
        self._stop.set()

    def answered(self, replica: str | None = None) -> list[Request]:
        """The 200 answers so far (of `replica`, or all), in the order they came."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.status == 200 and (replica is None or r.replica == replica)
            ]

    def _client(self, k: int) -> None:
        rng = random.Random(k)
        deadline = self.started + self.seconds
        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT_S) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                photo = rng.choice(self.photos)
                kind = "image/png" if photo.data.startswith(b"\x89PNG") else "image/jpeg"
                sent = time.monotonic()
                status = error = pid = replica = None
                try:
                    res = client.post("/v1/predict", files={"file": (photo.name, photo.data, kind)})
                    status, replica = res.status_code, res.headers.get(SERVED_BY)
                    if status == 200:
                        pid = res.json()["id"]
                except httpx.TransportError as exc:
                    error = type(exc).__name__
                done = time.monotonic()
                with self._lock:
                    self.requests.append(
                        Request(
                            sent - self.started,
                            done - sent,
                            status,
                            error,
                            pid,
                            replica,
                            photo.label,
                        )
                    )
                if error:  # a connection refused comes back at once: do not spin
                    time.sleep(0.05)


def failures(requests: list[Request]) -> Counter[str]:
    """The requests that did not get a 200 answer, by status code or connection error."""
    return Counter(
        r.error or f"HTTP {r.status}" for r in requests if r.status != 200 or r.error is not None
    )


def rate(requests: list[Request], seconds: float) -> float:
    """200 answers per second over `seconds`."""
    return sum(r.status == 200 for r in requests) / seconds if seconds > 0 else 0.0
