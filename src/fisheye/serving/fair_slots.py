"""Decode slots shared fairly between clients: none may hold more than its share.

`FairSlots` hands out `capacity` slots. Waiting requests queue per client (a client is its
address), and a freed slot goes to the next client in turn that holds fewer than
`per_client` slots, so one client's burst cannot take every slot nor keep the others
waiting behind its whole queue. Event-loop only (no locks).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator


class FairSlots:
    """`capacity` slots, at most `per_client` per client, served round-robin."""

    def __init__(self, capacity: int, per_client: int) -> None:
        self.capacity = capacity
        self.per_client = max(1, per_client)
        self._free = capacity
        self._held: Counter[str] = Counter()
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    def held(self, client: str) -> int:
        """Slots the client holds now."""
        return self._held[client]

    @contextlib.asynccontextmanager
    async def slot(self, client: str) -> AsyncIterator[None]:
        """Hold one slot for the block (waiting for it, in turn with other clients)."""
        await self._acquire(client)
        try:
            yield
        finally:
            self._release(client)

    async def _acquire(self, client: str) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(client, deque()).append(waiter)
        self._dispatch()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(client)  # granted just as it was cancelled
            else:
                self._forget(client, waiter)
            raise

    def _forget(self, client: str, waiter: asyncio.Future[None]) -> None:
        queue = self._waiting.get(client)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                del self._waiting[client]

    def _release(self, client: str) -> None:
        self._free += 1
        self._held[client] -= 1
        if self._held[client] <= 0:
            del self._held[client]
        self._dispatch()

    def _dispatch(self) -> None:
        """Give free slots to waiting clients in turn, each up to its share."""
        while self._free > 0:
            client = next((c for c in self._waiting if self._held[c] < self.per_client), None)
            if client is None:
                return
            queue = self._waiting.pop(client)
            waiter = queue.popleft()
            if queue:
                self._waiting[client] = queue  # back of the line for its next photo
            if waiter.done():
                continue
            self._free -= 1
            self._held[client] += 1
            waiter.set_result(None)
