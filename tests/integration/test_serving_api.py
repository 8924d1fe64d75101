"""The HTTP API against a real `fisheye serve` process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers.bombs import dds_named_jpg, gif_canvas
from tests.helpers.bundles import TINY_INPUT_SIZE, TINY_METRICS, TINY_NAME
from tests.helpers.paths import FISH_CLASSES, require_default_model, val_photos
from tests.helpers.photos import encode, photo, truncated_jpeg
from tests.helpers.server import Server, run_server

pytestmark = pytest.mark.integration
NOISE_SIZE = (64, 48)


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serving-api")
    with run_server(tiny_bundle, tmp, FISHEYE_MAX_UPLOAD_MB="2", FISHEYE_MAX_FILES="8") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _jpeg(seed: int = 0) -> bytes:
    return encode(photo(seed, NOISE_SIZE), "JPEG", quality=90)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise
    return encode(photo(0, (80, 40)), "JPEG", exif=exif.tobytes())


def _sixteen_bit() -> bytes:
    arr = np.random.default_rng(1).integers(0, 65535, size=(40, 60), dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    return encode(img, "PNG")


def _bomb() -> bytes:
    # 12,000 x 12,000 = 144 M pixels of one colour: a few kB on the wire.
    return encode(Image.new("1", (12_000, 12_000)), "PNG")


ODD_IMAGES = {
    "grayscale.png": lambda: encode(photo(0, NOISE_SIZE, "L"), "PNG"),
    "rgba.png": lambda: encode(photo(0, NOISE_SIZE, "RGBA"), "PNG"),
    "palette.png": lambda: encode(photo(0, NOISE_SIZE, "P"), "PNG"),
    "gray16.png": _sixteen_bit,
    "cmyk.jpg": lambda: encode(photo(0, NOISE_SIZE, "CMYK"), "JPEG"),
    "exif-rotated.jpg": _exif_rotated,
    "photo.webp": lambda: encode(photo(0, NOISE_SIZE), "WEBP"),
    "tiny-1x1.png": lambda: encode(Image.new("RGB", (1, 1), "red"), "PNG"),
}


def _check_prediction(body: dict, server_model: dict) -> None:
    assert uuid.UUID(body["id"]).version == 4
    assert body["label"] in FISH_CLASSES
    assert 0.0 <= body["confidence"] <= 1.0
    assert [t["label"] for t in body["top_k"]][0] == body["label"]
    assert len(body["top_k"]) == 5
    probs = [t["probability"] for t in body["top_k"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-4
    assert body["model"] == server_model
    assert body["latency_ms"] >= 0


@pytest.fixture(scope="module")
def model_ref(client: httpx.Client) -> dict:
    info = client.get("/v1/model").json()
    assert info["backend"] in ("torch", "onnx", "onnx-int8")
    return {"name": info["name"], "version": info["version"], "backend": info["backend"]}


def test_health_ready_and_model(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    info = client.get("/v1/model").json()
    assert info["classes"] == list(FISH_CLASSES)
    assert info["name"] == TINY_NAME and info["architecture"] == "small_cnn"
    assert info["preprocessing"]["input_size"] == TINY_INPUT_SIZE
    assert info["metrics"] == TINY_METRICS
    assert info["created"]


def test_page_is_self_contained(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'href="/docs"' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        res = client.get(asset)
        assert res.status_code == 200
        assert "http://" not in res.text and "https://" not in res.text, asset
    assert "https://" not in page.text and "http://" not in page.text
    assert client.get("/docs").status_code == 200


def test_predict_real_photos(client: httpx.Client, model_ref: dict) -> None:
    for _, path in val_photos(per_class=1):
        res = client.post("/v1/predict", files={"file": (path.name, path.read_bytes())})
        assert res.status_code == 200, res.text
        _check_prediction(res.json(), model_ref)


@pytest.mark.parametrize("name", sorted(ODD_IMAGES))
def test_odd_valid_images_are_accepted(client: httpx.Client, model_ref: dict, name: str) -> None:
    res = client.post("/v1/predict", files={"file": (name, ODD_IMAGES[name]())})
    assert res.status_code == 200, res.text
    _check_prediction(res.json(), model_ref)


BAD_UPLOADS = {
    "empty": ({"files": {"file": ("empty.jpg", b"")}}, {422}),
    "text": ({"files": {"file": ("notes.jpg", b"this is not a photo\n" * 20)}}, {415}),
    "truncated-jpeg": ({"files": {"file": ("half.jpg", truncated_jpeg(0, (128, 128)))}}, {422}),
    "decompression-bomb": ({"files": {"file": ("bomb.png", _bomb())}}, {413}),
    "missing-field": ({"files": {"photo": ("a.jpg", _jpeg())}}, {422}),
    "no-body": ({}, {422}),
    # Only multipart bodies are read: any other Content-Type is refused before parsing.
    "json-body": ({"json": {"file": "a.jpg"}}, {415}),
    "form-field-not-file": ({"data": {"file": "not a file"}}, {415}),
    "multipart-field-not-file": ({"files": {"file": (None, "not a file")}}, {422}),
    "over-limit": ({"files": {"file": ("big.jpg", b"\xff" * (3 * 1024 * 1024))}}, {413}),
    # Pillow's DDS reader would raise NotImplementedError on it: FishEye never runs it.
    "dds-named-jpg": ({"files": {"file": ("fish.jpg", dds_named_jpg())}}, {415}),
    "gif": ({"files": {"file": ("canvas.gif", gif_canvas())}}, {415}),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_input_is_a_json_4xx(client: httpx.Client, case: str) -> None:
    kwargs, expected = BAD_UPLOADS[case]
    res = client.post("/v1/predict", **kwargs)
    assert res.status_code in expected, (res.status_code, res.text)
    body = res.json()
    assert set(body) == {"error", "detail"} and body["error"] and body["detail"]
    # The server keeps serving after every client mistake.
    assert client.get("/healthz").status_code == 200
    ok = client.post("/v1/predict", files={"file": ("ok.jpg", _jpeg())})
    assert ok.status_code == 200


def test_streamed_body_over_limit_is_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count as it reads
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
        for _ in range(64):  # 4 MiB, over the 2 MiB limit
            yield b"\xff" * 65536
        yield b"\r\n--xyz--\r\n"

    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    res = client.post("/v1/predict", content=chunks(), headers=headers)
    assert res.status_code == 413, res.text
    assert res.json()["error"]


def test_other_client_mistakes(client: httpx.Client) -> None:
    assert client.get("/v1/nothing-here").status_code == 404
    assert client.get("/v1/nothing-here").json()["error"] == "not_found"
    res = client.get("/v1/predict")
    assert res.status_code == 405 and res.json()["error"]


def test_batch_keeps_order_and_reports_bad_files_inline(
    client: httpx.Client, model_ref: dict
) -> None:
    photos = [(f"p{i}.jpg", _jpeg(seed=i)) for i in range(4)]
    files = [("files", photos[0]), ("files", photos[1]), ("files", ("bad.txt", b"nope"))]
    files += [("files", ("empty.png", b"")), ("files", photos[2]), ("files", photos[3])]
    res = client.post("/v1/predict/batch", files=files)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["model"] == model_ref and body["count"] == 6
    results = body["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["filename"] for r in results] == ["p0.jpg", "p1.jpg", "bad.txt", "empty.png"] + [
        "p2.jpg",
        "p3.jpg",
    ]
    assert results[2]["error"] == "unsupported_media_type" and results[2]["status"] == 415
    assert results[3]["error"] == "empty_file" and results[3]["status"] == 422
    for r, (name, data) in zip([results[i] for i in (0, 1, 4, 5)], photos, strict=True):
        assert r["error"] is None and r["label"] in FISH_CLASSES
        single = client.post("/v1/predict", files={"file": (name, data)}).json()
        assert single["label"] == r["label"]
        assert single["confidence"] == pytest.approx(r["confidence"], abs=1e-4)


def test_batch_with_a_dds_file_answers_the_good_photo(client: httpx.Client) -> None:
    files = [("files", ("good.jpg", _jpeg(3))), ("files", ("fish.jpg", dds_named_jpg()))]
    res = client.post("/v1/predict/batch", files=files)
    assert res.status_code == 200, res.text
    good, dds = res.json()["results"]
    assert good["label"] and good["status"] == 200
    assert dds["status"] == 415 and dds["error"] == "unsupported_media_type" and not dds["label"]


def test_batch_limits(client: httpx.Client) -> None:
    too_many = [("files", (f"p{i}.jpg", _jpeg(i))) for i in range(9)]  # FISHEYE_MAX_FILES=8
    res = client.post("/v1/predict/batch", files=too_many)
    assert res.status_code == 413 and res.json()["error"] == "too_many_files"
    res = client.post("/v1/predict/batch", files={"photos": ("a.jpg", _jpeg())})
    assert res.status_code == 422 and res.json()["error"] == "invalid_request"


def test_200_concurrent_requests_all_succeed(client: httpx.Client, server: Server) -> None:
    photos = [_jpeg(seed=i) for i in range(8)]

    async def main() -> list[int]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as ac:

            async def one(i: int) -> int:
                data = photos[i % len(photos)]
                res = await ac.post("/v1/predict", files={"file": (f"{i}.jpg", data)})
                return res.status_code

            return await asyncio.gather(*(one(i) for i in range(200)))

    statuses = asyncio.run(main())
    assert statuses.count(200) == 200, {s: statuses.count(s) for s in set(statuses)}
    # Concurrent requests were served in shared model calls.
    metrics = client.get("/metrics").text
    sums = [ln for ln in metrics.splitlines() if ln.startswith("fisheye_batch_size_sum")]
    counts = [ln for ln in metrics.splitlines() if ln.startswith("fisheye_batch_size_count")]
    assert float(sums[0].split()[-1]) > float(counts[0].split()[-1])


def test_metrics_exposition(client: httpx.Client) -> None:
    client.post("/v1/predict", files={"file": ("m.jpg", _jpeg())})
    client.post("/v1/predict", files={"file": ("m.txt", b"text")})
    res = client.get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    text = res.text
    assert 'fisheye_http_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert 'fisheye_http_requests_total{method="POST",route="/v1/predict",status="415"}' in text
    assert "fisheye_http_request_duration_seconds_bucket" in text
    assert "fisheye_http_requests_in_flight" in text
    assert "fisheye_predictions_total{label=" in text
    assert "fisheye_batch_size_bucket" in text
    assert f'fisheye_model_info{{architecture="small_cnn",name="{TINY_NAME}"' in text
    assert "fisheye_model_ready 1.0" in text


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    model = require_default_model()
    with run_server(model, tmp_path_factory.mktemp("serving-default")) as srv:
        yield srv


def test_default_model_recognises_real_photos(default_server: Server) -> None:
    photos = val_photos(per_class=3)
    right = 0
    with httpx.Client(base_url=default_server.url, timeout=60) as c:
        for label, path in photos:
            res = c.post("/v1/predict", files={"file": (path.name, path.read_bytes())})
            assert res.status_code == 200, res.text
            right += res.json()["label"] == label
    # A floor far below the model's accuracy (the real figure is in docs/serving.md).
    assert right / len(photos) >= 0.6, f"{right} of {len(photos)} right"
