"""The server's decode pool: a fixed number of photos decode at once, in their own threads.

Decoding is the step whose cost an upload controls, so it is bounded: at most `workers`
photos decode at the same time (each within `fisheye.data.images`' memory budget), at most
`max_waiting` more wait for a slot, and beyond that requests are refused at once (503). The pool is
separate from the thread pool that serves monitoring queries, so one cannot starve the
other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from fisheye.serving.capacity import OverloadedError

T = TypeVar("T")


class DecodePool:
    """Runs decode jobs on `workers` threads with back-pressure."""

    def __init__(
        self, workers: int, max_waiting: int, on_idle: Callable[[], None] | None = None
    ) -> None:
        self.workers = workers
        self.max_waiting = max_waiting
        self.on_idle = on_idle  # run on a decode thread when the last pending job is done
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="fisheye-decode")
        self._pending = 0  # running + waiting; only touched from the event loop

    @property
    def pending(self) -> int:
        """Photos decoding or waiting to decode now."""
        return self._pending

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on a decode thread; OverloadedError when too many photos wait already."""
        if self._pending >= self.workers + self.max_waiting:
            raise OverloadedError(
                f"{self._pending} photos are already being decoded or waiting; retry shortly"
            )
        self._pending += 1
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        finally:
            self._pending -= 1
            if self._pending == 0 and self.on_idle is not None:
                with contextlib.suppress(RuntimeError):  # the pool is shutting down
                    self._executor.submit(self.on_idle)

    def close(self) -> None:
        """Stop the threads once the running decodes finish; drop what is still waiting."""
        self._executor.shutdown(wait=False, cancel_futures=True)
