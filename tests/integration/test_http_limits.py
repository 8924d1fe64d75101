"""HTTP limits of a real `fisheye serve` process: bodies after the answer, form fields,
malformed requests, authentication before the body, and the cost of reads under scrapers.

One module-scoped server with a 3 s request timeout, 1 KiB of unread body drained after an
answer, 4 form fields besides the photos, and admin and feedback tokens. Raw sockets play
the slow and malformed clients.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.photos import encode, photo
from tests.helpers.raw_http import closed_while_trickling, connect, read_response
from tests.helpers.server import Server, run_server

pytestmark = pytest.mark.integration

TIMEOUT = 30  # seconds, for every HTTP call: a regression fails, it never hangs the suite
REQUEST_TIMEOUT_S = 3
UNREAD_BYTES = 1024
FORM_FIELDS = 4
ADMIN, FEEDBACK = "admin-secret", "feedback-secret"
BOUNDARY = "limits-boundary"
SECURITY_HEADERS = ("x-content-type-options", "x-frame-options", "content-security-policy")


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("http-limits")
    env = {
        "FISHEYE_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
        "FISHEYE_MAX_UNREAD_BODY_BYTES": str(UNREAD_BYTES),
        "FISHEYE_MAX_FORM_FIELDS": str(FORM_FIELDS),
        "FISHEYE_ADMIN_TOKEN": ADMIN,
        "FISHEYE_FEEDBACK_TOKEN": FEEDBACK,
        "FISHEYE_PREDICTION_DB": str(tmp / "log.sqlite"),
    }
    with run_server(tiny_bundle, tmp, **env) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        yield c


def _request(method: str, path: str, length: int, extra: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


def _form(fields: list[tuple[str, bytes]], photos: int = 1, field: str = "file") -> bytes:
    """A multipart body: text `fields` first, then `photos` small JPEGs."""
    out = b""
    for name, value in fields:
        out += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value
            + b"\r\n"
        )
    for i in range(photos):
        out += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="p{i}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
            ).encode()
            + encode(photo(i, (48, 40)), "JPEG")
            + b"\r\n"
        )
    return out + f"--{BOUNDARY}--\r\n".encode()


def _post_form(client: httpx.Client, path: str, body: bytes) -> httpx.Response:
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    return client.post(path, content=body, headers=headers)


# --- bodies the route does not read -----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/no-such-page", 404),
        ("GET", "/static/style.css", 200),
        ("POST", "/healthz", 405),
        ("GET", "/v1/model", 413),  # a route with a body limit refuses at once
    ],
)
def test_a_long_body_not_read_closes_the_connection_after_the_answer(
    server: Server, method: str, path: str, status: int
) -> None:
    with connect(server.url) as sock:
        sock.sendall(_request(method, path, 10**9) + b"x")
        got, headers, _ = read_response(sock)
        assert got == status
        assert headers.get("connection") == "close"
        # The client trickles the rest of its "gigabyte": the server does not wait for it.
        closed = closed_while_trickling(sock, seconds=20)
    assert closed is not None, "the connection was still open 20 s after the answer"


def test_a_short_body_not_read_must_still_arrive_before_the_deadline(server: Server) -> None:
    with connect(server.url) as sock:
        sock.sendall(_request("GET", "/no-such-page", UNREAD_BYTES // 2) + b"x")
        status, headers, _ = read_response(sock)
        assert status == 404 and headers.get("connection") != "close"
        # At one byte every 0.5 s it would take minutes; the deadline is 3 s from the headers.
        closed = closed_while_trickling(sock, seconds=REQUEST_TIMEOUT_S + 20)
    assert closed is not None, "a trickled body held the connection past the deadline"


def test_a_short_body_not_read_keeps_the_connection_when_it_arrives(server: Server) -> None:
    with connect(server.url) as sock:
        sock.sendall(_request("POST", "/no-such-page", 300))
        assert read_response(sock)[0] == 404
        sock.sendall(b"y" * 300 + _request("GET", "/healthz", 0))
        status, _, body = read_response(sock)
    assert status == 200 and json.loads(body) == {"status": "ok"}


def test_a_chunked_body_not_read_closes_the_connection(server: Server) -> None:
    with connect(server.url) as sock:
        sock.sendall(
            b"POST /no-such-page HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        status, headers, _ = read_response(sock)
        assert status == 404 and headers.get("connection") == "close"
        assert closed_while_trickling(sock, seconds=20) is not None


# --- malformed requests -----------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: twelve\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ],
    ids=["request-line", "header-line", "content-length", "nul-in-path"],
)
def test_a_malformed_request_gets_a_json_400_with_the_security_headers(
    server: Server, request_bytes: bytes
) -> None:
    with connect(server.url) as sock:
        sock.sendall(request_bytes)
        status, headers, body = read_response(sock)
    assert status == 400
    assert json.loads(body)["error"] == "bad_request"
    for name in SECURITY_HEADERS:
        assert name in headers, name
    assert headers["connection"] == "close"


# --- multipart form fields --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "field", "photos"),
    [("/v1/predict", "file", 1), ("/v1/predict/batch", "files", 3)],
)
def test_form_fields_besides_the_photos_are_bounded_in_number(
    client: httpx.Client, path: str, field: str, photos: int
) -> None:
    within = [(f"note{i}", b"v") for i in range(FORM_FIELDS)]
    assert _post_form(client, path, _form(within, photos, field)).status_code == 200
    res = _post_form(client, path, _form([*within, ("one-more", b"v")], photos, field))
    assert res.status_code == 413, res.text
    assert res.json()["error"] == "too_many_fields"
    assert str(FORM_FIELDS) in res.json()["detail"]


def test_a_flood_of_tiny_fields_is_refused_early_and_the_server_stays_responsive(
    client: httpx.Client,
) -> None:
    body = _form([("n", b"v")] * 50_000, 1, "files")
    res = _post_form(client, "/v1/predict/batch", body)
    assert res.status_code == 413 and res.json()["error"] == "too_many_fields"
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        [("note", b"v" * 70_000)],  # one long value
        [(f"n{i}", b"v" * 20_000) for i in range(4)],  # several within the count
    ],
    ids=["long-value", "many-values"],
)
def test_form_fields_and_part_headers_are_bounded_in_bytes(
    client: httpx.Client, fields: list[tuple[str, bytes]]
) -> None:
    res = _post_form(client, "/v1/predict", _form(fields))
    assert res.status_code == 413, res.text
    assert res.json()["error"] == "form_too_large"


def test_a_part_header_over_the_parser_limit_is_refused(client: httpx.Client) -> None:
    res = _post_form(client, "/v1/predict", _form([("x" * 70_000, b"v")]))
    assert res.status_code == 422, res.text
    assert "header" in res.json()["detail"]


# --- authentication before the body -------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/admin/model", "/v1/admin/challenger", "/v1/feedback"])
@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'{"unexpected": 1}', "application/json"),
        (b"x" * 200_000, "application/json"),  # over the body limit
        (b"a=b", "application/x-www-form-urlencoded"),  # the wrong content type
    ],
    ids=["malformed", "invalid", "too-large", "wrong-type"],
)
def test_an_anonymous_client_gets_401_whatever_the_body(
    client: httpx.Client, path: str, content: bytes, content_type: str
) -> None:
    headers = {"Content-Type": content_type}
    res = client.post(path, content=content, headers=headers)
    assert res.status_code == 401, res.text
    assert res.headers["www-authenticate"] == "Bearer"
    wrong = client.post(path, content=content, headers={**headers, "X-API-Key": "guess"})
    assert wrong.status_code == 403, wrong.text


@pytest.mark.parametrize(
    ("path", "token"), [("/v1/admin/model", ADMIN), ("/v1/feedback", FEEDBACK)]
)
def test_with_the_token_a_malformed_body_is_still_a_422(
    client: httpx.Client, path: str, token: str
) -> None:
    res = client.post(
        path,
        content=b"{not json",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    assert res.status_code == 422, res.text


# --- reads under scrapers ---------------------------------------------------------------


def test_concurrent_scrapes_and_summaries_all_get_full_answers(
    server: Server, client: httpx.Client
) -> None:
    assert _post_form(client, "/v1/predict", _form([])).status_code == 200

    def get(path: str) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
            return c.get(path)

    paths = ["/metrics"] * 24 + ["/v1/monitoring/summary?window=1h"] * 24
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(get, paths))
    assert all(res.status_code == 200 for res in answers)
    scrapes = [res.text for res in answers[:24]]
    assert all("fisheye_http_requests_total{" in text for text in scrapes)
    summaries = [res.json() for res in answers[24:]]
    assert {s["predictions"] for s in summaries} == {summaries[0]["predictions"]}
    assert summaries[0]["predictions"] >= 1


def test_a_scrape_after_a_request_counts_it(client: httpx.Client) -> None:
    def served() -> float:
        for line in client.get("/metrics").text.splitlines():
            if (
                line.startswith("fisheye_http_requests_total{")
                and 'route="/v1/model"' in line
                and 'method="GET"' in line
                and 'status="200"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = served()
    client.get("/v1/model")
    assert served() == before + 1
