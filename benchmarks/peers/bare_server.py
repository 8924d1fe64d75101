"""The bare peer: the FishEye model behind the smallest FastAPI app a user would write.

One synchronous endpoint (FastAPI runs it in its thread pool), one ONNX Runtime session
with 2 intra-op threads, no batching, no monitoring, no limits.

    python benchmarks/peers/bare_server.py --model models/default --port 8101
    PEER_MODEL=models/default uvicorn --factory benchmarks.peers.bare_server:create_app
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import FastAPI, File, UploadFile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_MODEL, Bundle, softmax  # noqa: E402


def create_app(model_dir: str | Path | None = None) -> FastAPI:
    """The app for one bundle folder (default: $PEER_MODEL or models/default)."""
    bundle = Bundle(model_dir or os.environ.get("PEER_MODEL") or DEFAULT_MODEL)
    session = bundle.session()
    app = FastAPI(title="bare peer")

    @app.post("/v1/predict")
    def predict(file: Annotated[UploadFile, File()]) -> dict:
        """Decode, preprocess, run the model, answer with the top class."""
        x = bundle.prepare(file.file.read())[None]
        (logits,) = session.run(["logits"], {"x": x})
        probs = softmax(logits)[0]
        best = int(probs.argmax())
        return {"label": bundle.classes[best], "confidence": float(probs[best])}

    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness."""
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The bare FastAPI + ONNX Runtime peer.")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="Bundle folder.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    args = parser.parse_args()
    uvicorn.run(create_app(args.model), host=args.host, port=args.port, log_level="warning")
