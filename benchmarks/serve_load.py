"""Load-test a running FishEye server on 127.0.0.1 with real photos.

    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --photos ../shared/data/fish-256/val

For each concurrency level it sends at most --requests requests (and stops after
--max-seconds), then prints p50/p95/p99 latency, requests/s and the error count.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

log = logging.getLogger("serve_load")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = ROOT.parent / "shared" / "data" / "fish-256" / "val"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Result:
    """Figures for one concurrency level."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    def percentile(self, q: float) -> float:
        """Latency percentile in ms (q in 0..100)."""
        if not self.latencies_ms:
            return float("nan")
        if len(self.latencies_ms) == 1:
            return self.latencies_ms[0]
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(q) - 1]


def load_photos(folder: Path, limit: int) -> list[tuple[str, bytes]]:
    """Up to `limit` photos drawn at random (seeded) from a folder tree."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not paths:
        raise SystemExit(f"no photos found under {folder}")
    # A seeded random sample, in random order: photos sent folder by folder (or every k-th
    # photo cut off at the limit) change the class mix, which the server's drift monitor
    # rightly reports as drift.
    chosen = random.Random(0).sample(paths, min(limit, len(paths)))
    return [(p.name, p.read_bytes()) for p in chosen]


async def run_level(
    url: str, photos: list[tuple[str, bytes]], concurrency: int, total: int, max_seconds: float
) -> Result:
    """Send `total` requests with `concurrency` in flight; stop early after `max_seconds`."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                if time.monotonic() > deadline:
                    return
                name, data = photos[i % len(photos)]
                start = time.perf_counter()
                try:
                    res = await client.post("/v1/predict", files={"file": (name, data)})
                    ok = res.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - start) * 1000.0)
                else:
                    errors += 1

        # Warm the connections and the server before timing.
        await asyncio.gather(
            *(client.post("/v1/predict", files={"file": photos[0]}) for _ in range(concurrency))
        )
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return Result(concurrency, len(latencies) + errors, errors, seconds, sorted(latencies))


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run each concurrency level and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=400, help="Per level (at most).")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="Per level (at most).")
    parser.add_argument("--distinct-photos", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    host = urlparse(args.url).hostname
    if host not in LOCAL_HOSTS:
        parser.error(f"this load generator only targets this machine (127.0.0.1), not {host}")
    if args.requests > 10_000 or args.max_seconds > 300:
        parser.error("keep it bounded: --requests <= 10000 and --max-seconds <= 300")
    model = httpx.get(f"{args.url}/v1/model", timeout=10).json()
    photos = load_photos(args.photos, args.distinct_photos)
    log.info(
        "model %s %s (%s); %d distinct photos from %s",
        model["name"],
        model["version"],
        model["architecture"],
        len(photos),
        args.photos,
    )
    rows = []
    for c in args.concurrency:
        r = asyncio.run(run_level(args.url, photos, c, args.requests, args.max_seconds))
        rows.append(r)
    header = "| concurrency | requests | p50 ms | p95 ms | p99 ms | req/s | errors |"
    lines = [header, "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r.concurrency} | {r.requests} | {r.percentile(50):.1f} | {r.percentile(95):.1f} "
            f"| {r.percentile(99):.1f} | {r.requests / r.seconds:.1f} | {r.errors} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 1 if any(r.errors for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
