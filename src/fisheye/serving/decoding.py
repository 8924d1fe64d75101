"""The server's decode pool: a fixed number of photos decode at once, in worker processes.

Decoding is the step whose cost an upload controls, so it is bounded:
- at most `workers` photos decode at the same time (each within `fisheye.data.images`'
  memory budget), at most `max_waiting` more wait for a slot, and beyond that requests
  are refused at once (503);
- slots are shared fairly (`FairSlots`): one client (address) holds at most `per_client`
  of them, and waiting clients take turns;
- each photo decodes in a worker process (`decode_worker`) with a CPU-time limit and an
  address-space limit. A decode that passes its CPU limit is ended by the kernel (413); a
  decode whose request goes away (timeout, disconnect) or that is still running when the
  server stops is ended by killing its process. Either way the slot is free at once, and
  a fresh process takes the ended one's place.
The processes start in the background, on the first decode or, with
`start_processes="when_told"`, when the owner calls `start_processes` (the server does once
its first prediction is answered, so that a cold start's first answer has the CPU to
itself). Until one is ready (about a second), photos decode in threads of the server, so
no answer waits for them.
The pool's threads are separate from the thread pool that serves monitoring queries, so
one cannot starve the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np

from fisheye.data.images import DEFAULT_MAX_DECODE_BYTES
from fisheye.serving.capacity import OverloadedError
from fisheye.serving.decode_processes import (
    START_TIMEOUT_S,
    DecodeAbandonedError,
    DecodeProcess,
)
from fisheye.serving.decode_worker import DecodeJob, run_job
from fisheye.serving.fair_slots import FairSlots

if TYPE_CHECKING:
    from fisheye.inference.predictor import PhotoPreparer

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_MAX_CPU_S = 5.0
# What a worker may map beyond what it holds after its imports, per byte of the decode
# budget (the budget is an estimate; Pillow and the codecs allocate a little around it).
ADDRESS_SPACE_PER_BUDGET = 2
ADDRESS_SPACE_SLACK = 256 * 1024 * 1024


class DecodeStoppedError(OverloadedError):
    """The server is stopping and the decode could not finish in time; retry elsewhere."""


class _Running:
    """A decode in a worker process, which another thread may abandon."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.process: DecodeProcess | None = None
        self.abandoned = False

    def attach(self, process: DecodeProcess) -> None:
        with self._lock:
            self.process = process
            abandoned = self.abandoned
        if abandoned:
            process.kill(abandon=True)

    def abandon(self) -> None:
        with self._lock:
            self.abandoned = True
            process = self.process
        if process is not None:
            process.kill(abandon=True)


class DecodePool:
    """Runs decode jobs in `workers` worker processes with back-pressure and fairness."""

    def __init__(
        self,
        workers: int,
        max_waiting: int,
        on_idle: Callable[[], None] | None = None,
        *,
        per_client: int | None = None,
        max_cpu_s: float = DEFAULT_MAX_CPU_S,
        processes: bool = True,
        max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
        start_processes: Literal["first_decode", "when_told"] = "first_decode",
    ) -> None:
        self.workers = workers
        self.max_waiting = max_waiting
        self.on_idle = on_idle  # run on a decode thread when the last pending job is done
        self.max_cpu_s = max_cpu_s
        self.slots = FairSlots(workers, per_client or max(1, workers - 1))
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="fisheye-decode")
        self._pending = 0  # running + waiting; only touched from the event loop
        self._use_processes = processes
        self._start_on_first_decode = start_processes == "first_decode"
        self._address_space = ADDRESS_SPACE_PER_BUDGET * max_decode_bytes + ADDRESS_SPACE_SLACK
        self._idle: queue.SimpleQueue[DecodeProcess] = queue.SimpleQueue()
        self._started = threading.Event()  # the first process is ready
        self._starting = False
        self._all = set[DecodeProcess]()  # every live process, for close
        self._all_lock = threading.Lock()
        self._running = set[_Running]()
        self._stop_at: float | None = None  # monotonic deadline once the server stops
        self._closed = False

    @property
    def pending(self) -> int:
        """Photos decoding or waiting to decode now."""
        return self._pending

    @property
    def processes_ready(self) -> bool:
        """Whether photos decode in worker processes (not yet: in threads)."""
        return self._started.is_set()

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            raise DecodeStoppedError("the server is stopping; retry shortly")
        if self._pending >= self.workers + self.max_waiting:
            raise OverloadedError(
                f"{self._pending} photos are already being decoded or waiting; retry shortly"
            )
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1
            if self._pending == 0 and self.on_idle is not None:
                with contextlib.suppress(RuntimeError):  # the pool is shutting down
                    self._executor.submit(self.on_idle)

    async def run(self, fn: Callable[..., T], *args: object, client: str = "") -> T:
        """`fn(*args)` on a decode thread (in this process; for work that is not a photo's
        decode by a bundle's preparer); OverloadedError when too many photos wait."""
        with self._admitted():
            async with self.slots.slot(client):
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, fn, *args)

    async def prepare(self, preparer: PhotoPreparer, data: bytes, client: str = "") -> np.ndarray:
        """The photo's (3, H, W) model input, decoded by `preparer`'s rules in a worker
        process (ImageDecodeError, OverloadedError, DecodeStoppedError)."""
        options = preparer.options
        job = DecodeJob(
            preparer.preprocessing, options.max_pixels, options.max_decode_bytes, self.max_cpu_s
        )
        with self._admitted():
            async with self.slots.slot(client):
                if self._stop_at is not None and time.monotonic() >= self._stop_at:
                    raise DecodeStoppedError("the server is stopping; retry shortly")
                loop = asyncio.get_running_loop()
                if self._start_on_first_decode:
                    self.start_processes()
                if not self._started.is_set():  # cold start: the processes are on their way
                    return await loop.run_in_executor(self._executor, run_job, job, data)
                running = _Running()
                self._running.add(running)
                try:
                    return await loop.run_in_executor(
                        self._executor, self._call, running, job, data
                    )
                except asyncio.CancelledError:
                    running.abandon()  # the request went away: free the worker now
                    raise
                except DecodeAbandonedError:
                    raise DecodeStoppedError(
                        "the server is stopping and this photo's decode could not finish "
                        "in time; retry shortly"
                    ) from None
                finally:
                    self._running.discard(running)

    def _call(self, running: _Running, job: DecodeJob, data: bytes) -> np.ndarray:
        """Run the job in an idle worker process (a decode thread)."""
        try:
            process = self._idle.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            raise OverloadedError("no decode worker is available; retry shortly") from None
        running.attach(process)
        try:
            return process.call(job, data)
        finally:
            self._give_back(process)

    def _give_back(self, process: DecodeProcess) -> None:
        if process.alive and not self._closed:
            self._idle.put(process)
            return
        self._retire(process)
        if not self._closed:
            threading.Thread(target=self._spawn, name="fisheye-decode-start", daemon=True).start()

    def _retire(self, process: DecodeProcess) -> None:
        with self._all_lock:
            self._all.discard(process)
        process.close()

    def start_processes(self) -> None:
        """Start the worker processes in the background, once (later calls do nothing).

        They run at the calling thread's priority (a child process inherits it)."""
        if self._starting or not self._use_processes:
            return
        self._starting = True

        def start_all() -> None:
            for _ in range(self.workers):
                if not self._spawn():
                    return

        threading.Thread(target=start_all, name="fisheye-decode-start", daemon=True).start()

    def _spawn(self) -> bool:
        """Start one worker process and make it available; False if it cannot start."""
        try:
            process = DecodeProcess(self._address_space)
        except Exception as exc:  # photos keep decoding in threads
            log.warning("could not start a decode worker process (%s); decoding in threads", exc)
            return False
        with self._all_lock:
            if self._closed:
                process.close()
                return False
            self._all.add(process)
        self._idle.put(process)
        self._started.set()
        return True

    def stop_within(self, grace_s: float) -> None:
        """The server is stopping: decodes still running after `grace_s` are ended and
        their requests answered 503 (call from the event loop)."""
        if self._stop_at is not None:
            return
        self._stop_at = time.monotonic() + grace_s
        asyncio.get_running_loop().call_later(grace_s, self._abandon_all)

    def _abandon_all(self) -> None:
        for running in list(self._running):
            running.abandon()

    def close(self) -> None:
        """End the worker processes and the threads; drop what is still waiting."""
        self._closed = True
        self._abandon_all()
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._all_lock:
            processes, self._all = list(self._all), set()
        for process in processes:
            process.close()
