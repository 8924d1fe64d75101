"""Helpers shared by the serving tests: a tiny bundle, photo paths and a real server process.

This module holds no tests; it is named test_serving_* so it sits with the serving tests.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from fisheye.bundle import save_bundle
from fisheye.data.transforms import Preprocessing
from fisheye.models.backbones import build_model

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
VAL = DATA / "fish-256" / "val"
DEFAULT_MODEL = ROOT / "models" / "default"
CLASSES = [
    "Black Sea Sprat",
    "Gilt-Head Bream",
    "Hourse Mackerel",
    "Red Mullet",
    "Red Sea Bream",
    "Sea Bass",
    "Shrimp",
    "Striped Red Mullet",
    "Trout",
]


def make_tiny_bundle(out_dir: Path, input_size: int = 48) -> Path:
    """A random-init small_cnn bundle with the real class names (fast to load and run)."""
    torch.manual_seed(0)
    config = {"num_classes": len(CLASSES), "input_size": input_size, "dropout": 0.0}
    model = build_model("small_cnn", **config)
    return save_bundle(
        out_dir,
        model.eval(),
        classes=CLASSES,
        preprocessing=Preprocessing(input_size=input_size),
        architecture="small_cnn",
        architecture_config=config,
        name="tiny-test",
        metrics={"accuracy": 0.0},
    )


def val_photos(per_class: int = 1) -> list[tuple[str, Path]]:
    """(class, path) for the first `per_class` validation photos of each class; skip if absent."""
    if not VAL.is_dir():
        pytest.skip(f"real photos not found at {VAL} (they live in ../shared/data)")
    out = []
    for folder in sorted(p for p in VAL.iterdir() if p.is_dir()):
        out += [(folder.name, p) for p in sorted(folder.glob("*.jpg"))[:per_class]]
    if not out:
        pytest.skip(f"no photos under {VAL}")
    return out


def require_default_model() -> Path:
    """The committed default bundle, or skip the test with the reason."""
    if not (DEFAULT_MODEL / "bundle.json").is_file():
        pytest.skip(f"the default model is not at {DEFAULT_MODEL} yet (models/default)")
    return DEFAULT_MODEL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running `fisheye serve` process."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, n: int = 40) -> str:
        """The last lines of the server's log."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@contextlib.contextmanager
def run_server(model: Path, log_dir: Path, timeout: float = 90.0, **env: str) -> Iterator[Server]:
    """Start `fisheye serve` on a free 127.0.0.1 port, wait for /readyz, stop it afterwards."""
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    cmd = [sys.executable, "-c", "from fisheye.cli import app; app(prog_name='fisheye')"]
    cmd += ["serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)]
    full_env = {**os.environ, "FISHEYE_THREADS": "1", "FISHEYE_LOG_LEVEL": "warning", **env}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
