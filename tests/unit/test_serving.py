"""Unit tests for the serving package: settings, micro-batcher, errors and app wiring."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from fisheye.inference.backend import InferenceOutput
from fisheye.inference.onnx_backend import OnnxBackend
from fisheye.inference.options import PredictionOptions, RuntimeOptions
from fisheye.serving.app import create_app
from fisheye.serving.batcher import BatcherStoppedError, MicroBatcher, QueueFullError
from fisheye.serving.settings import ServeSettings
from tests.helpers.bundles import TINY_NAME, break_int8, measured_elsewhere
from tests.helpers.photos import encode, photo


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FISHEYE_MODEL", str(tmp_path))
    monkeypatch.setenv("FISHEYE_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("FISHEYE_MAX_UPLOAD_MB", "1.5")
    monkeypatch.setenv("FISHEYE_THREADS", "1")
    s = ServeSettings()
    assert s.model == tmp_path and s.max_batch_size == 4 and s.threads == 1
    assert s.max_upload_bytes == int(1.5 * 1024 * 1024)
    assert s.max_files == 32 and s.host == "127.0.0.1" and s.port == 8000


def test_settings_build_the_option_objects_by_name(
    monkeypatch: pytest.MonkeyPatch, exported_bundle: Path
) -> None:
    monkeypatch.setenv("FISHEYE_THREADS", "2")
    monkeypatch.setenv("FISHEYE_MODEL_WORKERS", "2")
    monkeypatch.setenv("FISHEYE_SPIN_WAIT", "false")
    monkeypatch.setenv("FISHEYE_MEMORY_ARENA", "false")
    monkeypatch.setenv("FISHEYE_TOP_K", "3")
    s = ServeSettings()
    runtime = s.runtime_options()
    assert runtime == RuntimeOptions(
        threads=2, batch_threads=1, spin_wait=False, memory_arena=False
    )
    assert s.prediction_options() == PredictionOptions(
        top_k=3, max_pixels=s.max_pixels, max_decode_bytes=s.max_decode_bytes
    )
    backend = OnnxBackend(exported_bundle / "model.onnx", runtime=runtime)
    assert backend.single is backend.session  # no spinning session
    assert backend.session.get_session_options().enable_cpu_mem_arena is False
    assert ServeSettings(monitoring=False).monitor_options() is None


def test_settings_reject_inconsistent_limits() -> None:
    with pytest.raises(ValidationError, match="max_queue"):
        ServeSettings(max_files=10, max_queue=5)
    with pytest.raises(ValidationError):
        ServeSettings(max_batch_size=0)


def _output(probabilities: np.ndarray) -> InferenceOutput:
    """A model output whose features are the row index, to check each job gets its own rows."""
    features = np.arange(len(probabilities), dtype=np.float32)[:, None]
    return InferenceOutput(probabilities, features)


def _double(batch: np.ndarray) -> InferenceOutput:
    return _output(batch.reshape(len(batch), -1)[:, :2] * 2)


def _photos(n: int, value: float = 0.0, width: int = 2) -> np.ndarray:
    """n fake preprocessed photos of shape (1, 1, width) filled with `value`."""
    return np.full((n, 1, 1, width), value, dtype=np.float32)


@pytest.fixture
def batcher() -> Iterator[MicroBatcher]:
    sizes: list[int] = []
    b = MicroBatcher(
        _double,
        max_batch_size=8,
        max_wait_ms=20,
        max_queue=64,
        on_batch=lambda n, s: sizes.append(n),
    )
    b.sizes = sizes  # type: ignore[attr-defined]
    b.start([_photos(1)])
    yield b
    b.stop()


def test_batcher_answers_each_request_in_order_and_batches_them(batcher: MicroBatcher) -> None:
    async def main() -> list[InferenceOutput]:
        jobs = [batcher.submit(_photos(1, float(i))) for i in range(20)]
        return await asyncio.gather(*jobs)

    results = asyncio.run(main())
    assert [len(r) for r in results] == [1] * 20
    assert [float(r.probabilities[0, 0]) for r in results] == [2.0 * i for i in range(20)]
    sizes = batcher.sizes  # type: ignore[attr-defined]  # warm-up calls are not counted
    assert sum(sizes) == 20 and max(sizes) > 1 and max(sizes) <= 8


def test_batcher_keeps_multi_photo_jobs_whole(batcher: MicroBatcher) -> None:
    async def main() -> list[InferenceOutput]:
        return await asyncio.gather(
            batcher.submit(_photos(5, 1.0)), batcher.submit(_photos(6, 2.0))
        )

    a, b = asyncio.run(main())
    assert a.probabilities.shape == (5, 2) and b.probabilities.shape == (6, 2)
    assert a.features.shape == (5, 1) and b.features.shape == (6, 1)
    # Each job gets its own rows of the model output, whether or not they shared a call.
    assert (a.probabilities == 2.0).all() and (b.probabilities == 4.0).all()


def test_batcher_queue_is_bounded() -> None:
    gate = threading.Event()

    def slow(batch: np.ndarray) -> InferenceOutput:
        gate.wait(5)
        return _output(np.zeros((batch.shape[0], 2)))

    b = MicroBatcher(slow, max_batch_size=1, max_wait_ms=0, max_queue=2)
    b.start()

    async def main() -> list:
        first = asyncio.ensure_future(b.submit(_photos(1, width=1)))
        await asyncio.sleep(0.1)  # the worker is now blocked on the first photo
        queued = [asyncio.ensure_future(b.submit(_photos(1, width=1))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await b.submit(_photos(1, width=1))
        assert b.queued == 2
        gate.set()
        return await asyncio.gather(first, *queued)

    assert len(asyncio.run(main())) == 3
    b.stop()
    with pytest.raises(BatcherStoppedError):
        asyncio.run(b.submit(_photos(1, width=1)))


def test_batcher_survives_a_failing_batch() -> None:
    calls = {"n": 0}

    def flaky(batch: np.ndarray) -> InferenceOutput:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return _output(np.zeros((batch.shape[0], 2)))

    b = MicroBatcher(flaky, max_batch_size=4, max_wait_ms=0)
    b.start()
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(b.submit(_photos(1, width=1)))
    assert asyncio.run(b.submit(_photos(1, width=1))).probabilities.shape == (1, 2)
    b.stop()


def test_batcher_warmup_failure_is_raised_by_start() -> None:
    def broken(batch: np.ndarray) -> InferenceOutput:
        raise ValueError("bad weights")

    b = MicroBatcher(broken)
    with pytest.raises(ValueError, match="bad weights"):
        b.start([_photos(1, width=1)])
    assert not b.running


def _wait_ready(client: TestClient, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)


def test_app_predicts_and_matches_the_predictor(tiny_bundle: Path) -> None:
    from fisheye.inference.predictor import Predictor

    img = photo(3)
    expected = Predictor.from_dir(tiny_bundle).predict_images([img])[0].to_dict()
    with TestClient(create_app(ServeSettings(model=tiny_bundle))) as client:
        _wait_ready(client)
        res = client.post("/v1/predict", files={"file": ("a.png", encode(img, "PNG"))})
    assert res.status_code == 200
    body = res.json()
    assert body["label"] == expected["label"]
    assert body["confidence"] == pytest.approx(expected["confidence"], abs=1e-5)
    assert body["model"]["name"] == TINY_NAME


def test_app_reports_a_broken_model_on_readyz(tmp_path: Path) -> None:
    with TestClient(create_app(ServeSettings(model=tmp_path / "missing"))) as client:
        deadline = time.monotonic() + 10
        while "failed" not in client.get("/readyz").text:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
        assert client.get("/healthz").status_code == 200
        res = client.post("/v1/predict", files={"file": ("a.jpg", encode(photo(1)))})
        assert res.status_code == 503 and res.json()["error"] == "model_not_ready"


def test_app_answers_503_with_retry_after_when_the_queue_is_full(tiny_bundle: Path) -> None:
    app = create_app(ServeSettings(model=tiny_bundle))
    with TestClient(app) as client:
        _wait_ready(client)

        async def full(inputs: np.ndarray) -> InferenceOutput:
            raise QueueFullError("256 photos are already waiting (limit 256)")

        app.state.serving.batcher.submit = full
        res = client.post("/v1/predict", files={"file": ("a.jpg", encode(photo(1)))})
        assert res.status_code == 503
        assert res.headers["retry-after"] == "1" and res.json()["error"] == "overloaded"
        assert (
            'fisheye_rejected_photos_total{reason="queue_full"} 1.0' in client.get("/metrics").text
        )


def test_app_refuses_bodies_of_the_wrong_media_type(tiny_bundle: Path) -> None:
    """Predictions take multipart uploads, feedback takes JSON: anything else is a JSON 415."""
    with TestClient(create_app(ServeSettings(model=tiny_bundle))) as client:
        _wait_ready(client)
        for path, kwargs in (
            ("/v1/predict", {"json": {"file": "a.jpg"}}),
            ("/v1/predict/batch", {"data": {"files": "a.jpg"}}),
            ("/v1/feedback", {"data": {"id": "x", "label": "Trout"}}),
        ):
            res = client.post(path, **kwargs)
            assert res.status_code == 415, (path, res.text)
            assert res.json()["error"] == "unsupported_media_type", path
        # The right media type still gets through to the endpoint.
        res = client.post("/v1/predict", files={"file": ("a.jpg", encode(photo(1)))})
        assert res.status_code == 200, res.text


def test_app_says_when_int8_fails_its_host_check(int8_bundle: Path) -> None:
    break_int8(int8_bundle)
    measured_elsewhere(int8_bundle)
    with TestClient(create_app(ServeSettings(model=int8_bundle))) as client:
        _wait_ready(client)
        ready = client.get("/readyz").json()
        assert ready["backend"] == "onnx" and ready["backend_status"] == "fallback"
        assert "onnx-int8 failed its host check" in ready["detail"]
        info = client.get("/v1/model").json()
        assert info["backend"] == "onnx"
        selection = info["backend_selection"]
        assert selection["requested"] == "auto" and selection["fallback_from"] == "onnx-int8"
        assert selection["checks"][0]["status"] == "failed"
        assert "fisheye_backend_fallback 1.0" in client.get("/metrics").text
        res = client.post("/v1/predict", files={"file": ("a.png", encode(photo(1), "PNG"))})
        assert res.status_code == 200 and res.json()["model"]["backend"] == "onnx"


def test_app_serves_int8_where_it_holds(int8_bundle: Path) -> None:
    with TestClient(create_app(ServeSettings(model=int8_bundle))) as client:
        _wait_ready(client)
        ready = client.get("/readyz").json()
        assert ready == {
            "status": "ready",
            "backend": "onnx-int8",
            "backend_status": "same_cpu",
            "monitoring": "no_reference",
            "prediction_log": "ok",
        }
        assert client.get("/v1/model").json()["backend_selection"]["fallback_from"] is None
        assert "fisheye_backend_fallback 0.0" in client.get("/metrics").text


def test_the_api_answers_not_sure_under_the_threshold(tiny_bundle: Path) -> None:
    settings = ServeSettings(model=tiny_bundle, abstain_below=1.0, monitoring=False)
    with TestClient(create_app(settings)) as client:
        _wait_ready(client)
        one = client.post("/v1/predict", files={"file": ("a.png", encode(photo(3), "PNG"))})
        many = client.post(
            "/v1/predict/batch",
            files=[("files", ("b.png", encode(photo(4), "PNG"))), ("files", ("c.txt", b"no"))],
        )
        metrics = client.get("/metrics").text
    body = one.json()
    assert one.status_code == 200 and body["label"] is None and body["status"] == "unsure"
    assert len(body["top_k"]) == 5  # the candidates
    good, bad = many.json()["results"]
    assert good["label"] is None and good["answer"] == "unsure" and good["status"] == 200
    assert bad["status"] == 415 and bad["answer"] is None
    assert "fisheye_unsure_answers_total 2.0" in metrics


def test_model_info_does_not_show_where_the_training_photos_were(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    from fisheye.bundle import update_meta
    from tests.helpers.bundles import copy_bundle

    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    update_meta(bundle, data={"root": "/home/alice/fish-photos", "counts": {"train": 3}})
    with TestClient(create_app(ServeSettings(model=bundle, monitoring=False))) as client:
        _wait_ready(client)
        data = client.get("/v1/model").json()["data"]
    assert data == {"counts": {"train": 3}}
