"""SharedResults: one computation for concurrent identical requests, reused for its TTL."""

from __future__ import annotations

import asyncio
import threading

import pytest

from fisheye.serving.shared_results import SharedResults


class Gate:
    """A computation that counts its calls and waits until released (from the test)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = threading.Event()

    def __call__(self, key: str) -> str:
        self.calls.append(key)
        assert self.release.wait(30), "the test never released the computation"
        return f"value of {key}"


async def _until(predicate) -> None:
    for _ in range(3000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_concurrent_requests_for_one_key_share_one_computation() -> None:
    async def main() -> None:
        gate = Gate()
        shared = SharedResults(gate)
        waiting = [asyncio.ensure_future(shared.get("24h")) for _ in range(40)]
        other = asyncio.ensure_future(shared.get("1h"))
        await _until(lambda: len(gate.calls) == 1)
        gate.release.set()
        assert set(await asyncio.gather(*waiting)) == {"value of 24h"}
        assert await other == "value of 1h"
        assert sorted(gate.calls) == ["1h", "24h"]
        # Without a TTL the next request computes afresh.
        assert await shared.get("24h") == "value of 24h"
        assert gate.calls.count("24h") == 2

    asyncio.run(main())


def test_at_most_max_running_keys_are_computed_at_once() -> None:
    async def main() -> None:
        gate = Gate()
        shared = SharedResults(gate, max_running=2)
        tasks = [asyncio.ensure_future(shared.get(f"{n}m")) for n in range(6)]
        await _until(lambda: len(gate.calls) == 2)
        await asyncio.sleep(0.2)
        assert len(gate.calls) == 2
        gate.release.set()
        assert len(await asyncio.gather(*tasks)) == 6
        assert len(gate.calls) == 6

    asyncio.run(main())


def test_a_result_is_reused_within_its_ttl_and_errors_are_not_kept() -> None:
    calls = []

    def compute(key: int) -> int:
        calls.append(key)
        if key < 0:
            raise ValueError("negative")
        return key * 2

    async def main() -> None:
        shared = SharedResults(compute, ttl_s=60)
        assert [await shared.get(3) for _ in range(5)] == [6] * 5
        assert calls == [3]
        for _ in range(2):
            with pytest.raises(ValueError, match="negative"):
                await shared.get(-1)
        assert calls == [3, -1, -1]

    asyncio.run(main())


def test_a_caller_that_gives_up_does_not_cancel_the_others() -> None:
    async def main() -> None:
        gate = Gate()
        shared = SharedResults(gate)
        impatient = asyncio.ensure_future(shared.get("k"))
        patient = asyncio.ensure_future(shared.get("k"))
        await _until(lambda: gate.calls)
        impatient.cancel()
        gate.release.set()
        assert await patient == "value of k"
        assert impatient.cancelled()

    asyncio.run(main())


def test_kept_results_are_bounded() -> None:
    async def main() -> None:
        shared = SharedResults(lambda k: k, ttl_s=60, max_kept=3)
        for k in range(10):
            await shared.get(k)
        assert len(shared._kept) == 3

    asyncio.run(main())
