"""Measure what changing the model costs a running FishEye server under load.

    FISHEYE_ADMIN_TOKEN=... python -m benchmarks.model_changes swap --url http://127.0.0.1:8000 \
        --models models/default /tmp/default-copy
    FISHEYE_ADMIN_TOKEN=... python -m benchmarks.model_changes shadow --url http://127.0.0.1:8000 \
        --challenger models/default --share 0.1

Both keep a closed loop of --concurrency clients posting real photos (serve_load.py's
photos and request bodies) to /v1/predict and record every request's start, latency,
status and answering model.

swap: --baseline-s of plain load, then --swaps hot swaps through POST /v1/admin/model
(alternating between the --models folders, --gap-s apart). Prints p50/p99 of requests that
started outside any swap and of those that started while a swap was loading or within 1 s
after it, the worst latency, and the failed requests (anything but a 200).

shadow: alternates --rounds phases of --phase-s without a challenger and with a shadow
challenger at --share (attached, then detached, through the admin endpoints); prints
requests/s of each phase and the throughput cost of shadowing: the mean of the shadow
phases against the mean of the plain ones, and the median over rounds of each shadow phase
against the plain phase just before it (alternating phases keeps slow drifts of a shared
machine out of the comparison).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.serve_load import DEFAULT_PHOTOS, load_photos, multipart_body, percentile


@dataclass
class Sample:
    """One request: when it started (s from the run's start), its latency and answer."""

    start: float
    latency_ms: float
    status: int
    model: str | None


@dataclass
class LoadRecorder:
    """A closed loop of clients that records every request until stopped."""

    url: str
    bodies: list[tuple[bytes, str]]
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, timeout=60, limits=limits) as client:
            await asyncio.gather(*(self._worker(client, i) for i in range(self.concurrency)))

    async def _worker(self, client: httpx.AsyncClient, i: int) -> None:
        while not self._stop.is_set():
            body, content_type = self.bodies[i % len(self.bodies)]
            i += self.concurrency
            start = time.perf_counter()
            try:
                res = await client.post(
                    "/v1/predict", content=body, headers={"Content-Type": content_type}
                )
                status = res.status_code
                model = res.json()["model"]["version"] if status == 200 else None
            except httpx.HTTPError:
                status, model = 0, None
            end = time.perf_counter()
            self.samples.append(Sample(start - self.t0, (end - start) * 1000, status, model))

    def stop(self) -> None:
        self._stop.set()

    def now(self) -> float:
        return time.perf_counter() - self.t0


async def admin(client: httpx.AsyncClient, method: str, path: str, body=None) -> dict:
    res = await client.request(method, f"/v1/admin/{path}", json=body)
    if res.status_code != 200:
        raise SystemExit(f"{method} /v1/admin/{path}: {res.status_code} {res.text}")
    return res.json()


def summary(samples: list[Sample]) -> dict[str, float]:
    lat = [s.latency_ms for s in samples if s.status == 200]
    return {
        "requests": len(samples),
        "failed": sum(s.status != 200 for s in samples),
        "p50_ms": round(percentile(lat, 50), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "max_ms": round(max(lat), 2) if lat else float("nan"),
    }


async def swap_run(args: argparse.Namespace, bodies, headers) -> dict:
    load = LoadRecorder(args.url, bodies, args.concurrency)
    runner = asyncio.create_task(load.run())
    windows: list[tuple[float, float]] = []
    durations = []
    async with httpx.AsyncClient(base_url=args.url, timeout=600, headers=headers) as client:
        await asyncio.sleep(args.baseline_s)
        for i in range(args.swaps):
            target = args.models[(i + 1) % len(args.models)]
            begin = load.now()
            await admin(client, "POST", "model", {"model": target})
            end = load.now()
            durations.append(end - begin)
            windows.append((begin, end + 1.0))
            await asyncio.sleep(args.gap_s)
    load.stop()
    await runner
    warm = [s for s in load.samples if s.start > 1.0]  # the first second warms connections
    during = [s for s in warm if any(a <= s.start <= b for a, b in windows)]
    outside = [s for s in warm if not any(a <= s.start <= b for a, b in windows)]
    out, inside = summary(outside), summary(during)
    return {
        "concurrency": args.concurrency,
        "swaps": args.swaps,
        "swap_seconds": [round(d, 2) for d in durations],
        "outside_swaps": out,
        "during_swaps": inside,
        "p99_during_over_p99_outside": round(inside["p99_ms"] / out["p99_ms"], 2),
        "failed_requests": out["failed"] + inside["failed"],
        "models_seen": sorted({s.model for s in load.samples if s.model}),
    }


async def shadow_run(args: argparse.Namespace, bodies, headers) -> dict:
    phases: list[dict] = []
    async with httpx.AsyncClient(base_url=args.url, timeout=600, headers=headers) as client:
        status = await admin(client, "GET", "status")
        if status["challenger"] is not None:
            await admin(client, "DELETE", "challenger")
        for r in range(args.rounds):
            for shadow in (False, True):
                if shadow:
                    body = {"model": args.challenger, "mode": "shadow", "share": args.share}
                    await admin(client, "POST", "challenger", body)
                load = LoadRecorder(args.url, bodies, args.concurrency)
                runner = asyncio.create_task(load.run())
                await asyncio.sleep(args.phase_s)
                load.stop()
                await runner
                timed = [s for s in load.samples if s.start > 1.0]
                span = max(s.start + s.latency_ms / 1000 for s in timed) - 1.0
                phase = {"round": r, "shadow": shadow, **summary(timed)}
                phase["requests_per_s"] = round(sum(s.status == 200 for s in timed) / span, 1)
                if shadow:
                    view = (await client.get("/v1/monitoring/challenger")).json()
                    phase["shadowed"] = view["shadow"]["photos"]
                    phase["skipped"] = view["shadow"]["skipped"]
                    await admin(client, "DELETE", "challenger")
                phases.append(phase)
                print(json.dumps(phase), file=sys.stderr)
    plain = [p["requests_per_s"] for p in phases if not p["shadow"]]
    shadowed = [p["requests_per_s"] for p in phases if p["shadow"]]
    # Each round's shadow phase against the plain phase just before it: the machine's
    # slow drifts (other jobs) cancel out of the median of these.
    paired = [1 - b / a for a, b in zip(plain, shadowed, strict=True)]
    return {
        "concurrency": args.concurrency,
        "share": args.share,
        "phase_s": args.phase_s,
        "phases": phases,
        "plain_requests_per_s": round(statistics.mean(plain), 1),
        "shadow_requests_per_s": round(statistics.mean(shadowed), 1),
        "throughput_cost": round(1 - statistics.mean(shadowed) / statistics.mean(plain), 3),
        "throughput_cost_per_round": [round(c, 3) for c in paired],
        "throughput_cost_median_of_rounds": round(statistics.median(paired), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["swap", "shadow"])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--distinct-photos", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=["models/default"], help="swap: targets")
    parser.add_argument("--swaps", type=int, default=5)
    parser.add_argument("--baseline-s", type=float, default=10.0)
    parser.add_argument("--gap-s", type=float, default=6.0)
    parser.add_argument("--challenger", default="models/default", help="shadow: its bundle")
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--phase-s", type=float, default=15.0)
    args = parser.parse_args(argv)
    token = os.environ.get("FISHEYE_ADMIN_TOKEN")
    if not token:
        raise SystemExit("set FISHEYE_ADMIN_TOKEN to the server's admin token")
    headers = {"Authorization": f"Bearer {token}"}
    photos = load_photos(args.photos, args.distinct_photos)
    bodies = [multipart_body(name, data) for name, data in photos]
    run = swap_run if args.what == "swap" else shadow_run
    print(json.dumps(asyncio.run(run(args, bodies, headers)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
