"""Start-up: files checked when read, monitoring prepared after ready, a lean `serve` path."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from fisheye.bundle import BundleError, add_arrays, load_bundle
from fisheye.data.seen import SEEN_DESCRIPTORS_NAME
from fisheye.inference.backend import InferenceOutput
from fisheye.inference.onnx_backend import OnnxBackend
from fisheye.inference.options import RuntimeOptions
from fisheye.monitoring.drift import DriftDetector
from fisheye.monitoring.loading import load_model
from fisheye.serving import state as state_module
from fisheye.serving.app import create_app
from fisheye.serving.batcher import MicroBatcher
from fisheye.serving.schemas import ErrorBody
from fisheye.serving.settings import ServeSettings
from tests.helpers.bundles import copy_bundle, make_monitored_bundle
from tests.helpers.photos import encode, photo

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """The tiny bundle with a fitted drift reference (read-only)."""
    return make_monitored_bundle(tmp_path_factory.mktemp("monitored") / "bundle", synthetic_dataset)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _wait(client: TestClient, ready: bool = True, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        res = client.get("/readyz")
        body = res.json()
        if (res.status_code == 200) == ready and (ready or "failed" in body.get("detail", "")):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


def test_a_tampered_file_the_server_does_not_read_is_refused_when_it_is_read(
    writable_tiny_bundle: Path,
) -> None:
    bundle_dir = writable_tiny_bundle
    add_arrays(
        bundle_dir,
        SEEN_DESCRIPTORS_NAME,
        {"descriptors": np.zeros((4, 8), np.float32)},
        kind="seen_descriptors",
    )
    _flip_last_byte(bundle_dir / SEEN_DESCRIPTORS_NAME)
    # Checking every file up front (the CLI's default) refuses the bundle at once.
    with pytest.raises(BundleError, match="integrity"):
        load_bundle(bundle_dir)
    # The server's start-up checks each file as it reads it: it serves, since it never
    # reads the seen-photo descriptors ...
    predictor, _ = load_model(bundle_dir, backend="torch", monitoring=None, check_all_files=False)
    with TestClient(create_app(ServeSettings(model=bundle_dir, monitoring=False))) as client:
        _wait(client)
        res = client.post("/v1/predict", files={"file": ("a.png", encode(photo(1), "PNG"))})
        assert res.status_code == 200, res.text
    # ... and whoever reads them gets the refusal, before any byte is used.
    with pytest.raises(BundleError, match="integrity"):
        predictor.bundle.read_file(SEEN_DESCRIPTORS_NAME)


def test_a_tampered_file_the_server_reads_is_refused_before_it_serves(
    writable_tiny_bundle: Path,
) -> None:
    _flip_last_byte(writable_tiny_bundle / "model.safetensors")
    settings = ServeSettings(model=writable_tiny_bundle, monitoring=False)
    with TestClient(create_app(settings)) as client:
        body = _wait(client, ready=False)
        assert "failed verification" in body["detail"]
        res = client.post("/v1/predict", files={"file": ("a.png", encode(photo(1), "PNG"))})
        assert res.status_code == 503


def test_a_tampered_drift_reference_is_refused_before_it_is_used(
    monitored: Path, tmp_path: Path
) -> None:
    copy = copy_bundle(monitored, tmp_path / "copy")
    reference = next(p for p in copy.iterdir() if p.name.startswith("drift_reference"))
    _flip_last_byte(reference)
    with TestClient(create_app(ServeSettings(model=copy))) as client:
        assert "failed verification" in _wait(client, ready=False)["detail"]


def test_readyz_says_monitoring_is_loading_until_the_drift_reference_is_prepared(
    monitored: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    prepare = DriftDetector.prepare

    def slow_prepare(self: DriftDetector) -> None:
        release.wait(30)
        prepare(self)

    monkeypatch.setattr(DriftDetector, "prepare", slow_prepare)
    with TestClient(create_app(ServeSettings(model=monitored))) as client:
        try:
            body = _wait(client)
            assert body["status"] == "ready" and body["monitoring"] == "loading"
            # The model answers meanwhile, with its OOD score: only the drift test waits.
            res = client.post("/v1/predict", files={"file": ("a.png", encode(photo(2), "PNG"))})
            assert res.status_code == 200 and "ood_score" in res.json()
            assert client.get("/v1/monitoring/drift").json()["status"] == "loading"
        finally:
            release.set()
        deadline = time.monotonic() + 30
        while client.get("/readyz").json()["monitoring"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_a_drift_test_before_the_reference_is_prepared_prepares_it() -> None:
    rng = np.random.default_rng(0)
    detector = DriftDetector(rng.normal(size=(40, 8)), n_permutations=50)
    assert not detector.prepared
    detector.test(rng.normal(size=(20, 8)))
    assert detector.prepared


def test_readyz_says_monitoring_is_off_when_it_is(tiny_bundle: Path) -> None:
    with TestClient(create_app(ServeSettings(model=tiny_bundle, monitoring=False))) as client:
        assert _wait(client)["monitoring"] == "off"


# Modules `fisheye serve` has no use for: other commands, training, data import, evaluation,
# and in its plain form the CLI's Typer app and Rich (its log goes to a file here).
NOT_ON_THE_SERVE_PATH = (
    "fisheye.cli.commands",
    "fisheye.cli.serve",
    "fisheye.cli.common",
    "typer",
    "rich",
    "fisheye.cli.train",
    "fisheye.cli.data",
    "fisheye.cli.drift",
    "fisheye.cli.evaluate",
    "fisheye.cli.probe",
    "fisheye.cli.bench",
    "fisheye.cli.export",
    "fisheye.cli.profile",
    "fisheye.cli.predict",
    "fisheye.training",
    "fisheye.models",
    "fisheye.evaluate",
    "fisheye.monitoring.fitting",
    "fisheye.data.pipelines",
    "fisheye.data.download",
    "fisheye.data.datamodule",
    "fisheye.data.transforms",
    "fisheye.data.corruptions",
    "websockets",
    "torch",
    "lightning",
    "hydra",
    "sklearn",
    "mlflow",
)

# Runs `fisheye serve` with uvicorn's Server.run replaced: once the model is loaded, print the
# modules.
SERVE_AND_LIST = """
import json, sys
import uvicorn

def run(server, sockets=None):
    state = server.config.app.state.serving
    state.wait_loaded(120)
    assert state.ready, state.load_error
    server.started = True
    print(json.dumps({"modules": sorted(sys.modules), "ws": server.config.ws}))

uvicorn.Server.run = run
from fisheye.cli import app
app(["serve", "--model", sys.argv[1], "--backend", "onnx-int8"], prog_name="fisheye")
"""


def test_fisheye_serve_imports_only_what_serving_needs(
    exported_bundle: Path, tmp_path: Path
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT / "src"),
        "FISHEYE_PREDICTION_DB": str(tmp_path / "predictions.sqlite"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", SERVE_AND_LIST, str(exported_bundle)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    loaded = set(out["modules"])
    assert {"fisheye.cli.serve_start", "fisheye.serving.app", "onnxruntime"} <= loaded
    unwanted = sorted(
        m for m in loaded if any(m == n or m.startswith(n + ".") for n in NOT_ON_THE_SERVE_PATH)
    )
    assert not unwanted, f"`fisheye serve` imported {unwanted}"
    assert out["ws"] == "none"


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + 60  # a safety net only
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_work_that_can_wait_starts_after_the_first_answer(
    exported_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_module, "FIRST_ANSWER_WAIT_S", 600.0)
    settings = ServeSettings(model=exported_bundle, backend="onnx-int8", monitoring=False)
    with TestClient(create_app(settings)) as client:
        _wait(client)
        state = client.app.state.serving
        backend = state.slots.live.predictor.backend
        # Ready, and nothing competes with the first prediction: one ONNX Runtime session,
        # no decode worker process.
        assert backend.single is backend.session
        assert not state.decoder._starting and not state.decoder.processes_ready
        res = client.post("/v1/predict", files={"file": ("a.jpg", encode(photo(3), "JPEG"))})
        assert res.status_code == 200, res.text
        _until(lambda: state.decoder.processes_ready, "the decode workers did not start")
        _until(lambda: backend.single is not backend.session, "no spinning session")
        again = client.post("/v1/predict", files={"file": ("a.jpg", encode(photo(3), "JPEG"))})
        assert again.json()["top_k"] == res.json()["top_k"]


def test_work_that_can_wait_starts_anyway_when_no_prediction_comes(
    exported_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_module, "FIRST_ANSWER_WAIT_S", 0.1)
    settings = ServeSettings(model=exported_bundle, backend="onnx-int8", monitoring=False)
    with TestClient(create_app(settings)) as client:
        _wait(client)
        state = client.app.state.serving
        backend = state.slots.live.predictor.backend
        _until(lambda: state.decoder.processes_ready, "the decode workers did not start")
        _until(lambda: backend.single is not backend.session, "no spinning session")


def test_a_deferred_spinning_session_opens_when_asked_and_answers_alike(
    exported_bundle: Path,
) -> None:
    graph = (exported_bundle / "model.int8.onnx").read_bytes()
    x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    later = OnnxBackend(graph, runtime=RuntimeOptions(threads=1, spinning_session_later=True))
    assert later.single is later.session
    before = later.run(x)
    later.open_spinning_session()
    assert later.single is not later.session
    later.open_spinning_session()  # once
    after = later.run(x)
    assert np.allclose(before.probabilities, after.probabilities, atol=1e-5)
    # Without the option (the CLI, a hot swap), or from a path (no checked bytes to keep),
    # both sessions open with the backend.
    eager = OnnxBackend(graph, runtime=RuntimeOptions(threads=1))
    assert eager.single is not eager.session
    path = OnnxBackend(
        exported_bundle / "model.int8.onnx",
        runtime=RuntimeOptions(threads=1, spinning_session_later=True),
    )
    assert path.single is not path.session


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_error_responses_are_documented_without_a_validator_per_route(tiny_bundle: Path) -> None:
    app = create_app(ServeSettings(model=tiny_bundle, monitoring=False))
    # No route builds a model field for its documented error responses at start-up ...
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert routes and all(not r.response_fields for r in routes)
    # ... and the API document still describes each with the error body's schema.
    with TestClient(app) as client:
        doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert schemas["ErrorBody"] == ErrorBody.model_json_schema()
    assert list(schemas) == sorted(schemas)
    predict = doc["paths"]["/v1/predict"]["post"]["responses"]
    for code in ("413", "415", "503"):
        assert predict[code]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }
    # Every reference in the document resolves.
    for ref in _refs(doc):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_the_batcher_says_once_its_first_answer_is_on_its_way() -> None:
    def run(batch: np.ndarray) -> InferenceOutput:
        flat = batch.reshape(len(batch), -1)[:, :2]
        return InferenceOutput(flat, flat)

    async def main() -> tuple[bool, bool, bool]:
        b = MicroBatcher(run, max_batch_size=4, max_wait_ms=0)
        b.start([np.zeros((2, 1, 1, 2), np.float32)])
        try:
            after_warmup = b.answered.is_set()
            await b.submit(np.ones((1, 1, 1, 2), np.float32))
            # Set by the event loop just after the awaiting task resumed.
            right_after = b.answered.is_set()
            deadline = time.monotonic() + 30  # a safety net only
            while not b.answered.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            return after_warmup, right_after, b.answered.is_set()
        finally:
            b.stop()

    after_warmup, right_after, then = asyncio.run(main())
    assert not after_warmup  # a warm-up run answers nobody
    assert not right_after and then
