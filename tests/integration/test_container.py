"""The serve image, built and run for real: read-only, non-root, a real photo, a clean stop.

Runs where a Docker engine answers or can be started (root on Debian); skips otherwise.
The train image is built and smoke-run by `make test-images` (FISHEYE_TEST_TRAIN_IMAGE=1).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from fisheye.bundle import load_bundle
from fisheye.monitoring.loading import load_model
from tests.helpers.docker import (
    BuiltImage,
    build_image,
    container,
    docker,
    inspect,
    prebuilt_image,
    report,
    require_docker,
    volume,
)
from tests.helpers.paths import require_default_model, val_photos
from tests.helpers.server import free_port

SERVE_TAG = "fisheye-serve:test"
TRAIN_TAG = "fisheye-train:test"
SERVE_IMAGE_LIMIT_MB = 600
# docker stop waits this long before it kills; a graceful shutdown fits inside.
STOP_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def serve_image(pytestconfig: pytest.Config) -> BuiltImage:
    """The image under test: FISHEYE_SERVE_IMAGE (one a pipeline built), else built here."""
    require_docker()
    require_default_model()
    prebuilt = os.environ.get("FISHEYE_SERVE_IMAGE")
    image = prebuilt_image(prebuilt) if prebuilt else build_image("serve.Dockerfile", SERVE_TAG)
    report(
        pytestconfig,
        f"\n[serve image] {image.tag}: {image.size_mb:.0f} MB, {image.build_s:.0f} s build",
    )
    return image


def _wait_ready(url: str, name: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if inspect(name, "{{.State.Running}}") != "true":
            break
        time.sleep(0.3)
    logs = docker("logs", name, check=False)
    raise AssertionError(f"container not ready:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")


def _logged_rows(image: str, data_volume: str) -> int:
    """Rows in the prediction log on the volume, read by a throwaway container of the image."""
    code = (
        "import sqlite3; c = sqlite3.connect('file:/data/predictions.sqlite?mode=ro', uri=True);"
        "print(c.execute('SELECT count(*) FROM predictions').fetchone()[0])"
    )
    out = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{data_volume}:/data",
        image,
        "python",
        "-c",
        code,
    )
    return int(out.stdout)


def test_serve_image_is_lean_and_labelled(serve_image: BuiltImage) -> None:
    assert serve_image.size_mb <= SERVE_IMAGE_LIMIT_MB, f"{serve_image.size_mb:.0f} MB"
    labels = json.loads(inspect(serve_image.tag, "{{json .Config.Labels}}"))
    assert labels["org.opencontainers.image.version"] not in ("", "dev")
    assert labels["org.opencontainers.image.revision"] not in ("", "unknown")
    assert inspect(serve_image.tag, "{{.Config.User}}") == "10001:10001"
    # The serving runtime carries no PyTorch.
    probe = (
        "import importlib.util as u; print([m for m in ('torch', 'lightning') if u.find_spec(m)])"
    )
    out = docker("run", "--rm", "--network", "none", serve_image.tag, "python", "-c", probe)
    assert out.stdout.strip() == "[]"


def test_serve_image_runs_read_only_and_stops_cleanly(serve_image: BuiltImage) -> None:
    photos = val_photos(per_class=1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    run_args = (
        "--read-only", "--tmpfs", "/tmp", "--network", "host", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--health-interval", "1s", "--health-start-period", "0s",
        "-e", "FISHEYE_HOST=127.0.0.1", "-e", f"FISHEYE_PORT={port}",
    )  # fmt: skip
    with volume() as data, container(serve_image.tag, *run_args, "-v", f"{data}:/data") as name:
        _wait_ready(url, name)
        assert docker("exec", name, "id", "-u").stdout.strip() == "10001"

        # The container's answers are the host's for the same bundle and backend (monitored,
        # as served: the shift temperature applies).
        local, _ = load_model(require_default_model(), backend="onnx-int8")
        with httpx.Client(base_url=url, timeout=30) as client:
            for _, path in photos:
                r = client.post(
                    "/v1/predict", files={"file": (path.name, path.read_bytes(), "image/jpeg")}
                )
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["model"]["backend"] == "onnx-int8"
                expected = next(local.predict_files([path])).prediction
                assert body["label"] == expected.label
                assert body["confidence"] == pytest.approx(expected.confidence, abs=1e-4)
            metrics = client.get("/metrics").text
        assert "fisheye_model_ready 1.0" in metrics
        served = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("fisheye_predictions_total{")
        )
        assert served == len(photos)

        deadline = time.monotonic() + 30
        while inspect(name, "{{.State.Health.Status}}") != "healthy":
            assert time.monotonic() < deadline, inspect(name, "{{json .State.Health}}")
            time.sleep(0.5)

        start = time.monotonic()
        docker("stop", "--time", str(STOP_TIMEOUT_S), name, timeout=60)
        stop_s = time.monotonic() - start
        assert inspect(name, "{{.State.ExitCode}}") == "0", docker("logs", name).stderr[-2000:]
        assert stop_s < STOP_TIMEOUT_S, f"docker stop took {stop_s:.1f} s"
        assert "Application shutdown complete" in docker("logs", name).stderr
        assert _logged_rows(serve_image.tag, data) == len(photos)


@pytest.mark.skipif(
    os.environ.get("FISHEYE_TEST_TRAIN_IMAGE") != "1",
    reason="the train image is large: `make test-images` builds and runs it",
)
def test_train_image_trains_one_epoch(tmp_path: Path, pytestconfig: pytest.Config) -> None:
    require_docker()
    index = os.environ.get("TORCH_INDEX_URL", "https://download.pytorch.org/whl/cpu")
    image = build_image("train.Dockerfile", TRAIN_TAG, TORCH_INDEX_URL=index)
    report(
        pytestconfig,
        f"\n[train image] {image.tag}, PyTorch from {index}: "
        f"{image.size_mb:.0f} MB, {image.build_s:.0f} s build",
    )
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)
    script = (
        "fisheye data synth --out data/synthetic --per-class 8 "
        "&& fisheye train experiment=smoke trainer.max_epochs=1 hydra.run.dir=runs/smoke"
    )
    start = time.monotonic()
    out = docker(
        "run", "--rm", "--network", "none", "-v", f"{work}:/work", TRAIN_TAG, "sh", "-c", script,
        timeout=900,
    )  # fmt: skip
    train_s = time.monotonic() - start
    bundle = work / "runs" / "smoke" / "bundle"
    assert (bundle / "bundle.json").is_file(), out.stdout[-3000:] + out.stderr[-3000:]
    assert load_bundle(bundle).classes[0].startswith("synthetic-")
    report(pytestconfig, f"[train image] 1 epoch on synthetic photos, offline, in {train_s:.0f} s")
