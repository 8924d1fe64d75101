"""The app's shared objects (settings, model, batcher, metrics) and their life cycle."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from fastapi import Request

from fisheye.inference.predictor import Predictor
from fisheye.monitoring.service import ServingMonitor
from fisheye.serving.batcher import MicroBatcher
from fisheye.serving.errors import APIError
from fisheye.serving.metrics import Metrics
from fisheye.serving.settings import ServeSettings

log = logging.getLogger(__name__)


def limit_blas_threads() -> None:
    """NumPy's BLAS (OpenBLAS) to one thread, for the whole process.

    Monitoring scores each batch's features with small NumPy matrix products in the model
    thread; with OpenBLAS's default pool (one busy-waiting thread per core) those threads
    fight the model's own pool for the cores, which cost about 40% of the throughput on 2
    cores. One thread is plenty for products of this size.
    """
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
    except Exception as exc:  # threadpoolctl comes with scikit-learn; never fail to serve
        log.warning("could not limit NumPy's BLAS threads: %s", exc)


@dataclass
class ServingState:
    """Everything a request handler needs; one per app, stored on `app.state.serving`."""

    settings: ServeSettings
    metrics: Metrics = field(default_factory=Metrics)
    predictor: Predictor | None = None
    batcher: MicroBatcher | None = None
    ready: bool = False
    load_error: str | None = None
    monitoring: ServingMonitor | None = None

    def load(self) -> None:
        """Load the bundle, start the batcher and warm the model (blocking; run in a thread)."""
        s = self.settings
        torch.set_num_threads(s.threads)
        start = time.perf_counter()
        predictor = Predictor.from_dir(
            s.model,
            top_k=s.top_k,
            max_pixels=s.max_pixels,
            backend=s.backend,
            threads=s.threads,
        )
        # ONNX Runtime has its own pool of `threads`; torch then only normalises photos in the
        # request threads, where a second multi-threaded pool would fight it for the cores.
        torch_threads = s.threads if predictor.backend_name == "torch" else 1
        torch.set_num_threads(torch_threads)
        limit_blas_threads()
        batcher = MicroBatcher(
            predictor.probabilities,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_batch_wait_ms,
            max_queue=s.max_queue,
            threads=torch_threads,
            on_batch=self.metrics.observe_batch,
            on_queue=self.metrics.queue_depth.set,
        )
        self.predictor = predictor
        if s.monitoring:
            # The model call then also returns OOD scores and features (one call per batch).
            self.monitoring = ServingMonitor(s, self.metrics, predictor)
            batcher.run_batch = self.monitoring.run_batch
            self.monitoring.start()
        self.metrics.model_info.labels(
            predictor.bundle.name, predictor.bundle.version, predictor.bundle.architecture
        ).set(1)
        # Warm up in the worker thread, at the smallest and largest batch, so the first real
        # request does not pay for lazy initialisation.
        size = predictor.preprocessing.input_size
        batcher.start([torch.zeros(n, 3, size, size) for n in sorted({1, s.max_batch_size})])
        self.batcher = batcher
        self.ready = True
        self.metrics.ready.set(1)
        log.info(
            "model %s %s (%s, %d classes, backend %s) ready in %.1f s",
            predictor.bundle.name,
            predictor.bundle.version,
            predictor.bundle.architecture,
            len(predictor.classes),
            predictor.backend_name,
            time.perf_counter() - start,
        )

    def close(self) -> None:
        """Stop the batcher after it finishes queued work."""
        self.ready = False
        self.metrics.ready.set(0)
        if self.batcher is not None:
            self.batcher.stop()
        if self.monitoring is not None:
            self.monitoring.stop()


def get_state(request: Request) -> ServingState:
    """FastAPI dependency: the app's ServingState."""
    return request.app.state.serving


def require_ready(request: Request) -> ServingState:
    """FastAPI dependency: the ServingState, or 503 while the model is still loading."""
    state: ServingState = request.app.state.serving
    if not state.ready or state.predictor is None or state.batcher is None:
        detail = (
            f"the model failed to load: {state.load_error}"
            if state.load_error
            else "the model is still loading; retry in a moment"
        )
        raise APIError(503, "model_not_ready", detail, headers={"Retry-After": "1"})
    return state
