"""Worst-case photos sent many at once: the server's memory stays bounded and comes back."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.helpers.bombs import WORST_CASES
from tests.helpers.memory import peak_mb, reset_peak, rss_mb
from tests.helpers.server import Server, run_server

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc (Linux only)")
CONCURRENCY = 16
MAX_PEAK_RISE_MB = 500  # the target for 16 concurrent worst-case files
MAX_KEPT_MB = 64  # what may stay resident after a burst (allocator slack)


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("decode-memory")
    with run_server(tiny_bundle, logs, FISHEYE_PREDICTION_LOG="false") as srv:
        # Warm up: thread pools, the batcher and the allocator's arenas are set up by the
        # first requests; what they keep is not what a burst of bad photos costs.
        warm = WORST_CASES["jpeg-flat"][0](1200)
        for _ in range(2):
            asyncio.run(_burst(srv.url, "warm-up.jpg", warm))
        yield srv


async def _burst(url: str, name: str, data: bytes) -> Counter[int]:
    async with httpx.AsyncClient(timeout=120) as client:

        async def one() -> int:
            res = await client.post(f"{url}/v1/predict", files={"file": (name, data)})
            return res.status_code

        return Counter(await asyncio.gather(*(one() for _ in range(CONCURRENCY))))


@pytest.mark.parametrize("kind", sorted(WORST_CASES))
def test_worst_case_photos_keep_memory_bounded(server: Server, kind: str) -> None:
    maker, suffix, readable = WORST_CASES[kind]
    data = maker()
    pid = server.process.pid
    reset_peak(pid)
    before = rss_mb(pid)
    codes = asyncio.run(_burst(server.url, f"{kind}{suffix}", data))
    rise = peak_mb(pid) - before
    time.sleep(1.0)
    kept = rss_mb(pid) - before
    assert server.process.poll() is None, server.log_tail()
    print(f"{kind}: {dict(codes)}, peak +{rise:.0f} MiB, kept {kept:.0f} MiB")
    # Every answer is a prediction or a clear refusal: never a 5xx.
    allowed = {200, 413} if readable else {415}
    assert set(codes) <= allowed, (codes, server.log_tail())
    assert rise <= MAX_PEAK_RISE_MB, f"{kind}: peak rose by {rise:.0f} MiB ({codes})"
    assert kept <= MAX_KEPT_MB, f"{kind}: {kept:.0f} MiB stayed resident after the burst"
