"""The hardened server, as a real `fisheye serve` process: limits, hygiene, bundles, feedback.

Module-scoped servers, each started once: `server` (the monitored bundle, pinned by its
sha256, TMPDIR pointing at an empty folder), `limits_server` (one request at a time, short
request and keep-alive timeouts, small headers) and `restricted_server` (CORS for one
origin, no API docs, a 1 MiB upload budget); tests of broken bundles start their own. Raw
sockets play the slow and stalled clients.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from fisheye.bundle import BUNDLE_JSON, bundle_sha256
from tests.helpers.bundles import rewrite_meta
from tests.helpers.paths import FISH_CLASSES
from tests.helpers.photos import encode, photo
from tests.helpers.raw_http import read_response
from tests.helpers.server import Server, free_port, run_server

pytestmark = pytest.mark.integration

TIMEOUT = 30  # seconds, for every HTTP call: a regression fails, it never hangs the suite
MB = 1024 * 1024
BOUNDARY = "fisheye-test-boundary"
CORS_ORIGIN = "https://quality.example.com"
LIMITS_TIMEOUT_S = 2.0  # FISHEYE_REQUEST_TIMEOUT_S of `limits_server`
LIMITS_HEADER_BYTES = 4096  # FISHEYE_MAX_HEADER_BYTES of `limits_server`
HEX_RUN = re.compile(r"[0-9a-fA-F]{12,}")


# --- servers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tmpdir_of_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The empty folder `server` gets as TMPDIR: uploads must never land in it."""
    return tmp_path_factory.mktemp("server-tmpdir")


@pytest.fixture(scope="module")
def server(
    monitored_bundle: Path, tmpdir_of_server: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The monitored bundle, pinned by its sha256, with its own prediction log (log.sqlite)."""
    tmp = tmp_path_factory.mktemp("hardened-server")
    env = {
        "TMPDIR": str(tmpdir_of_server),
        "FISHEYE_PREDICTION_DB": str(tmp / "log.sqlite"),
        "FISHEYE_MODEL_SHA256": bundle_sha256(monitored_bundle),
        "FISHEYE_MAX_UPLOAD_MB": "2",
    }
    with run_server(monitored_bundle, tmp, **env) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture(scope="module")
def limits_server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One request at a time, 2 s per request, 1 s keep-alive, 4 KiB of headers."""
    tmp = tmp_path_factory.mktemp("limits-server")
    env = {
        "FISHEYE_MAX_CONCURRENT_REQUESTS": "1",
        "FISHEYE_REQUEST_TIMEOUT_S": str(LIMITS_TIMEOUT_S),
        "FISHEYE_KEEP_ALIVE_S": "1",
        "FISHEYE_MAX_HEADER_BYTES": str(LIMITS_HEADER_BYTES),
        "FISHEYE_PREDICTION_DB": str(tmp / "log.sqlite"),
    }
    with run_server(tiny_bundle, tmp, **env) as srv:
        yield srv


@pytest.fixture(scope="module")
def restricted_server(
    tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """CORS for one origin, no API docs, 1 MiB photos within a 1 MiB shared upload budget."""
    tmp = tmp_path_factory.mktemp("restricted-server")
    env = {
        "FISHEYE_CORS_ORIGINS": json.dumps([CORS_ORIGIN]),
        "FISHEYE_API_DOCS": "false",
        "FISHEYE_MAX_UPLOAD_MB": "1",
        "FISHEYE_MAX_UPLOAD_MEMORY_MB": "1",
        "FISHEYE_PREDICTION_DB": str(tmp / "log.sqlite"),
    }
    with run_server(tiny_bundle, tmp, **env) as srv:
        yield srv


# --- helpers ---------------------------------------------------------------------------


def _jpeg(seed: int, size: tuple[int, int] = (64, 48), quality: int = 90) -> bytes:
    return encode(photo(seed, size), "JPEG", quality=quality)


def _connect(server: Server, timeout: float = 10.0) -> socket.socket:
    url = urlsplit(server.url)
    assert url.hostname is not None and url.port is not None
    return socket.create_connection((url.hostname, url.port), timeout=timeout)


def _part_head(field: str = "file", filename: str = "photo.jpg") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()


def _send_partial_upload(
    sock: socket.socket, sent: bytes, total: int, path: str = "/v1/predict"
) -> None:
    """Send a multipart POST that announces `total` body bytes but sends only `sent`."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {total}\r\n\r\n"
    ).encode()
    sock.sendall(head + sent)


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes `sock` (None if it is still open after `seconds`)."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            if time.monotonic() - start > seconds:
                return None
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def _metric_values(client: httpx.Client, name: str) -> dict[str, float]:
    """{labels: value} of one Prometheus metric ('' for an unlabelled one)."""
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            key, value = line.rsplit(" ", 1)
            out[key[len(name) :]] = float(value)
    return out


def _assert_security_headers(res: httpx.Response) -> None:
    h = res.headers
    where = f"{res.request.method} {res.request.url.path} -> {res.status_code}"
    assert h.get("x-content-type-options") == "nosniff", where
    assert h.get("x-frame-options") == "DENY", where
    assert h.get("referrer-policy") == "no-referrer", where
    assert h.get("cross-origin-opener-policy") == "same-origin", where
    csp = h.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp, where
    assert "default-src 'self'" in csp and "script-src 'self'" in csp, where
    assert "'unsafe-eval'" not in csp, where
    assert "server" not in h, where


# --- 1. uploads ------------------------------------------------------------------------


def test_a_batch_of_one_file_too_many_is_413(client: httpx.Client) -> None:
    photos = [("files", (f"p{i}.jpg", _jpeg(i))) for i in range(33)]
    res = client.post("/v1/predict/batch", files=photos)
    assert res.status_code == 413, res.text
    assert res.json()["error"] == "too_many_files"
    assert "32" in res.json()["detail"]
    res = client.post("/v1/predict/batch", files=photos[:32])  # the limit itself is fine
    assert res.status_code == 200, res.text
    assert res.json()["count"] == 32


def test_a_file_over_the_size_limit_in_a_batch_is_413(client: httpx.Client) -> None:
    big = b"\xff\xd8" + os.urandom(2 * MB + 1024)  # just over FISHEYE_MAX_UPLOAD_MB=2
    small = [("files", ("a.jpg", _jpeg(1))), ("files", ("b.jpg", _jpeg(2)))]
    res = client.post("/v1/predict/batch", files=[small[0], ("files", ("huge.jpg", big)), small[1]])
    assert res.status_code == 413, res.text
    body = res.json()
    assert body["error"] == "file_too_large" and "huge.jpg" in body["detail"]
    assert client.post("/v1/predict/batch", files=small).status_code == 200


def _bytes_written(pid: int) -> int:
    """Bytes the process has passed to write() and friends (files, sockets, pipes)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise KeyError("wchar")


@pytest.fixture(scope="module")
def threads_server(
    monitored_bundle: Path, tmpdir_of_server: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The `server` set-up with decodes in threads: decode worker processes get each photo
    through a pipe, which /proc counts as written bytes, and the upload parser is what
    `test_uploads_never_reach_the_disk` measures."""
    tmp = tmp_path_factory.mktemp("threads-server")
    env = {
        "TMPDIR": str(tmpdir_of_server),
        "FISHEYE_PREDICTION_DB": str(tmp / "log.sqlite"),
        "FISHEYE_MAX_UPLOAD_MB": "2",
        "FISHEYE_DECODE_PROCESSES": "false",
    }
    with run_server(monitored_bundle, tmp, **env) as srv:
        yield srv


def test_uploads_never_reach_the_disk(threads_server: Server, tmpdir_of_server: Path) -> None:
    """20 photos over 1 MiB each: a spooling parser would write them under TMPDIR.

    Spooled files are anonymous (O_TMPFILE, or unlinked at once), so an empty TMPDIR alone
    proves little: the test also watches the server's open files while the request runs
    and counts the bytes it writes (its answer and a few log rows are all it may write).
    """
    if not Path(f"/proc/{threads_server.process.pid}/io").is_file():
        pytest.skip("needs Linux /proc to watch the server's files")
    photos = [_jpeg(100 + i, (1000, 1000), quality=95) for i in range(20)]
    total = sum(len(p) for p in photos)
    assert min(len(p) for p in photos) > MB  # over Starlette's 1 MiB in-memory spool
    fd_dir = Path(f"/proc/{threads_server.process.pid}/fd")
    seen: set[str] = set()
    done = threading.Event()

    def watch_open_files() -> None:
        while not done.is_set():
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith(str(tmpdir_of_server)):
                        seen.add(target)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch_open_files, daemon=True)
    before = _bytes_written(threads_server.process.pid)
    watcher.start()
    try:
        res = httpx.post(
            f"{threads_server.url}/v1/predict/batch",
            files=[("files", (f"big{i}.jpg", p)) for i, p in enumerate(photos)],
            timeout=TIMEOUT,
        )
    finally:
        done.set()
        watcher.join(5)
    written = _bytes_written(threads_server.process.pid) - before
    assert res.status_code == 200, res.text
    results = res.json()["results"]
    assert len(results) == 20 and all(r["error"] is None for r in results)
    assert not seen, f"the server opened files in its TMPDIR: {sorted(seen)}"
    assert list(tmpdir_of_server.iterdir()) == []
    assert written < total / 10, f"the server wrote {written:,} bytes for a {total:,} byte upload"


def test_the_shared_upload_budget_answers_503_and_recovers(restricted_server: Server) -> None:
    """1 MiB for all uploads together: while one upload holds 0.7 MB, another is refused."""
    photo_bytes = _jpeg(7, (760, 760), quality=95)
    assert 0.55 * MB < len(photo_bytes) < MB  # each fits the limit, two do not fit the budget
    files = {"file": ("second.jpg", photo_bytes)}
    body = _part_head() + photo_bytes + f"\r\n--{BOUNDARY}--\r\n".encode()
    held = _connect(restricted_server)
    try:
        _send_partial_upload(held, body[:-1024], len(body))  # stalls 1 kB before its end
        with httpx.Client(base_url=restricted_server.url, timeout=TIMEOUT) as c:
            deadline = time.monotonic() + 10
            while True:  # the held upload's bytes count once the server has read them
                res = c.post("/v1/predict", files=files)
                if res.status_code == 503 or time.monotonic() > deadline:
                    break
                assert res.status_code == 200, res.text
                time.sleep(0.1)
            assert res.status_code == 503, res.text
            assert res.json()["error"] == "overloaded" and res.headers["retry-after"] == "1"
            # What still fits is served, and so are the probes.
            assert c.post("/v1/predict", files={"file": ("s.jpg", _jpeg(8))}).status_code == 200
            assert c.get("/healthz").status_code == 200
            held.close()  # the client gives up: its bytes go back to the budget
            deadline = time.monotonic() + 10
            while (res := c.post("/v1/predict", files=files)).status_code == 503:
                assert time.monotonic() < deadline, "the budget was not given back"
                time.sleep(0.1)
            assert res.status_code == 200, res.text
    finally:
        held.close()


# --- 2. server limits ------------------------------------------------------------------


def test_headers_over_the_limit_are_431_json(limits_server: Server) -> None:
    with httpx.Client(base_url=limits_server.url, timeout=TIMEOUT) as c:
        res = c.get("/v1/model", headers={"x-padding": "a" * (LIMITS_HEADER_BYTES + 100)})
        assert res.status_code == 431, res.text
        assert res.json()["error"] == "headers_too_large"
        assert f"{LIMITS_HEADER_BYTES:,}" in res.json()["detail"]
        assert res.headers["connection"] == "close"
        _assert_security_headers(res)
        # Under the configured limit (which is well under the 16 KiB default) is fine.
        ok = c.get("/v1/model", headers={"x-padding": "a" * (LIMITS_HEADER_BYTES // 2)})
        assert ok.status_code == 200


def test_past_the_concurrency_limit_requests_get_503_but_probes_answer(
    limits_server: Server,
) -> None:
    held = _connect(limits_server)
    try:
        _send_partial_upload(held, _part_head() + b"\xff\xd8" + b"\0" * 1000, 100_000)
        with httpx.Client(base_url=limits_server.url, timeout=TIMEOUT) as c:
            deadline = time.monotonic() + LIMITS_TIMEOUT_S * 0.75
            while True:  # until the server has taken the held request in
                res = c.post("/v1/predict", files={"file": ("a.jpg", _jpeg(1))})
                if res.status_code == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert res.status_code == 503, res.text
            assert res.json()["error"] == "overloaded" and res.headers["retry-after"] == "1"
            assert c.get("/v1/model").status_code == 503  # GETs count too
            for probe in ("/healthz", "/readyz", "/metrics"):
                assert c.get(probe).status_code == 200, probe
            # The held request ends (408 at the request timeout) and frees its slot.
            status, _, body = read_response(held)
            assert status == 408 and json.loads(body)["error"] == "request_timeout"
            assert c.post("/v1/predict", files={"file": ("a.jpg", _jpeg(1))}).status_code == 200
    finally:
        held.close()


@pytest.mark.parametrize("client_kind", ["stalled", "dripping"])
def test_a_request_not_done_in_time_is_408(limits_server: Server, client_kind: str) -> None:
    """A body that stops coming, or trickles in, gets 408 at FISHEYE_REQUEST_TIMEOUT_S."""
    sock = _connect(limits_server)
    try:
        start = time.monotonic()
        _send_partial_upload(sock, _part_head() + b"\xff\xd8", 100_000)
        if client_kind == "dripping":  # a byte every 0.2 s: never idle, never done
            sock.settimeout(0.2)
            while True:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(b"\0")
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        break
                except TimeoutError:
                    assert time.monotonic() - start < LIMITS_TIMEOUT_S + 5, "no 408"
            sock.settimeout(10)
        status, headers, body = read_response(sock)
        elapsed = time.monotonic() - start
        assert status == 408, body
        assert json.loads(body)["error"] == "request_timeout"
        assert headers["connection"] == "close" and "server" not in headers
        assert LIMITS_TIMEOUT_S - 0.5 < elapsed < LIMITS_TIMEOUT_S + 4, elapsed
        assert _closed_within(sock, 5) is not None
    finally:
        sock.close()
    assert httpx.get(f"{limits_server.url}/healthz", timeout=TIMEOUT).status_code == 200


def test_idle_keep_alive_connections_are_closed(limits_server: Server) -> None:
    sock = _connect(limits_server)
    try:
        for _ in range(2):  # the connection is kept alive between requests...
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, headers, body = read_response(sock)
            assert status == 200 and json.loads(body) == {"status": "ok"}
            assert headers.get("connection") != "close"
        closed_after = _closed_within(sock, 5)  # ...and closed after 1 s idle (default 5)
        assert closed_after is not None, "the idle connection was kept open"
        assert 0.5 < closed_after < 3, closed_after
    finally:
        sock.close()


def test_a_client_that_never_finishes_its_headers_is_dropped(limits_server: Server) -> None:
    sock = _connect(limits_server)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line
        assert _closed_within(sock, LIMITS_TIMEOUT_S + 2) is not None
    finally:
        sock.close()


def test_a_client_that_sends_nothing_is_dropped(limits_server: Server) -> None:
    sock = _connect(limits_server)
    try:
        assert _closed_within(sock, LIMITS_TIMEOUT_S + 2) is not None
    finally:
        sock.close()


def test_an_endless_header_block_is_cut_off(limits_server: Server) -> None:
    sock = _connect(limits_server)
    line = b"x-padding: " + b"a" * 65536 + b"\r\n"
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(128):  # 8 MiB, 2,000 times the limit, and no end in sight
                sock.sendall(line)
        assert _closed_within(sock, 2) is not None
    finally:
        sock.close()


# --- 3. hygiene ------------------------------------------------------------------------


def test_security_headers_on_pages_json_and_errors(client: httpx.Client) -> None:
    responses = [
        client.get("/"),
        client.get("/docs"),
        client.get("/static/app.js"),
        client.get("/v1/model"),
        client.get("/metrics"),
        client.get("/v1/nothing-here"),
        client.post("/v1/predict", files={"file": ("notes.jpg", b"not a photo")}),
        client.post("/v1/feedback", json={"id": "nope", "label": FISH_CLASSES[0]}),
    ]
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 200, 200, 200, 404, 415, 404], statuses
    for res in responses:
        _assert_security_headers(res)
    assert "'unsafe-inline'" not in responses[0].headers["content-security-policy"]


def test_no_cors_headers_by_default(client: httpx.Client) -> None:
    origin = {"Origin": "https://elsewhere.example.com"}
    res = client.get("/v1/model", headers=origin)
    assert res.status_code == 200
    assert not [h for h in res.headers if h.startswith("access-control-")]
    preflight = client.options(
        "/v1/predict", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code in (404, 405)
    assert not [h for h in preflight.headers if h.startswith("access-control-")]


def test_cors_allows_only_the_configured_origin(restricted_server: Server) -> None:
    other = "https://evil.example.com"
    ask_post = {"Access-Control-Request-Method": "POST"}
    with httpx.Client(base_url=restricted_server.url, timeout=TIMEOUT) as c:
        ok = c.options("/v1/predict", headers={"Origin": CORS_ORIGIN, **ask_post})
        assert ok.status_code == 200, ok.text
        assert ok.headers["access-control-allow-origin"] == CORS_ORIGIN
        assert "POST" in ok.headers["access-control-allow-methods"]
        _assert_security_headers(ok)
        refused = c.options("/v1/predict", headers={"Origin": other, **ask_post})
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        simple = c.get("/v1/model", headers={"Origin": CORS_ORIGIN})
        assert simple.headers["access-control-allow-origin"] == CORS_ORIGIN
        foreign = c.get("/v1/model", headers={"Origin": other})
        assert "access-control-allow-origin" not in foreign.headers


@pytest.mark.parametrize("path", ["/healthz", "/", "/v1/model", "/docs", "/metrics"])
def test_head_works_on_get_routes(client: httpx.Client, path: str) -> None:
    get = client.get(path)
    head = client.head(path)
    assert get.status_code == head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    if path != "/metrics":  # the metrics change between the two requests
        assert int(head.headers["content-length"]) == len(get.content)
    _assert_security_headers(head)


def test_api_docs_are_served_offline(client: httpx.Client) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    html = docs.text
    for asset in ("/static/swagger/swagger-ui-bundle.js", "/static/api-docs.js"):
        assert f'src="{asset}"' in html
        res = client.get(asset)
        assert res.status_code == 200 and "javascript" in res.headers["content-type"], asset
    assert client.get("/static/swagger/swagger-ui.css").status_code == 200
    assert "http://" not in html and "https://" not in html and "cdn" not in html.lower()
    script = client.get("/static/api-docs.js").text
    assert "http://" not in script and "https://" not in script
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    csp = docs.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp


def test_api_docs_can_be_turned_off(restricted_server: Server) -> None:
    with httpx.Client(base_url=restricted_server.url, timeout=TIMEOUT) as c:
        for path in ("/docs", "/openapi.json", "/static/swagger/swagger-ui-bundle.js"):
            res = c.get(path)
            assert res.status_code == 404, path
            assert res.json()["error"] == "not_found", path
        assert c.get("/").status_code == 200  # the page itself stays
        assert c.get("/static/app.js").status_code == 200


def test_swagger_ui_renders_in_a_browser_without_csp_violations(browser, server: Server) -> None:
    page = browser.new_page()
    try:
        page.add_init_script(
            "window.__csp = []; document.addEventListener('securitypolicyviolation', "
            "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(f"{server.url}/docs", timeout=30_000)
        paths = page.locator(".opblock-summary-path")
        paths.filter(has_text="/v1/predict/batch").first.wait_for(timeout=30_000)
        shown = {p.replace("\u200b", "").strip() for p in paths.all_inner_texts()}
        assert {"/v1/predict", "/v1/predict/batch", "/v1/feedback", "/v1/model"} <= shown, shown
        assert page.evaluate("window.__csp") == []
        assert not [m for m in console if "Content Security Policy" in m or "Refused" in m]
        assert not [m for m in console if m.startswith("pageerror")], console
        outside = [u for u in requested if u.startswith("http") and not u.startswith(server.url)]
        assert not outside, outside
    finally:
        page.close()


# --- 4. bundle verification in the server ----------------------------------------------


def test_a_bundle_whose_classes_do_not_fit_is_reported_without_details(
    writable_tiny_bundle: Path, tmp_path: Path
) -> None:
    meta = json.loads((writable_tiny_bundle / BUNDLE_JSON).read_text())
    meta["classes"] = [*FISH_CLASSES, "Goldfish"]
    rewrite_meta(writable_tiny_bundle, meta)  # re-sealed, so the CLI's early check passes

    def failed(res: httpx.Response) -> bool:
        return res.status_code == 503 and "failed" in res.json().get("detail", "")

    with run_server(writable_tiny_bundle, tmp_path, until=failed) as srv:
        with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as c:
            ready = c.get("/readyz")
            predict = c.post("/v1/predict", files={"file": ("a.jpg", _jpeg(1))})
            assert c.get("/healthz").status_code == 200
        log = " ".join(srv.log_path.read_text(errors="replace").split())  # unwrapped
    assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
    assert predict.status_code == 503 and predict.json()["error"] == "model_not_ready"
    for detail in (ready.json()["detail"], predict.json()["detail"]):
        assert "failed verification" in detail, detail
        assert str(writable_tiny_bundle) not in detail and "/tmp" not in detail, detail
        assert "/" not in detail, detail
        assert not HEX_RUN.search(detail), detail
        assert "10 classes" not in detail, detail  # the reason itself is for the log only
    # The operator finds the details in the server log.
    assert "the model gives 9 class scores but bundle.json lists 10 classes" in log, log
    assert writable_tiny_bundle.name in log, log


def _serve(model: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from fisheye.cli import app; app(prog_name='fisheye')"]
    cmd += ["serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(free_port())]
    return subprocess.run(
        cmd,
        env={**os.environ, "FISHEYE_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,  # it checks the pin before it starts: a second or two
    )


def test_serve_refuses_a_bundle_that_is_not_the_pinned_one(tiny_bundle: Path) -> None:
    right = bundle_sha256(tiny_bundle)
    wrong = ("0" if right[0] != "0" else "1") + right[1:]
    done = _serve(tiny_bundle, {"FISHEYE_MODEL_SHA256": wrong})
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0, out
    assert "cannot serve the model bundle" in out and "not the pinned" in out, out
    assert "Traceback" not in out, out
    assert "FishEye serving" not in out, out  # it stopped before starting the server


def test_the_pinned_server_reports_its_bundle_hash(
    client: httpx.Client, monitored_bundle: Path
) -> None:
    assert client.get("/v1/model").json()["sha256"] == bundle_sha256(monitored_bundle)


# --- 5. feedback and metrics -----------------------------------------------------------


def test_feedback_first_write_wins_and_metrics_count_rows(
    client: httpx.Client, server: Server
) -> None:
    preds = []
    for i in range(3):
        res = client.post("/v1/predict", files={"file": (f"f{i}.jpg", _jpeg(200 + i))})
        assert res.status_code == 200, res.text
        preds.append(res.json())
    first, second, _ = preds

    def feedback(pred: dict, label: str) -> httpx.Response:
        return client.post("/v1/feedback", json={"id": pred["id"], "label": label})

    res = feedback(first, first["label"])
    assert res.status_code == 200, res.text
    assert res.json()["new"] is True and res.json()["correct"] is True
    again = feedback(first, first["label"])
    assert again.status_code == 200 and again.json()["new"] is False
    assert again.json()["feedback_count"] == res.json()["feedback_count"]
    other = next(c for c in FISH_CLASSES if c != first["label"])
    conflict = feedback(first, other)
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["error"] == "feedback_exists"
    wrong = next(c for c in FISH_CLASSES if c != second["label"])
    res = feedback(second, wrong)
    assert res.status_code == 200 and res.json()["new"] is True and res.json()["correct"] is False

    counted = _metric_values(client, "fisheye_feedback_total")
    assert counted == {'{correct="true"}': 1.0, '{correct="false"}': 1.0}, counted
    assert _metric_values(client, "fisheye_feedback_corrections_total") == {"": 1.0}
    log_db = server.log_path.parent / "log.sqlite"  # FISHEYE_PREDICTION_DB of `server`
    with contextlib.closing(sqlite3.connect(f"file:{log_db}?mode=ro", uri=True)) as conn:
        rows = dict(conn.execute("SELECT id, label FROM feedback").fetchall())
        corrections = conn.execute(
            "SELECT id, label, recorded FROM feedback_corrections"
        ).fetchall()
    assert sum(counted.values()) == len(rows) == 2
    assert rows[first["id"]] == first["label"]  # the first label is the one that counts
    assert corrections == [(first["id"], other, first["label"])]
