"""Results computed once for identical requests: the cost of a read route under scrapers.

A read that costs milliseconds (a Prometheus scrape, a summary of the prediction log) is
free to ask for and was computed once per request, on the event loop or in the thread pool,
so 64 clients asking at once slowed every prediction. `SharedResults` computes a key's
value in a worker thread, at most `max_running` keys at once; concurrent requests for a key
share the computation under way, and a result is reused for `ttl_s` seconds (0: only by
requests that arrive while it is being computed).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedResults(Generic[K, V]):
    """`compute(key)`, run in a thread, shared by concurrent callers and kept `ttl_s`."""

    def __init__(
        self,
        compute: Callable[[K], V],
        *,
        ttl_s: float = 0.0,
        max_running: int = 1,
        max_kept: int = 64,
    ) -> None:
        self.compute = compute
        self.ttl_s = ttl_s
        self.max_kept = max_kept
        self.max_running = max_running
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(max_running)
        self._running: dict[K, asyncio.Future[V]] = {}
        self._kept: OrderedDict[K, tuple[float, V]] = OrderedDict()

    async def get(self, key: K) -> V:
        """The value of `key`: a recent one, the one being computed, or a new one."""
        kept = self._kept.get(key)
        if kept is not None and time.monotonic() - kept[0] < self.ttl_s:
            return kept[1]
        self._bind()
        future = self._running.get(key)
        if future is None:
            future = asyncio.ensure_future(self._compute(key))
            self._running[key] = future
            future.add_done_callback(lambda done: self._finished(key, done))
        # A caller that gives up (timeout, disconnect) leaves the computation to the others.
        return await asyncio.shield(future)

    def _bind(self) -> None:
        """Start afresh on another event loop (a test client may run one per request)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._slots = asyncio.Semaphore(self.max_running)
            self._running = {}

    def _finished(self, key: K, done: asyncio.Future[V]) -> None:
        if self._running.get(key) is done:
            del self._running[key]
        if not done.cancelled():
            done.exception()  # retrieved: every caller may have given up already

    async def _compute(self, key: K) -> V:
        async with self._slots:
            value = await asyncio.to_thread(self.compute, key)
        if self.ttl_s > 0:
            self._kept[key] = (time.monotonic(), value)
            self._kept.move_to_end(key)
            while len(self._kept) > self.max_kept:
                self._kept.popitem(last=False)
        return value
