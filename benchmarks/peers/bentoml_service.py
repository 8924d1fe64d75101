"""The BentoML peer: the FishEye model as a BentoML 1.4 service with adaptive batching.

Two services, as BentoML's adaptive-batching guide lays out a model behind an API:
- `FishModel` runs ONNX Runtime (2 intra-op threads) on (N, 3, H, W) batches; its API is
  `batchable`, so BentoML's dispatcher groups the front's calls into batches.
- `FishEyePeer` is the HTTP entry point: `POST /v1/predict` (multipart field `file`)
  decodes and preprocesses the photo in a thread, awaits `FishModel` and answers
  {label, confidence}. BentoML adds `/healthz`, `/livez`, `/readyz` and `/metrics`.

BentoML's client to the model service recycles its connection pool after
`runner_connection.max_requests` calls (default 100) and `max_age` seconds (300); under load
the recycle fails in-flight calls with 500s (bentoml/BentoML#5540, #5544). Both are set high
here, as the configuration schema allows, so the peer is measured at its best.

Batching is configured from the environment, read at import (defaults in brackets):
PEER_BENTO_MAX_BATCH [16], PEER_BENTO_MAX_LATENCY_MS [1000], PEER_MODEL [models/default],
PEER_BENTO_FRONT_WORKERS [1], PEER_BENTO_RUNNER_MAX_REQUESTS [1e9; BentoML's default: 100].

    # from the repository root, in a virtualenv with bentoml (benchmarks/peers/README.md)
    bentoml serve benchmarks.peers.bentoml_service:FishEyePeer --port 8102
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio.to_thread
import bentoml
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_MODEL, Bundle, softmax  # noqa: E402

MODEL_DIR = os.environ.get("PEER_MODEL") or str(DEFAULT_MODEL)
MAX_BATCH = int(os.environ.get("PEER_BENTO_MAX_BATCH", "16"))
MAX_LATENCY_MS = int(os.environ.get("PEER_BENTO_MAX_LATENCY_MS", "1000"))
FRONT_WORKERS = int(os.environ.get("PEER_BENTO_FRONT_WORKERS", "1"))
# PEER_BENTO_RUNNER_MAX_REQUESTS=100 restores BentoML's default (to see the 500s).
RUNNER_CONNECTION = {
    "max_requests": int(os.environ.get("PEER_BENTO_RUNNER_MAX_REQUESTS", "1000000000")),
    "max_age": 1e9,
}


@bentoml.service(
    workers=1,
    threads=1,
    traffic={"timeout": 60},
    runner_connection=RUNNER_CONNECTION,
    logging={"access": {"enabled": False}},
)
class FishModel:
    """ONNX Runtime on preprocessed batches."""

    def __init__(self) -> None:
        self.session = Bundle(MODEL_DIR).session()

    @bentoml.api(
        batchable=True, batch_dim=(0, 0), max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS
    )
    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 inputs to (N, classes) logits."""
        (out,) = self.session.run(["logits"], {"x": np.ascontiguousarray(x, np.float32)})
        return out


@bentoml.service(
    workers=FRONT_WORKERS,
    traffic={"timeout": 60},
    runner_connection=RUNNER_CONNECTION,
    logging={"access": {"enabled": False}},
)
class FishEyePeer:
    """HTTP entry: photo in, top class out."""

    model = bentoml.depends(FishModel)

    def __init__(self) -> None:
        self.bundle = Bundle(MODEL_DIR)

    @bentoml.api(route="/v1/predict")
    async def predict(self, file: Image.Image) -> dict:
        """Decode + preprocess off the event loop, then one batched model call."""
        x = await anyio.to_thread.run_sync(self.bundle.prepare, file)
        logits = await self.model.to_async.logits(x[None])
        probs = softmax(np.asarray(logits))[0]
        best = int(probs.argmax())
        return {"label": self.bundle.classes[best], "confidence": float(probs[best])}
