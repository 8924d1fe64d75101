"""Dynamic micro-batching: concurrent requests share one model call in one worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fisheye.inference.backend import InferenceOutput

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The batcher's bounded queue has no room; the caller should retry later."""


class BatcherStoppedError(RuntimeError):
    """The batcher is not running (not started yet, or shutting down)."""


RunBatch = Callable[[np.ndarray], InferenceOutput]


@dataclass
class _Job:
    inputs: np.ndarray  # (n, C, H, W)
    future: asyncio.Future[InferenceOutput]
    loop: asyncio.AbstractEventLoop
    enqueued: float

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])


def _resolve(
    fut: asyncio.Future, result: InferenceOutput | None, error: BaseException | None
) -> None:
    if fut.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class MicroBatcher:
    """Collects preprocessed photos from many requests and runs them as batches.

    `run_batch` (e.g. `Predictor.infer`) is only ever called from one dedicated thread, so
    the model never runs concurrently with itself and the event loop never waits on it. A
    job of several photos (a batch request) is never split across model calls; each job
    gets its own rows of the batch's `InferenceOutput`. After the first job, the worker
    waits up to `max_wait_ms` for more only while `incoming()` says photos are on their way,
    so a lone request is never delayed.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 16,
        max_wait_ms: float = 2.0,
        max_queue: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
        incoming: Callable[[], int] = lambda: 1,
        workers: int = 1,
    ) -> None:
        self._run_batch = run_batch
        self.workers = workers  # threads running batches; run_batch must be thread-safe if >1
        self.incoming = incoming  # photos about to be submitted (e.g. decoding right now)
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.on_queue = on_queue
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._warmup_error: BaseException | None = None
        self.answered = threading.Event()  # set once a batch past the warm-up is answered

    @property
    def queued(self) -> int:
        """Photos waiting for the model right now."""
        return self._queued

    @property
    def running(self) -> bool:
        """Whether the worker threads are alive and accepting work."""
        return any(t.is_alive() for t in self._threads) and not self._stopping

    def start(self, warmup: list[np.ndarray] | None = None) -> None:
        """Start the worker threads; each runs the `warmup` batches first; wait for them."""
        if self._threads:
            raise RuntimeError("the batcher is already started")
        self._stopping = False
        events = []
        for i in range(self.workers):
            warmed = threading.Event()
            thread = threading.Thread(
                target=self._run,
                args=(warmup or [], warmed),
                name=f"fisheye-batcher-{i}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
            events.append(warmed)
        for warmed in events:
            warmed.wait()
        if self._warmup_error is not None:
            self.stop()
            raise self._warmup_error

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued work, then stop the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    async def submit(self, inputs: np.ndarray) -> InferenceOutput:
        """Queue a (n, C, H, W) batch of photos and wait for its n rows of model output."""
        if inputs.ndim != 4 or inputs.shape[0] == 0:
            raise ValueError(f"expected a non-empty (n, C, H, W) tensor, got {tuple(inputs.shape)}")
        loop = asyncio.get_running_loop()
        job = _Job(inputs, loop.create_future(), loop, time.monotonic())
        with self._cond:
            if not self.running:
                raise BatcherStoppedError("the model worker is not running")
            if self._queued + job.size > self.max_queue:
                raise QueueFullError(
                    f"{self._queued} photos are already waiting (limit {self.max_queue})"
                )
            self._jobs.append(job)
            self._queued += job.size
            self._cond.notify()
        self._report_queue()
        return await job.future

    def _report_queue(self) -> None:
        if self.on_queue is not None:
            self.on_queue(self._queued)

    def _take_batch(self) -> list[_Job] | None:
        """Block until work arrives, then gather jobs until full or max_wait has passed."""
        with self._cond:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cond.wait()
            batch = [self._jobs.popleft()]
            n = batch[0].size
            deadline = time.monotonic() + self.max_wait
            while n < self.max_batch_size:
                if self._jobs:
                    if n + self._jobs[0].size > self.max_batch_size:
                        break
                    job = self._jobs.popleft()
                    batch.append(job)
                    n += job.size
                    continue
                remaining = deadline - time.monotonic()
                # Wait only for photos that are on their way (being decoded now): with none
                # coming, waiting would only add latency.
                if remaining <= 0 or self._stopping or self.incoming() <= 0:
                    break
                self._cond.wait(remaining)
            self._queued -= n
        self._report_queue()
        return batch

    def _run(self, warmup: list[np.ndarray], warmed: threading.Event) -> None:
        try:
            for inputs in warmup:  # first calls pay for lazy initialisation; do them here
                self._run_batch(inputs)
        except Exception as exc:
            self._warmup_error = exc
        finally:
            warmed.set()
        if self._warmup_error is not None:
            return
        log.debug(
            "batcher started (max batch %d, wait %.1f ms)", self.max_batch_size, self.max_wait * 1e3
        )
        while (batch := self._take_batch()) is not None:
            sizes = [job.size for job in batch]
            start = time.perf_counter()
            try:
                inputs = (
                    batch[0].inputs
                    if len(batch) == 1
                    else np.concatenate([j.inputs for j in batch])
                )
                output: InferenceOutput | None = self._run_batch(inputs)
                error: BaseException | None = None
            except Exception as exc:  # one bad batch must not kill the worker
                log.exception("model call failed for a batch of %d photos", sum(sizes))
                output, error = None, exc
            elapsed = time.perf_counter() - start
            if self.on_batch is not None:
                self.on_batch(sum(sizes), elapsed)
            offset = 0
            for job, size in zip(batch, sizes, strict=True):
                part = None if output is None else output.rows(offset, offset + size)
                offset += size
                # RuntimeError: the event loop has closed (the server is shutting down).
                with contextlib.suppress(RuntimeError):
                    job.loop.call_soon_threadsafe(_resolve, job.future, part, error)
            if not self.answered.is_set():
                # Set by the event loop once the requests' tasks have resumed (their
                # answers are being sent), not here, a step earlier.
                loop = batch[0].loop
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(loop.call_soon, self.answered.set)
        log.debug("batcher stopped")
