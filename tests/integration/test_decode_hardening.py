"""Costly photos against a real `fisheye serve`: CPU bombs refused, decodes that a request
timeout or a stop really ends, decode slots one client cannot take, graceful stop.

A decode that runs "too long" is made so without depending on the machine's speed: the
server's decode worker processes are paused (SIGSTOP) while they hold the photos.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.bombs import jpeg_repeated_scans, png_many_chunks, tiff_huge_tile
from tests.helpers.photos import encode, photo
from tests.helpers.process_tree import descendants
from tests.helpers.server import Server, run_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform != "linux", reason="reads /proc, pauses processes"),
]
DEADLINE_S = 60  # a safety net only: no verdict depends on how fast this machine is
REQUEST_TIMEOUT_S = 3


def _jpeg(seed: int) -> bytes:
    return encode(photo(seed, (64, 48)), "JPEG")


def _workers(server: Server) -> list[int]:
    """The pids of the server's decode worker processes."""
    found = []
    for pid in descendants(server.process.pid)[1:]:
        with contextlib.suppress(OSError):
            if b"fisheye.serving.decode_worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def _wait_workers(server: Server, client: httpx.Client, n: int = 2) -> list[int]:
    """Decode photos until the server's n worker processes run (they start lazily)."""
    deadline = time.monotonic() + DEADLINE_S
    while len(pids := _workers(server)) < n:
        assert client.post("/v1/predict", files={"file": ("a.jpg", _jpeg(0))}).status_code == 200
        assert time.monotonic() < deadline, "the decode workers did not start"
        time.sleep(0.1)
    return pids


@contextlib.contextmanager
def _paused(pids: list[int]) -> Iterator[None]:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "FISHEYE_DECODE_WORKERS": "2",
        "FISHEYE_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
        "FISHEYE_PREDICTION_LOG": "false",
    }
    with run_server(tiny_bundle, tmp_path_factory.mktemp("decode-hardening"), **env) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=DEADLINE_S) as c:
        yield c


async def _burst(url: str, name: str, data: bytes, n: int) -> Counter[int]:
    async with httpx.AsyncClient(base_url=url, timeout=DEADLINE_S) as c:
        results = await asyncio.gather(
            *(c.post("/v1/predict", files={"file": (name, data)}) for _ in range(n))
        )
    return Counter(r.status_code for r in results)


@pytest.mark.parametrize(
    ("name", "maker"),
    [
        ("last-scan-x1000.jpg", lambda: jpeg_repeated_scans((2000, 1500), repeats=1000)),
        ("first-ac-scan-x300.jpg", lambda: jpeg_repeated_scans((2000, 1500), 300, which=1)),
        ("huge-tile.tif", lambda: tiff_huge_tile(8192, samples=3)),
        ("chunks.png", lambda: png_many_chunks(200_000, "after")),
    ],
)
def test_costly_photos_sent_at_once_are_413_and_real_photos_still_answered(
    server: Server, client: httpx.Client, name: str, maker
) -> None:
    codes = asyncio.run(_burst(server.url, name, maker(), 16))
    assert codes == Counter({413: 16}), server.log_tail()
    res = client.post("/v1/predict", files={"file": ("fish.jpg", _jpeg(1))})
    assert res.status_code == 200
    body = client.post("/v1/predict", files={"file": (name, maker())}).json()
    assert body["error"] == "image_too_large" and "costly" in body["detail"]


def test_a_request_timeout_ends_its_decode_and_frees_the_worker(
    server: Server, client: httpx.Client
) -> None:
    pids = _wait_workers(server, client)
    with _paused(pids):
        res = client.post("/v1/predict", files={"file": ("stuck.jpg", _jpeg(2))})
        assert res.status_code == 408
    # The worker that held the photo was ended, and a new one took its place.
    deadline = time.monotonic() + DEADLINE_S
    while any(_alive(p) for p in pids[:1]) and all(_alive(p) for p in pids):
        assert time.monotonic() < deadline, "no worker was ended"
        time.sleep(0.05)
    for i in range(4):  # both slots decode again
        res = client.post("/v1/predict", files={"file": ("fish.jpg", _jpeg(3 + i))})
        assert res.status_code == 200
    assert len(_wait_workers(server, client)) == 2


def test_one_client_cannot_hold_every_decode_slot(server: Server, client: httpx.Client) -> None:
    _wait_workers(server, client)
    slow = jpeg_repeated_scans((3000, 2000), repeats=40)  # within every limit, but slow
    finished: list[str] = []

    async def attacker() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE_S) as c:

            async def one(i: int) -> None:
                await c.post("/v1/predict", files={"file": (f"slow{i}.jpg", slow)})
                finished.append("attacker")

            await asyncio.gather(*(one(i) for i in range(8)))

    async def other() -> None:
        # Another address (all of 127.0.0.0/8 is this machine): another client.
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(
            base_url=server.url, timeout=DEADLINE_S, transport=transport
        ) as c:
            await asyncio.sleep(0.3)
            res = await c.post("/v1/predict", files={"file": ("fish.jpg", _jpeg(9))})
            assert res.status_code == 200
            finished.append("other")

    async def main() -> None:
        await asyncio.gather(attacker(), other())

    asyncio.run(main())
    # The other client was answered while most of the attacker's photos still waited
    # for the one slot the attacker may hold.
    assert finished.index("other") < 4, finished


@pytest.mark.parametrize("route", ["predict", "batch"])
def test_sigterm_during_a_long_decode_answers_the_request_in_flight(
    tiny_bundle: Path, tmp_path: Path, route: str
) -> None:
    env = {"FISHEYE_DECODE_WORKERS": "2", "FISHEYE_PREDICTION_LOG": "false"}
    with (
        run_server(tiny_bundle, tmp_path, **env) as srv,
        httpx.Client(base_url=srv.url, timeout=DEADLINE_S) as c,
    ):
        pids = _wait_workers(srv, c)
        answers: list[httpx.Response | Exception] = []

        def send() -> None:
            try:
                if route == "predict":
                    files = [("file", ("stuck.jpg", _jpeg(5)))]
                    answers.append(c.post("/v1/predict", files=files))
                else:
                    files = [("files", (f"{i}.jpg", _jpeg(6 + i))) for i in range(2)]
                    answers.append(c.post("/v1/predict/batch", files=files))
            except httpx.HTTPError as exc:
                answers.append(exc)

        with _paused(pids):
            thread = threading.Thread(target=send)
            thread.start()
            time.sleep(1.0)  # the request is in flight, its decode stuck
            srv.process.send_signal(signal.SIGTERM)
            thread.join(DEADLINE_S)
        # uvicorn ends by re-raising the signal it caught once it has stopped.
        assert srv.process.wait(DEADLINE_S) in (0, -signal.SIGTERM)
    (res,) = answers
    assert isinstance(res, httpx.Response), res
    if route == "predict":
        assert res.status_code == 503, res.text
        assert res.json()["error"] == "shutting_down"
        assert res.headers["retry-after"]
    else:
        assert res.status_code == 200, res.text
        items = res.json()["results"]
        assert {item.get("error") for item in items} == {"shutting_down"}
