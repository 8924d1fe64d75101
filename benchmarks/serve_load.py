"""Load-test a running FishEye server on 127.0.0.1 with real photos.

    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --photos ../shared/data/fish-256/val

Closed loop (the default): for each concurrency level it sends at most --requests requests
(and stops after --max-seconds), then prints p50/p95/p99 latency, requests/s and the error
count. A closed loop never offers more load than the server absorbs: each worker waits for
its answer before sending again.

Open loop (--mode open): for each offered rate in --rates (requests/s) it sends requests at
Poisson arrival times (seeded) for --seconds, whether or not earlier requests have been
answered, then prints p50/p99 latency of the completed requests, achieved requests/s, errors
and timed-out requests; --plot writes p50 and p99 against the offered rate.

    python benchmarks/serve_load.py --mode open --rates 20 40 80 120 160 200 240 \
        --seconds 15 --plot docs/img/serve_open_loop.png

The open-loop client avoids coordinated omission: every request's send time is fixed in
advance by the arrival schedule, each request is its own task (no worker pool, no
semaphore, no connection-pool limit below the offered load), and latency is measured from
the scheduled send time, not from when the request actually left: if the client (or the
connection) falls behind, that delay counts against the server's latency instead of
silently thinning the load. The client's own lag (actual minus scheduled send) is
reported so an overloaded client can be told apart from a slow server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
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


def photo_paths(folder: Path, limit: int, seed: int = 0) -> list[Path]:
    """Up to `limit` photo paths drawn at random (seeded) from a folder tree, in random order."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not paths:
        raise SystemExit(f"no photos found under {folder}")
    # A seeded random sample, in random order: photos sent folder by folder (or every k-th
    # photo cut off at the limit) change the class mix, which the server's drift monitor
    # rightly reports as drift.
    return random.Random(seed).sample(paths, min(limit, len(paths)))


def load_photos(folder: Path, limit: int) -> list[tuple[str, bytes]]:
    """Up to `limit` photos drawn at random (seeded) from a folder tree."""
    return [(p.name, p.read_bytes()) for p in photo_paths(folder, limit)]


async def run_level(
    url: str,
    photos: list[tuple[str, bytes]],
    concurrency: int,
    total: int,
    max_seconds: float,
    *,
    client: str = "httpx",
) -> Result:
    """Send `total` requests with `concurrency` in flight; stop early after `max_seconds`.

    client="aiohttp" runs the same loop on aiohttp with pre-encoded bodies (much less
    client CPU and latency per request than httpx: see `--client`).
    """
    if client != "httpx":
        return await _run_level_poster(url, photos, concurrency, total, max_seconds, client)
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


class Poster:
    """POSTs pre-encoded photo bodies to /v1/predict over one HTTP client (httpx or aiohttp).

    `max_connections=None` means no limit: the open loop must not queue requests in the
    client's connection pool.
    """

    def __init__(self, url: str, client: str = "aiohttp", max_connections: int | None = None):
        if client not in CLIENTS:
            raise ValueError(f"client must be one of {CLIENTS}, not {client!r}")
        self.url, self.client, self.max_connections = url.rstrip("/"), client, max_connections
        self._session = None

    async def __aenter__(self) -> Poster:
        if self.client == "aiohttp":
            try:
                import aiohttp
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise SystemExit(
                    "the aiohttp client needs aiohttp: pip install -e '.[bench]' (or use "
                    "--client httpx)"
                ) from exc
            connector = aiohttp.TCPConnector(limit=self.max_connections or 0, force_close=False)
            self._session = aiohttp.ClientSession(
                self.url, connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )
        else:
            n = self.max_connections
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            self._session = httpx.AsyncClient(base_url=self.url, timeout=None, limits=limits)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client == "aiohttp":
            await self._session.close()
        else:
            await self._session.aclose()

    async def post(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        """(status, response body); raises OSError-like errors when the connection fails."""
        headers = {"content-type": content_type}
        if self.client == "aiohttp":
            async with self._session.post("/v1/predict", data=body, headers=headers) as res:
                return res.status, await res.read()
        res = await self._session.post("/v1/predict", content=body, headers=headers)
        return res.status_code, res.content


CLIENTS = ("httpx", "aiohttp")
# What a failed connection raises, whichever client: counted as errors, never crashes a run.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, httpx.HTTPError)
try:
    import aiohttp as _aiohttp

    CONNECTION_ERRORS = (*CONNECTION_ERRORS, _aiohttp.ClientError)
except ImportError:  # pragma: no cover
    pass


async def _run_level_poster(
    url: str,
    photos: list[tuple[str, bytes]],
    concurrency: int,
    total: int,
    max_seconds: float,
    client: str,
) -> Result:
    """`run_level` on a Poster: the same closed loop, pre-encoded bodies."""
    bodies = [multipart_body(name, data) for name, data in photos]
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))
    deadline = time.monotonic() + max_seconds
    async with Poster(url, client, max_connections=concurrency) as poster:

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                if time.monotonic() > deadline:
                    return
                body, ctype = bodies[i % len(bodies)]
                start = time.perf_counter()
                try:
                    ok = (await asyncio.wait_for(poster.post(body, ctype), 30))[0] == 200
                except (TimeoutError, *CONNECTION_ERRORS):
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - start) * 1000.0)
                else:
                    errors += 1

        # Warm the connections and the server before timing.
        await asyncio.gather(*(poster.post(*bodies[0]) for _ in range(concurrency)))
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return Result(concurrency, len(latencies) + errors, errors, seconds, sorted(latencies))


async def predict_all(
    url: str, photos: list[tuple[str, bytes]], concurrency: int = 8, client: str = "aiohttp"
) -> list[tuple[int, bytes]]:
    """Send every photo once (`concurrency` in flight); (status, body) per photo, in order.

    A failed connection gives status -1 and a timeout (30 s) status 0.
    """
    bodies = [multipart_body(name, data) for name, data in photos]
    out: list[tuple[int, bytes]] = [(0, b"")] * len(bodies)
    counter = iter(range(len(bodies)))
    async with Poster(url, client, max_connections=concurrency) as poster:

        async def worker() -> None:
            for i in counter:
                try:
                    out[i] = await asyncio.wait_for(poster.post(*bodies[i]), 30)
                except TimeoutError:
                    out[i] = (0, b"")
                except CONNECTION_ERRORS:
                    out[i] = (-1, b"")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of values, linear interpolation; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def multipart_body(name: str, data: bytes, field_name: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body with one file field, and its Content-Type.

    Built once per photo so the open-loop client spends its CPU on sending, not encoding
    (what httpx's `files=` would produce, give or take the boundary).
    """
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field_name}"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def poisson_schedule(rate: float, seconds: float, seed: int) -> list[float]:
    """Send times (s from the start) of a Poisson process of `rate` per second over `seconds`."""
    rng = random.Random(seed)
    times, t = [], rng.expovariate(rate)
    while t < seconds:
        times.append(t)
        t += rng.expovariate(rate)
    return times


@dataclass
class OpenResult:
    """Figures for one offered rate of the open loop."""

    offered_rate: float
    seconds: float
    sent: int = 0
    ok: int = 0
    errors: int = 0  # answered with a status other than 200, or the connection failed
    timed_out: int = 0  # no answer within `timeout` of the scheduled send (abandoned)
    latencies_ms: list[float] = field(default_factory=list)  # successful, from scheduled send
    lag_ms: list[float] = field(default_factory=list)  # actual minus scheduled send time
    statuses: Counter = field(default_factory=Counter)  # of the errors: HTTP status, -1 failed
    span_s: float = 0.0  # first scheduled send to last answer

    @property
    def achieved(self) -> float:
        """Successful answers per second over the span from first send to last answer."""
        return self.ok / self.span_s if self.span_s > 0 else 0.0

    def saturated(self) -> bool:
        """Whether the server fell behind: <90% of what was sent served per s, or >1% failed."""
        failed = self.errors + self.timed_out
        sent_rate = self.sent / self.seconds
        return self.achieved < 0.9 * sent_rate or failed > 0.01 * max(self.sent, 1)


async def run_open_level(
    url: str,
    photos: list[tuple[str, bytes]],
    rate: float,
    seconds: float,
    *,
    seed: int = 0,
    timeout: float = 10.0,
    client: str = "aiohttp",
) -> OpenResult:
    """Offer `rate` requests/s (Poisson arrivals) for `seconds`; latency from scheduled send.

    Each request is its own task, created at its scheduled time; nothing caps the number in
    flight (the client's connection pool is unlimited), so the load offered is the load
    scheduled. A request without an answer `timeout` seconds after its scheduled send time
    is abandoned and counted as timed out.
    """
    schedule = poisson_schedule(rate, seconds, seed)
    bodies = [multipart_body(name, data) for name, data in photos]
    result = OpenResult(rate, seconds)
    async with Poster(url, client, max_connections=None) as poster:
        # Warm a few connections and the server (not counted).
        await asyncio.gather(*(poster.post(*body) for body in bodies[:4]))
        last_done = 0.0

        async def send(i: int, due: float) -> None:
            nonlocal last_done
            body, ctype = bodies[i % len(bodies)]
            result.lag_ms.append((time.perf_counter() - due) * 1000.0)
            try:
                left = max(due + timeout - time.perf_counter(), 0.001)
                status, _ = await asyncio.wait_for(poster.post(body, ctype), left)
            except TimeoutError:
                result.timed_out += 1
                return
            except CONNECTION_ERRORS:
                status = -1
            done = time.perf_counter()
            last_done = max(last_done, done)
            if status == 200:
                result.ok += 1
                result.latencies_ms.append((done - due) * 1000.0)
            else:
                result.errors += 1
                result.statuses[status] += 1

        tasks = []
        start = time.perf_counter() + 0.05
        for i, offset in enumerate(schedule):
            due = start + offset
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(i, due)))
        result.sent = len(tasks)
        await asyncio.gather(*tasks)
        result.span_s = max(last_done - start, 1e-9)
    return result


def open_loop_table(rows: list[OpenResult]) -> str:
    """The open-loop results as a Markdown table."""
    lines = [
        "| offered req/s | sent | achieved req/s | p50 ms | p99 ms | errors | timed out "
        "| client lag p99 ms | saturated |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        errors = str(r.errors)
        if r.statuses:
            kinds = ", ".join(
                f"{k if k > 0 else 'conn'}: {n}" for k, n in sorted(r.statuses.items())
            )
            errors += f" ({kinds})"
        lines.append(
            f"| {r.offered_rate:g} | {r.sent} | {r.achieved:.1f} "
            f"| {percentile(r.latencies_ms, 50):.1f} | {percentile(r.latencies_ms, 99):.1f} "
            f"| {errors} | {r.timed_out} | {percentile(r.lag_ms, 99):.1f} "
            f"| {'yes' if r.saturated() else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def plot_open_loop(rows: list[OpenResult], path: Path, title: str) -> None:
    """p50 and p99 latency against the offered rate, latency on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r.offered_rate for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for q, style in ((50, "o-"), (99, "s--")):
        ax.plot(rates, [percentile(r.latencies_ms, q) for r in rows], style, label=f"p{q}")
    saturated = [r.offered_rate for r in rows if r.saturated()]
    if saturated:
        ax.axvspan(min(saturated), max(rates), color="0.9", zorder=0, label="saturated")
    for r in rows:
        ax.annotate(
            f"{r.achieved:.0f}/s",
            (r.offered_rate, percentile(r.latencies_ms, 99)),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
            color="0.35",
        )
    ax.set_yscale("log")
    ax.set_xlim(0, max(rates) * 1.05)
    ax.set_xlabel("offered load (requests/s, Poisson arrivals)")
    ax.set_ylabel("latency from scheduled send (ms, log)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.text(0.99, 0.01, "labels: achieved req/s", ha="right", fontsize=7, color="0.35")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run each concurrency level (or offered rate) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=400, help="Per level (at most).")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="Per level (at most).")
    parser.add_argument("--distinct-photos", type=int, default=64)
    parser.add_argument(
        "--mode",
        choices=("closed", "open"),
        default="closed",
        help="closed: fixed concurrency (default); open: fixed arrival rates.",
    )
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[20, 40, 80, 120, 160, 200, 240],
        help="Open loop: offered requests/s, one level each.",
    )
    parser.add_argument(
        "--seconds", type=float, default=15.0, help="Open loop: seconds per offered rate."
    )
    parser.add_argument("--seed", type=int, default=0, help="Open loop: arrival-time seed.")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="Open loop: seconds before a request counts as timed out.",
    )
    parser.add_argument("--plot", type=Path, default=None, help="Open loop: write a PNG here.")
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default=None,
        help="HTTP client: httpx (the closed loop's default) or aiohttp (the open loop's "
        "default; ~0.3 ms of client CPU per request against httpx's 1-6 ms, which matters "
        "when client and server share a few cores).",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    host = urlparse(args.url).hostname
    if host not in LOCAL_HOSTS:
        parser.error(f"this load generator only targets this machine (127.0.0.1), not {host}")
    if args.requests > 10_000 or args.max_seconds > 300:
        parser.error("keep it bounded: --requests <= 10000 and --max-seconds <= 300")
    if args.mode == "open" and (
        max(args.rates) > 2000 or min(args.rates) <= 0 or not 0 < args.seconds <= 300
    ):
        parser.error("keep it bounded: 0 < --rates <= 2000 and 0 < --seconds <= 300")
    res = httpx.get(f"{args.url}/v1/model", timeout=10)
    try:
        model = res.json() if res.status_code == 200 else {}
    except ValueError:
        model = {}
    # A peer server (benchmarks/peers/) has no /v1/model.
    model = {"name": "?", "version": "?", "architecture": "?", **model}
    photos = load_photos(args.photos, args.distinct_photos)
    log.info(
        "model %s %s (%s); %d distinct photos from %s",
        model["name"],
        model["version"],
        model["architecture"],
        len(photos),
        args.photos,
    )
    if args.mode == "open":
        return open_loop(args, model, photos)
    rows = []
    for c in args.concurrency:
        r = asyncio.run(
            run_level(
                args.url, photos, c, args.requests, args.max_seconds, client=args.client or "httpx"
            )
        )
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


def open_loop(args: argparse.Namespace, model: dict, photos: list[tuple[str, bytes]]) -> int:
    """Run each offered rate in turn, print the table and optionally plot it."""
    rows = []
    for i, rate in enumerate(args.rates):
        r = asyncio.run(
            run_open_level(
                args.url,
                photos,
                rate,
                args.seconds,
                seed=args.seed + i,
                timeout=args.timeout,
                client=args.client or "aiohttp",
            )
        )
        log.info(
            "offered %g/s: achieved %.1f/s, p50 %.1f ms, p99 %.1f ms, %d errors, %d timed out",
            rate,
            r.achieved,
            percentile(r.latencies_ms, 50),
            percentile(r.latencies_ms, 99),
            r.errors,
            r.timed_out,
        )
        rows.append(r)
        time.sleep(1.0)  # let the server settle between levels
    sys.stdout.write(open_loop_table(rows))
    if args.plot is not None:
        title = (
            f"{model['name']} ({model.get('backend', '?')}), 127.0.0.1, {os.cpu_count()} CPUs; "
            f"open loop, Poisson arrivals, {args.seconds:g} s per rate, {len(photos)} photos"
        )
        plot_open_loop(rows, args.plot, title)
        log.info("wrote %s", args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
