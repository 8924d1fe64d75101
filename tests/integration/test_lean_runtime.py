"""The serving runtime without the training extra: no PyTorch, Lightning, Hydra, scikit-learn.

The processes below run with those modules missing (`import torch` fails), as in a
virtualenv made by `pip install fisheye` or `make serve`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers.paths import require_default_model, val_photos
from tests.helpers.server import TRAIN_EXTRA_MODULES, fisheye_command, run_server

ENV_OK = {"COLUMNS": "200", "NO_COLOR": "1"}


def _fisheye(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        fisheye_command(*args, without=TRAIN_EXTRA_MODULES),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **ENV_OK},
    )


def test_predict_runs_without_pytorch() -> None:
    model = require_default_model()
    photos = val_photos(per_class=1)
    result = _fisheye(
        "predict", *(str(p) for _, p in photos), "--model", str(model), "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["label"] for r in records] == [label for label, _ in photos]


def test_serve_runs_without_pytorch(tmp_path: Path) -> None:
    model = require_default_model()
    (label, photo), *_ = val_photos(per_class=1)
    with run_server(model, tmp_path, without=TRAIN_EXTRA_MODULES) as server:
        res = httpx.post(
            f"{server.url}/v1/predict",
            files={"file": (photo.name, photo.read_bytes())},
            timeout=30,
        )
        assert res.status_code == 200, res.text
        assert res.json()["label"] == label and res.json()["model"]["backend"] == "onnx-int8"
        assert res.json()["in_distribution"] is True  # monitoring works without PyTorch
        ready = httpx.get(f"{server.url}/readyz", timeout=10).json()
        # The committed int8 holds on every CPU: served here as where it was measured.
        assert ready["backend"] == "onnx-int8" and ready["backend_status"] in ("same_cpu", "passed")
        assert httpx.get(f"{server.url}/v1/monitoring/drift", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "args",
    [
        ["train"],
        ["export", "--format", "onnx"],
        ["bench"],
        ["profile"],
        ["data", "import", "somewhere", "--out", "elsewhere"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_training_commands_say_what_to_install(args: list[str]) -> None:
    result = _fisheye(*args, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'fisheye[train]'" in lines[0], result.stderr


def test_the_torch_backend_says_what_to_install() -> None:
    model = require_default_model()
    (_, photo), *_ = val_photos(per_class=1)
    result = _fisheye("predict", str(photo), "--model", str(model), "--backend", "torch")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "fisheye[train]" in result.stderr
