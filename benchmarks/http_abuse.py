"""HTTP-level abuse of a running FishEye server: held connections, multipart floods, scrapers.

    FISHEYE_ADMIN_TOKEN=a FISHEYE_FEEDBACK_TOKEN=f fisheye serve --model models/default &
    python benchmarks/http_abuse.py --url http://127.0.0.1:8000 all

Scenarios (each prints its figures):

- `held`: 64 connections (half GET of an unknown path, half GET of a static file) declare a
  body of 1e9 bytes (or, with --declared, another size), read the answer, then send one body
  byte every 2 s; prints how many are still open at each checkpoint.
- `multipart`: 4 clients send one request after another, each of about 174,000 tiny text
  fields and a photo, to /v1/predict (or /v1/predict/batch), while a probe times GET
  /healthz every 50 ms; prints the probe's p50 / p95 / max and the flood's status codes.
- `scrapers`: one client sends real photos to /v1/predict one after another, alone and
  then beside 16 and 64 clients that scrape /metrics, or GET /v1/monitoring/summary, in a
  loop; prints the predictions' p50 and p95.
- `minor`: a malformed request line, a WebSocket upgrade, and malformed JSON sent without a
  token to the admin and feedback routes; prints each status and whether the security
  headers came with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import random
import select
import socket
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = ROOT.parent / "shared" / "data" / "fish-256" / "val"
BOUNDARY = "x"  # short: 174,000 fields fit under the 10 MiB limit of /v1/predict


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def _photo(folder: Path) -> bytes:
    paths = sorted(folder.rglob("*.jpg"))
    if not paths:
        raise SystemExit(f"no photos under {folder}")
    return random.Random(0).choice(paths).read_bytes()


def _percentiles(values: list[float]) -> str:
    if not values:
        return "no answers"
    values = sorted(values)
    p50 = statistics.median(values)
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    return f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {values[-1]:.1f} ms (n={len(values)})"


# --- held connections ------------------------------------------------------------------


def _is_open(sock: socket.socket) -> bool:
    """Whether the server still holds the connection (no EOF, no reset)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        while readable:
            data = sock.recv(65536)
            if not data:
                return False
            readable, _, _ = select.select([sock], [], [], 0)
        return True
    except OSError:
        return False


def held(url: str, connections: int, declared: int, checkpoints: list[float]) -> None:
    """Connections still open after their answer while the client trickles the body."""
    host, port = _address(url)
    socks = []
    for i in range(connections):
        path = "/no-such-page" if i % 2 == 0 else "/static/style.css"
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {declared}\r\n\r\n".encode()
        )
        socks.append(s)
    time.sleep(0.5)
    statuses = Counter()
    for s in socks:
        s.setblocking(False)
        try:
            statuses[s.recv(65536).split(b" ", 2)[1].decode()] += 1
        except (OSError, IndexError):
            statuses["none"] += 1
    print(f"held: {connections} connections declared {declared:,} body bytes")
    print(f"held: answers {dict(statuses)}")
    start = time.monotonic()
    pending = sorted(checkpoints)
    while pending:
        for s in socks:
            with contextlib.suppress(OSError):
                s.send(b"x")
        elapsed = time.monotonic() - start
        while pending and elapsed >= pending[0]:
            still = sum(_is_open(s) for s in socks)
            print(f"held: after {pending.pop(0):g} s, {still} of {connections} connections open")
        time.sleep(2.0)
    for s in socks:
        s.close()


# --- multipart flood -------------------------------------------------------------------


def _flood_body(fields: int, photo: bytes, field: str) -> bytes:
    tiny = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="n"\r\n\r\nv\r\n'.encode()
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="p.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()
    return tiny * fields + head + photo + f"\r\n--{BOUNDARY}--\r\n".encode()


def _flood(url: str, route: str, body: bytes, clients: int, stop, out) -> None:
    """Clients (threads) that post `body` one request after another until `stop`."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    statuses: Counter[str] = Counter()

    def one() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while not stop.is_set():
                try:
                    res = client.post(route, content=body, headers=headers)
                    statuses[str(res.status_code)] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(dict(statuses))


def _probe(url: str, seconds: float) -> list[float]:
    """GET /healthz latencies, one request every 50 ms for `seconds`."""
    out = []
    until = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            client.get("/healthz")
            out.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)
    return out


def multipart(
    url: str, photo: bytes, clients: int, fields: int, seconds: float, batch: bool
) -> None:
    """/healthz latency while clients (another process) send bodies of many tiny fields."""
    route, field = ("/v1/predict/batch", "files") if batch else ("/v1/predict", "file")
    body = _flood_body(fields, photo, field)
    quiet = _probe(url, 3)
    stop, out = multiprocessing.Event(), multiprocessing.Queue()
    proc = multiprocessing.Process(target=_flood, args=(url, route, body, clients, stop, out))
    proc.start()
    busy = _probe(url, seconds)
    stop.set()
    statuses = out.get(timeout=180)
    proc.join(30)
    size = len(body) / 2**20
    print(f"multipart: {clients} clients x {fields:,} tiny fields ({size:.1f} MiB) to {route}")
    print(f"multipart: /healthz alone       {_percentiles(quiet)}")
    print(f"multipart: /healthz under flood {_percentiles(busy)}")
    print(f"multipart: flood answers {statuses}")


# --- scrapers --------------------------------------------------------------------------


def _scrape(url: str, path: str, clients: int, stop: multiprocessing.Event) -> None:
    async def one(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                await client.get(path)
            except httpx.HTTPError:
                await asyncio.sleep(0.01)

    async def main() -> None:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            await asyncio.gather(*(one(client) for _ in range(clients)))

    asyncio.run(main())


def _predict_latencies(url: str, photo: bytes, seconds: float) -> list[float]:
    out = []
    until = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            res = client.post("/v1/predict", files={"file": ("p.jpg", photo, "image/jpeg")})
            if res.status_code == 200:
                out.append((time.perf_counter() - t0) * 1000)
    return out


def scrapers(url: str, photo: bytes, levels: list[int], seconds: float) -> None:
    """Prediction latency beside clients that scrape /metrics or read the summary."""
    _predict_latencies(url, photo, 2)  # warm-up
    print(f"scrapers: predict alone {_percentiles(_predict_latencies(url, photo, seconds))}")
    for path in ("/metrics", "/v1/monitoring/summary?window=24h"):
        for n in levels:
            stop = multiprocessing.Event()
            proc = multiprocessing.Process(target=_scrape, args=(url, path, n, stop), daemon=True)
            proc.start()
            time.sleep(1.0)
            lat = _predict_latencies(url, photo, seconds)
            stop.set()
            proc.join(30)
            print(f"scrapers: predict beside {n} x {path}: {_percentiles(lat)}")


# --- minor -----------------------------------------------------------------------------


def _raw(url: str, request: bytes) -> tuple[str, bool]:
    """The status of a raw request's answer and whether it had the security headers."""
    with socket.create_connection(_address(url), timeout=10) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    status = head.split(b" ", 2)[1].decode() if head else "none"
    return status, b"x-content-type-options: nosniff" in head and b"content-security-policy" in head


def minor(url: str) -> None:
    """uvicorn's own errors and the order of authentication and body validation."""
    host = _address(url)[0]
    for name, request in (
        ("malformed request line", b"GARBAGE\r\n\r\n"),
        ("header without a colon", f"GET / HTTP/1.1\r\nHost: {host}\r\nbroken\r\n\r\n".encode()),
        (
            "websocket upgrade",
            (
                f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode(),
        ),
    ):
        status, secured = _raw(url, request)
        print(f"minor: {name}: {status}, security headers {'yes' if secured else 'NO'}")
    with httpx.Client(base_url=url, timeout=30) as client:
        for path in ("/v1/admin/model", "/v1/feedback"):
            res = client.post(
                path, content=b"{not json", headers={"Content-Type": "application/json"}
            )
            print(f"minor: malformed JSON to {path} without a token: {res.status_code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["held", "multipart", "scrapers", "minor", "all"])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--declared", type=int, default=1_000_000_000, help="Content-Length")
    parser.add_argument("--checkpoints", type=float, nargs="+", default=[5, 35, 60])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--fields", type=int, default=174_000)
    parser.add_argument("--batch", action="store_true", help="flood /v1/predict/batch")
    parser.add_argument("--levels", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    run = {args.scenario} if args.scenario != "all" else {"minor", "held", "multipart", "scrapers"}
    if "minor" in run:
        minor(args.url)
    if "held" in run:
        held(args.url, args.connections, args.declared, args.checkpoints)
    if "multipart" in run:
        multipart(
            args.url, _photo(args.photos), args.clients, args.fields, args.seconds, args.batch
        )
    if "scrapers" in run:
        scrapers(args.url, _photo(args.photos), args.levels, args.seconds)


if __name__ == "__main__":
    main()
