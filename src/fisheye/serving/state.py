"""The app's shared objects (settings, model, batcher, metrics, monitoring) and their life cycle."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from fisheye.bundle import BundleError
from fisheye.inference.predictor import Predictor
from fisheye.monitoring.prediction_log import PredictionLog
from fisheye.monitoring.reference import load_predictor
from fisheye.serving.batcher import MicroBatcher
from fisheye.serving.decoding import DecodePool
from fisheye.serving.errors import APIError
from fisheye.serving.live_monitor import LiveMonitor
from fisheye.serving.memory import return_large_buffers_to_the_os, trim_freed_memory
from fisheye.serving.metrics import Metrics
from fisheye.serving.settings import ServeSettings
from fisheye.serving.uploads import UploadBudget

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
    except Exception as exc:  # threadpoolctl is optional; never fail to serve
        log.warning("could not limit NumPy's BLAS threads: %s", exc)


@dataclass
class ServingState:
    """Everything a request handler needs; one per app, stored on `app.state.serving`."""

    settings: ServeSettings
    metrics: Metrics = field(default_factory=Metrics)
    predictor: Predictor | None = None
    batcher: MicroBatcher | None = None
    decoder: DecodePool | None = None
    uploads: UploadBudget | None = None
    monitoring: LiveMonitor | None = None
    ready: bool = False
    load_error: str | None = None

    def load(self) -> None:
        """Load the bundle, start the batcher and warm the model (blocking; run in a thread)."""
        s = self.settings
        start = time.perf_counter()
        predictor, monitor = load_predictor(
            s.model,
            backend=s.backend,
            monitored=s.monitoring,
            false_alarm_rate=s.ood_false_alarm_rate,
            n_permutations=s.drift_permutations,
            top_k=s.top_k,
            max_pixels=s.max_pixels,
            max_decode_bytes=s.max_decode_bytes,
            threads=s.threads,
            spinning=s.spin_wait,
            batch_threads=s.batch_threads,
            expected_sha256=s.model_sha256,
        )
        limit_blas_threads()
        return_large_buffers_to_the_os()
        decoder = DecodePool(s.decode_workers, s.max_decode_queue, on_idle=trim_freed_memory)
        batcher = MicroBatcher(
            predictor.infer,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_batch_wait_ms,
            max_queue=s.max_queue,
            on_batch=self.metrics.observe_batch,
            on_queue=self.metrics.queue_depth.set,
            incoming=lambda: decoder.pending,
            workers=s.model_workers,
        )
        self.predictor = predictor
        if s.monitoring:
            self.monitoring = LiveMonitor(s, self.metrics, predictor, monitor)
            self.monitoring.start()
        bundle = predictor.bundle
        self.metrics.model_info.labels(bundle.name, bundle.version, bundle.architecture).set(1)
        # Warm up in the worker thread, at the smallest and largest batch, so the first real
        # request does not pay for lazy initialisation.
        size = predictor.preprocessing.input_size
        batcher.start(
            [np.zeros((n, 3, size, size), np.float32) for n in sorted({1, s.max_batch_size})]
        )
        self.batcher = batcher
        self.decoder = decoder
        self.uploads = UploadBudget(s.max_upload_memory_bytes)
        self.ready = True
        self.metrics.ready.set(1)
        log.info(
            "model %s %s (%s, %d classes, backend %s) ready in %.1f s",
            bundle.name,
            bundle.version,
            bundle.architecture,
            len(predictor.classes),
            predictor.backend_name,
            time.perf_counter() - start,
        )

    def load_or_report(self) -> None:
        """`load`, but a failure is kept in `load_error` (shown on /readyz), not raised.

        The process keeps serving /healthz and /readyz, so an orchestrator sees why.
        """
        try:
            self.load()
        except Exception as exc:
            # The details (paths, hashes) go to the log; clients get what kind of failure.
            log.error(
                "could not load the model from %s: %s: %s",
                self.settings.model,
                type(exc).__name__,
                exc,
            )
            self.load_error = (
                "the model bundle failed verification (see the server log)"
                if isinstance(exc, BundleError)
                else "the model could not be loaded (see the server log)"
            )

    def close(self) -> None:
        """Stop the batcher after it finishes queued work, then the monitoring threads."""
        self.ready = False
        self.metrics.ready.set(0)
        if self.batcher is not None:
            self.batcher.stop()
        if self.decoder is not None:
            self.decoder.close()
        if self.monitoring is not None:
            self.monitoring.stop()

    def prediction_log(self) -> PredictionLog:
        """The prediction log, or 404 when it is off."""
        if self.monitoring is None or self.monitoring.log is None:
            raise APIError(
                404,
                "prediction_log_disabled",
                "the prediction log is off (FISHEYE_MONITORING / FISHEYE_PREDICTION_LOG)",
            )
        return self.monitoring.log
