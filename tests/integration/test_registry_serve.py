"""`fisheye serve --model models:/fisheye@champion`: a real server process serves the bundle
the registry's alias points at, from a local SQLite store and from a real MLflow server
(the latter in the lean runtime with only what mlflow-skinny brings: no PyTorch, no SQL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fisheye.bundle import load_bundle
from fisheye.tracking import model_registry as registry
from fisheye.tracking.store import local_store_uri
from tests.helpers.paths import require_default_model
from tests.helpers.photos import encode, photo
from tests.helpers.server import TRAIN_EXTRA_MODULES, free_port, run_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# What the full mlflow package adds to mlflow-skinny: without them only a server is reachable.
FULL_MLFLOW_ONLY = ("sqlalchemy", "alembic", "flask", "pandas", "pyarrow", "graphene", "huey")


def _predict(url: str) -> httpx.Response:
    jpeg = encode(photo(3, size=(64, 64)))
    return httpx.post(f"{url}/v1/predict", files={"file": ("fish.jpg", jpeg)}, timeout=30)


def _register_champion(bundle: Path, tracking_uri: str) -> registry.ModelVersion:
    version, _ = registry.register(bundle, "fisheye", tracking_uri=tracking_uri)
    return registry.promote("fisheye", version.version, "champion", tracking_uri=tracking_uri)


def test_serve_the_champion_of_a_local_store(tmp_path: Path, monitored_bundle: Path) -> None:
    store = local_store_uri(tmp_path / "runs")
    champion = _register_champion(monitored_bundle, store)
    env = {"MLFLOW_TRACKING_URI": store, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    with run_server("models:/fisheye@champion", tmp_path, **env) as server:
        res = _predict(server.url)
        assert res.status_code == 200, res.text
        bundle = load_bundle(monitored_bundle)
        assert res.json()["model"]["version"] == bundle.version
        assert res.json()["label"] in bundle.classes
        log = server.log_path.read_text()
        assert f"models:/fisheye@champion: fisheye version {champion.version}" in log
        served = tmp_path / "cache" / "fisheye" / "registry" / bundle.sha256
        assert f"({served})" in log


@contextlib.contextmanager
def _mlflow_server(root: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (SQLite store, proxied artifacts); yields its URL."""
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    cmd = [
        str(mlflow),
        "server",
        "--backend-store-uri",
        local_store_uri(root),
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    url = f"http://127.0.0.1:{port}"
    log_path = root / "mlflow-server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up in 90 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        # Its own session: stop the server and the workers it started, nothing else.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.mark.slow
def test_serve_the_champion_of_an_mlflow_server_in_the_lean_runtime(tmp_path: Path) -> None:
    model = require_default_model()  # exported (ONNX): it serves without PyTorch
    root = tmp_path / "mlflow"
    root.mkdir()
    with _mlflow_server(root) as url:
        champion = _register_champion(model, url)
        env = {"MLFLOW_TRACKING_URI": url, "XDG_CACHE_HOME": str(tmp_path / "cache")}
        without = (*TRAIN_EXTRA_MODULES, *FULL_MLFLOW_ONLY)
        with run_server("models:/fisheye@champion", tmp_path, without=without, **env) as server:
            res = _predict(server.url)
            assert res.status_code == 200, res.text
            assert res.json()["model"]["version"] == load_bundle(model).version
            assert res.json()["model"]["backend"].startswith("onnx")
    assert champion.aliases == ["champion"]
    # Through the server, the artifacts live in its store, not beside this process.
    assert any((root / "artifacts").rglob("bundle.json"))
