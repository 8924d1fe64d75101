"""Peak memory and CPU time of a FishEye server while it decodes worst-case photos, many at
once, and whether it still answers real photos meanwhile.

    python -m benchmarks.decode_memory                    # from the repository root
    python -m benchmarks.decode_memory --concurrency 16 --kinds jpeg-repeated-scans
    python -m benchmarks.decode_memory --pythonpath ../main/src   # another version

Starts `fisheye serve` on 127.0.0.1 (the tiny random model: decoding, not the model, is
measured), measures the latency of real photos (../shared/data, when present) one at a
time, then for each kind of worst-case file (tests/helpers/bombs.py) sends it
`--concurrency` times at once to /v1/predict while a second client keeps sending real
photos one after another. Per kind it prints: the statuses; the peak resident memory of
the server and its worker processes together (sampled every 20 ms) and of the server
process alone (VmHWM); the wall time of the burst, the CPU seconds the server spent on it
and how long it stayed busy after the last answer (decodes that outlive their requests);
and how many real photos another client (127.0.0.2) had answered during the burst. Linux
only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.local_server import start_server
from tests.helpers.bombs import ALL_CASES, WORST_CASES
from tests.helpers.bundles import make_bundle
from tests.helpers.memory import peak_mb, reset_peak, rss_mb
from tests.helpers.process_tree import PeakSampler, tree_cpu_s, tree_rss_mb

REAL_PHOTOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fish-256" / "val"


def real_photos(n: int = 40) -> list[tuple[str, bytes]]:
    """Up to n real photos (name, bytes), a few from each class; none when absent."""
    if not REAL_PHOTOS.is_dir():
        return []
    files = sorted(REAL_PHOTOS.glob("*/*.jpg"))
    step = max(1, len(files) // n)
    return [(p.name, p.read_bytes()) for p in files[::step][:n]]


async def burst(url: str, name: str, data: bytes, n: int, timeout: float) -> Counter[int]:
    """Send the same file n times at once; count the status codes (0: no answer)."""
    async with httpx.AsyncClient(timeout=timeout) as client:

        async def one() -> int:
            try:
                res = await client.post(f"{url}/v1/predict", files={"file": (name, data)})
                return res.status_code
            except httpx.HTTPError:
                return 0  # connection failed: the server died, dropped it or took too long

        return Counter(await asyncio.gather(*(one() for _ in range(n))))


async def real_traffic(
    url: str, photos: list[tuple[str, bytes]], stop: asyncio.Event, timeout: float
) -> list[tuple[int, float]]:
    """Real photos one after another until `stop`: (status, latency ms) each."""
    results: list[tuple[int, float]] = []
    if not photos:
        return results
    # Another client: another address (all of 127.0.0.0/8 is this machine).
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
        i = 0
        while not stop.is_set():
            name, data = photos[i % len(photos)]
            start = time.perf_counter()
            try:
                res = await client.post(f"{url}/v1/predict", files={"file": (name, data)})
                status = res.status_code
            except httpx.HTTPError:
                status = 0
            results.append((status, (time.perf_counter() - start) * 1000))
            i += 1
    return results


async def burst_with_traffic(
    url: str, name: str, data: bytes, n: int, photos: list[tuple[str, bytes]], timeout: float
) -> tuple[Counter[int], list[tuple[int, float]]]:
    """The burst, with real photos sent alongside until it is answered."""
    stop = asyncio.Event()
    traffic = asyncio.create_task(real_traffic(url, photos, stop, timeout))
    await asyncio.sleep(0.05)
    codes = await burst(url, name, data, n, timeout)
    stop.set()
    return codes, await traffic


def latency(url: str, photos: list[tuple[str, bytes]], rounds: int = 3) -> list[float]:
    """Latency of each real photo sent alone (ms), after one round of warm-up."""
    times = []
    with httpx.Client(timeout=60) as client:
        for r in range(rounds + 1):
            for name, data in photos:
                start = time.perf_counter()
                res = client.post(f"{url}/v1/predict", files={"file": (name, data)})
                res.raise_for_status()
                if r:
                    times.append((time.perf_counter() - start) * 1000)
    return times


def wait_idle(pid: int, max_s: float, cpu_share: float = 0.1) -> float:
    """Seconds until the server tree uses under `cpu_share` of a core over half a second."""
    start = time.monotonic()
    while time.monotonic() - start < max_s:
        used = tree_cpu_s(pid)
        time.sleep(0.5)
        if tree_cpu_s(pid) - used < cpu_share * 0.5:
            return time.monotonic() - start
    return float("inf")


def _statuses(codes: Counter[int]) -> str:
    return ", ".join(f"{c}x{n}" for c, n in sorted(codes.items()))


def _real(results: list[tuple[int, float]]) -> str:
    if not results:
        return "-"
    ok = [ms for status, ms in results if status == 200]
    worst = max(ms for _, ms in results)
    return f"{len(ok)}/{len(results)} ok, max {worst / 1000:.1f} s"


def main(argv: list[str] | None = None) -> int:
    """Run the bursts and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kinds", nargs="*", default=list(WORST_CASES))
    parser.add_argument("--settle-s", type=float, default=3.0, help="Wait before 'after' RSS.")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="Client timeout.")
    parser.add_argument(
        "--idle-max-s", type=float, default=300.0, help="Longest wait for the server to idle."
    )
    parser.add_argument(
        "--pythonpath", help="Serve FishEye from this source folder (compare two versions)."
    )
    parser.add_argument(
        "--env", nargs="*", default=[], metavar="NAME=VALUE", help="FISHEYE_* settings."
    )
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    photos = real_photos()

    with tempfile.TemporaryDirectory() as tmp:
        model = make_bundle(Path(tmp) / "bundle")
        url, proc = start_server(
            model,
            Path(tmp) / "server.log",
            {"FISHEYE_PREDICTION_LOG": "false", **env},
            pythonpath=args.pythonpath,
            ready_s=120,
        )
        try:
            pid = proc.pid
            if photos:
                times = latency(url, photos)
                print(
                    f"real photos alone ({len(photos)} x 3): p50 "
                    f"{statistics.median(times):.1f} ms, p90 "
                    f"{statistics.quantiles(times, n=10)[-1]:.1f} ms"
                )
            print(
                f"server pid {pid}, resident {tree_rss_mb(pid):.0f} MiB (with its workers); "
                f"{args.concurrency} concurrent uploads per kind\n"
            )
            print(
                "| file | bytes | statuses | before MiB | peak MiB (tree) | peak - before "
                "| server VmHWM - before | after MiB | burst s | CPU s | busy after s "
                "| real photos meanwhile |"
            )
            print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
            for kind in args.kinds:
                maker, suffix, _ = ALL_CASES[kind]
                data = maker()
                wait_idle(pid, args.idle_max_s)
                reset_peak(pid)
                before, server_before, cpu_before = tree_rss_mb(pid), rss_mb(pid), tree_cpu_s(pid)
                start = time.monotonic()
                with PeakSampler(pid) as sampler:
                    codes, real = asyncio.run(
                        burst_with_traffic(
                            url, f"{kind}{suffix}", data, args.concurrency, photos, args.timeout_s
                        )
                    )
                    wall = time.monotonic() - start
                    busy = wait_idle(pid, args.idle_max_s)
                cpu = tree_cpu_s(pid) - cpu_before
                server_peak = peak_mb(pid)
                time.sleep(args.settle_s)
                alive = proc.poll() is None
                after = tree_rss_mb(pid) if alive else float("nan")
                print(
                    f"| {kind} | {len(data):,} | {_statuses(codes)} | {before:.0f} "
                    f"| {sampler.peak_mb:.0f} | {sampler.peak_mb - before:.0f} "
                    f"| {server_peak - server_before:.0f} | {after:.0f} | {wall:.1f} "
                    f"| {cpu:.1f} | {busy:.1f} | {_real(real)} |",
                    flush=True,
                )
                if not alive:
                    print("\nthe server died")
                    return 1
        finally:
            proc.terminate()
            proc.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
