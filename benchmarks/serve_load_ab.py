"""Two versions of `fisheye serve` under the same load, started in turn (A/B on a shared machine).

    python -m benchmarks.serve_load_ab --baseline-src ../main/src --rounds 3

Each round starts this checkout's server ("after"), loads it, stops it, then the same for
the server running the code in --baseline-src ("before"), so a slow drift of the machine
hits both alike. A load is 32 uncounted warm-up requests, --settle-s seconds of quiet (for
the work a server does once it has answered, e.g. its warm-up at the largest batch, to end
before the measurement), then closed loops at
concurrency 1 and 16 (benchmarks/serve_load.py's `run_level`, aiohttp client). Prints each
round, then the median over the rounds: p50 at c=1, requests/s at c=16, and the server's
CPU time per request at c=16 (user + system of the server and its decode worker
processes: a loaded machine changes it less than the wall-clock figures), and
after/before.
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


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children (the decode workers) so far."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(
    url: str, pid: int, photos: list[tuple[str, bytes]], requests: int, settle_s: float
) -> tuple[float, float, float]:
    """(p50 ms at concurrency 1, requests/s and server CPU ms per request at concurrency 16)
    of a running server."""

    async def run() -> tuple[float, float, float]:
        await run_level(url, photos, 4, 32, 60, client="aiohttp")  # warm-up, not counted
        await asyncio.sleep(settle_s)
        one = await run_level(url, photos, 1, requests, 120, client="aiohttp")
        cpu = tree_cpu_seconds(pid)
        many = await run_level(url, photos, 16, requests, 120, client="aiohttp")
        cpu_ms = (tree_cpu_seconds(pid) - cpu) * 1000 / max(1, many.requests)
        if one.errors or many.errors:
            raise SystemExit(f"errors under load: {one.errors} at c=1, {many.errors} at c=16")
        return percentile(one.latencies_ms, 50), many.requests / many.seconds, cpu_ms

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the rounds, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-src", type=Path, required=True, metavar="DIR")
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300, help="Per level.")
    parser.add_argument("--settle-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    photos = load_photos(args.photos, 64)
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-ab-"))
    trees = {"after": str(ROOT / "src"), "before": str(args.baseline_src.resolve())}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in trees}
    for i in range(args.rounds):
        for name, src in trees.items():
            run = tmp / f"{name}-{i}"
            run.mkdir()
            env = {"FISHEYE_PREDICTION_DB": str(run / "predictions.sqlite")}
            url, proc = start_server(args.model.resolve(), run / "server.log", env, src)
            try:
                p50, rps, cpu_ms = measure(url, proc.pid, photos, args.requests, args.settle_s)
            finally:
                stop_server(proc)
            figures[name].append((p50, rps, cpu_ms))
            print(
                f"  round {i + 1} {name}: p50 at c=1 {p50:.1f} ms, {rps:.1f} req/s at c=16, "
                f"{cpu_ms:.1f} CPU ms per request at c=16",
                flush=True,
            )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        "\n| server | p50 ms at c=1 (median) | req/s at c=16 (median) "
        "| CPU ms per request at c=16 (median) |"
    )
    print("|---|---:|---:|---:|")
    medians = {}
    for name, rows in figures.items():
        medians[name] = [statistics.median(r[k] for r in rows) for k in (0, 1, 2)]
        print("| " + " | ".join([name, *(f"{x:.1f}" for x in medians[name])]) + " |")
    ratios = [a / b for a, b in zip(medians["after"], medians["before"], strict=True)]
    print("| after/before | " + " | ".join(f"{x:.3f}" for x in ratios) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
