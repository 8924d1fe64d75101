"""Two versions of `fisheye serve` under the same load, started in turn (A/B on a shared machine).

    python -m benchmarks.serve_load_ab --baseline-src ../main/src --rounds 3

Each round starts this checkout's server ("after"), loads it, stops it, then the same for
the server running the code in --baseline-src ("before"), so a slow drift of the machine
hits both alike. A load is 32 uncounted warm-up requests, then closed loops at
concurrency 1 and 16 (benchmarks/serve_load.py's `run_level`, aiohttp client). Prints each
round, then the median over the rounds: p50 at c=1 and requests/s at c=16, and after/before.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.local_server import start_server, stop_server
from benchmarks.serve_load import DEFAULT_PHOTOS, load_photos, percentile, run_level

ROOT = Path(__file__).resolve().parents[1]


def measure(url: str, photos: list[tuple[str, bytes]], requests: int) -> tuple[float, float]:
    """(p50 ms at concurrency 1, requests/s at concurrency 16) of a running server."""

    async def run() -> tuple[float, float]:
        await run_level(url, photos, 4, 32, 60, client="aiohttp")  # warm-up, not counted
        one = await run_level(url, photos, 1, requests, 120, client="aiohttp")
        many = await run_level(url, photos, 16, requests, 120, client="aiohttp")
        if one.errors or many.errors:
            raise SystemExit(f"errors under load: {one.errors} at c=1, {many.errors} at c=16")
        return percentile(one.latencies_ms, 50), many.requests / many.seconds

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the rounds, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-src", type=Path, required=True, metavar="DIR")
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300, help="Per level.")
    args = parser.parse_args(argv)
    photos = load_photos(args.photos, 64)
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-ab-"))
    trees = {"after": str(ROOT / "src"), "before": str(args.baseline_src.resolve())}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for i in range(args.rounds):
        for name, src in trees.items():
            run = tmp / f"{name}-{i}"
            run.mkdir()
            env = {"FISHEYE_PREDICTION_DB": str(run / "predictions.sqlite")}
            url, proc = start_server(args.model.resolve(), run / "server.log", env, src)
            try:
                p50, rps = measure(url, photos, args.requests)
            finally:
                stop_server(proc)
            figures[name].append((p50, rps))
            print(f"  round {i + 1} {name}: p50 at c=1 {p50:.1f} ms, {rps:.1f} req/s at c=16")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n| server | p50 ms at c=1 (median) | req/s at c=16 (median) |")
    print("|---|---:|---:|")
    medians = {}
    for name, rows in figures.items():
        medians[name] = (
            statistics.median(r[0] for r in rows),
            statistics.median(r[1] for r in rows),
        )
        print(f"| {name} | {medians[name][0]:.1f} | {medians[name][1]:.1f} |")
    (p_after, r_after), (p_before, r_before) = medians["after"], medians["before"]
    print(f"| after/before | {p_after / p_before:.3f} | {r_after / r_before:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
