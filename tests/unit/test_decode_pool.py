"""The server's decode pool: worker processes that a timeout, a CPU limit or a stop can end,
and decode slots shared fairly between clients.

A decode that runs "too long" is made so without depending on the machine's speed: its
worker process is paused (SIGSTOP) while it holds the photo.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fisheye.data.images import ImageTooLargeError, UnsupportedFormatError
from fisheye.data.preprocess import Preprocessing
from fisheye.inference.predictor import PhotoPreparer
from fisheye.serving.decode_processes import DecodeTooCostlyError
from fisheye.serving.decoding import DecodePool, DecodeStoppedError
from fisheye.serving.fair_slots import FairSlots
from tests.helpers.bombs import jpeg_repeated_scans
from tests.helpers.photos import encode, photo

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="worker processes, /proc")
PREPARER = PhotoPreparer(Preprocessing())
DEADLINE_S = 60  # a safety net only: no verdict depends on how fast this machine is


async def _warm_pool(**kwargs) -> DecodePool:
    """A pool whose worker processes are running (the first decode starts them)."""
    pool = DecodePool(2, 8, **kwargs)
    await pool.prepare(PREPARER, encode(photo(0), "JPEG"))
    deadline = time.monotonic() + DEADLINE_S
    while not (pool.processes_ready and pool._idle.qsize() == 2):
        assert time.monotonic() < deadline, "the worker processes did not start"
        await asyncio.sleep(0.02)
    return pool


async def _busy_worker(pool: DecodePool) -> int:
    """The pid of the worker process that holds the one decode in flight, paused."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        running = [r for r in pool._running if r.process is not None]
        if running:
            pid = running[0].process.process.pid
            os.kill(pid, signal.SIGSTOP)
            return pid
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _slow_photo() -> bytes:
    return jpeg_repeated_scans((1200, 900), repeats=20)


def test_a_photo_decodes_in_a_worker_exactly_as_in_process() -> None:
    async def main() -> None:
        pool = await _warm_pool()
        try:
            for seed, fmt in [(1, "JPEG"), (2, "PNG"), (3, "WEBP")]:
                data = encode(photo(seed, (90, 70)), fmt)
                assert np.array_equal(await pool.prepare(PREPARER, data), PREPARER(data))
            # Each worker limits its address space, and its CPU time for each photo.
            for process in list(pool._all):
                limits = Path(f"/proc/{process.process.pid}/limits").read_text().splitlines()
                for name in ("Max address space", "Max cpu time"):
                    line = next(line for line in limits if line.startswith(name))
                    assert line[len(name) :].split()[0] != "unlimited", line
            with pytest.raises(UnsupportedFormatError):
                await pool.prepare(PREPARER, b"GIF89a" + bytes(40))
            with pytest.raises(ImageTooLargeError):
                await pool.prepare(PREPARER, jpeg_repeated_scans((640, 480), repeats=300))
        finally:
            pool.close()

    asyncio.run(main())


def test_before_the_workers_start_the_first_photo_decodes_in_a_thread() -> None:
    async def main() -> None:
        pool = DecodePool(1, 4)
        try:
            data = encode(photo(4), "JPEG")
            assert np.array_equal(await pool.prepare(PREPARER, data), PREPARER(data))
        finally:
            pool.close()

    asyncio.run(main())


def test_a_request_that_goes_away_ends_its_decode_and_frees_the_worker() -> None:
    async def main() -> None:
        pool = await _warm_pool()
        try:
            task = asyncio.create_task(pool.prepare(PREPARER, _slow_photo(), "attacker"))
            pid = await _busy_worker(pool)
            task.cancel()  # what the request timeout (408) or a disconnect does
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.pending == 0 and pool.slots.held("attacker") == 0
            deadline = time.monotonic() + DEADLINE_S
            while not _gone(pid) or pool._idle.qsize() < 2:
                assert time.monotonic() < deadline, "the worker was not ended and replaced"
                await asyncio.sleep(0.02)
            data = encode(photo(5), "JPEG")
            assert np.array_equal(await pool.prepare(PREPARER, data), PREPARER(data))
        finally:
            pool.close()

    asyncio.run(main())


def test_a_decode_past_its_cpu_limit_is_a_413_and_the_worker_is_replaced() -> None:
    async def main() -> None:
        pool = await _warm_pool(max_cpu_s=3)
        try:
            task = asyncio.create_task(pool.prepare(PREPARER, _slow_photo()))
            pid = await _busy_worker(pool)
            # What the kernel sends when RLIMIT_CPU runs out.
            os.kill(pid, signal.SIGXCPU)
            os.kill(pid, signal.SIGCONT)
            with pytest.raises(DecodeTooCostlyError, match="CPU time"):
                await asyncio.wait_for(task, DEADLINE_S)
            data = encode(photo(6), "JPEG")
            assert np.array_equal(await pool.prepare(PREPARER, data), PREPARER(data))
        finally:
            pool.close()

    asyncio.run(main())


def test_a_stopping_server_ends_decodes_that_outlive_the_grace_period() -> None:
    async def main() -> None:
        pool = await _warm_pool()
        try:
            task = asyncio.create_task(pool.prepare(PREPARER, _slow_photo()))
            await _busy_worker(pool)
            pool.stop_within(0.2)
            with pytest.raises(DecodeStoppedError):
                await asyncio.wait_for(task, DEADLINE_S)
            with pytest.raises(DecodeStoppedError):
                await pool.prepare(PREPARER, encode(photo(7), "JPEG"))
        finally:
            pool.close()

    asyncio.run(main())


def test_one_client_never_holds_every_slot_and_clients_take_turns() -> None:
    async def main() -> None:
        slots = FairSlots(capacity=3, per_client=2)
        order: list[str] = []
        release = asyncio.Event()

        async def job(client: str) -> None:
            async with slots.slot(client):
                order.append(client)
                await release.wait()

        tasks = [asyncio.create_task(job("a")) for _ in range(5)]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(job("b")) for _ in range(2)]
        for _ in range(5):
            await asyncio.sleep(0)
        # "a" holds its 2 slots; the third is "b"'s although "a" asked first.
        assert order == ["a", "a", "b"]
        assert slots.held("a") == 2 and slots.held("b") == 1
        release.set()
        await asyncio.gather(*tasks)
        assert sorted(order) == ["a"] * 5 + ["b"] * 2
        assert slots.held("a") == slots.held("b") == 0

    asyncio.run(main())


def test_a_waiting_request_that_is_cancelled_gives_its_turn_away() -> None:
    async def main() -> None:
        slots = FairSlots(capacity=1, per_client=1)
        gate = asyncio.Event()

        async def hold() -> None:
            async with slots.slot("a"):
                await gate.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        waiting = asyncio.create_task(hold())
        await asyncio.sleep(0)
        waiting.cancel()
        gate.set()
        await holder
        with pytest.raises(asyncio.CancelledError):
            await waiting
        async with slots.slot("b"):
            assert slots.held("b") == 1

    asyncio.run(main())
