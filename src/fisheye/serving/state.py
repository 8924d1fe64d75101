"""The app's shared objects (settings, metrics, slots, decode pool, prediction log, photo
keeper) and their life.

`load` (in a thread at start-up) opens the shared resources and the configured model;
`close` stops them after the work they hold is done. Model changes after start-up are
`changes` (fisheye.serving.changes); which slot answers a request is `slots`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from fisheye.inference.predictor import Predictor
from fisheye.monitoring.photo_archive import PhotoKeeper
from fisheye.monitoring.prediction_log import PredictionLog
from fisheye.serving.batcher import MicroBatcher
from fisheye.serving.capacity import UploadBudget
from fisheye.serving.changes import ModelChanges
from fisheye.serving.decoding import DecodePool
from fisheye.serving.drift_window import lower_thread_priority
from fisheye.serving.live_monitor import LiveMonitor, open_prediction_log
from fisheye.serving.memory import return_large_buffers_to_the_os, trim_freed_memory
from fisheye.serving.metrics import Metrics
from fisheye.serving.photo_keeping import open_photo_keeper
from fisheye.serving.settings import ServeSettings
from fisheye.serving.slots import ModelSlot, Slots
from fisheye.tracking.loading import INVALID, NOT_PINNED, ModelLoadError

log = logging.getLogger(__name__)
BACKGROUND_NICE = 10  # how much lower the loader thread runs once the model answers
# How long start-up work that can wait (decode worker processes, the model's session for
# lone photos, a largest batch) waits for the first answer before it starts anyway.
FIRST_ANSWER_WAIT_S = 10.0


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
    slots: Slots = field(default_factory=Slots)
    decoder: DecodePool | None = None
    uploads: UploadBudget | None = None
    prediction_log: PredictionLog | None = None
    photo_keeper: PhotoKeeper | None = None
    changes: ModelChanges | None = None
    ready: bool = False
    load_error: str | None = None
    _loader: threading.Thread | None = field(default=None, repr=False)
    _after_start: threading.Thread | None = field(default=None, repr=False)
    _closing: threading.Event = field(default_factory=threading.Event, repr=False)

    # The live slot's parts, for the routes (one attribute read each).
    @property
    def predictor(self) -> Predictor | None:
        """The live model's Predictor."""
        return None if self.slots.live is None else self.slots.live.predictor

    @property
    def batcher(self) -> MicroBatcher | None:
        """The live model's micro-batcher."""
        return None if self.slots.live is None else self.slots.live.batcher

    @property
    def live_monitor(self) -> LiveMonitor | None:
        """The live model's monitoring."""
        return None if self.slots.live is None else self.slots.live.live_monitor

    def start_loading(self) -> None:
        """Run `load_or_report` in a background thread, once (later calls do nothing).

        `fisheye serve` calls it before it imports FastAPI and builds the app, so the model
        loads while the rest of the server is imported; otherwise the app's start does.
        """
        if self._loader is None:
            self._loader = threading.Thread(
                target=self.load_or_report, name="fisheye-load", daemon=True
            )
            self._loader.start()

    def wait_loaded(self, timeout: float | None = None) -> None:
        """Wait for the background load (if one was started) to finish or fail."""
        if self._loader is not None:
            self._loader.join(timeout)

    def load(self) -> None:
        """Open the shared resources and load, start and warm the model (blocking)."""
        s = self.settings
        start = time.perf_counter()
        limit_blas_threads()
        return_large_buffers_to_the_os()
        self.decoder = DecodePool(
            s.decode_workers,
            s.max_decode_queue,
            on_idle=trim_freed_memory,
            per_client=s.max_decodes_per_client,
            max_cpu_s=s.max_decode_cpu_s,
            processes=s.decode_processes,
            max_decode_bytes=s.max_decode_bytes,
            start_processes="when_told",
        )
        self.uploads = UploadBudget(s.max_upload_memory_bytes)
        if s.monitoring:
            self.prediction_log = open_prediction_log(s, self.metrics)
            if self.prediction_log is not None:
                self.prediction_log.start()
            self.photo_keeper = open_photo_keeper(s, self.metrics, self.prediction_log)
            if self.photo_keeper is not None:
                self.photo_keeper.start()
        self.changes = ModelChanges(s, self.metrics, self.slots, self.decoder, self.prediction_log)
        slot = self.changes.load()
        self.ready = True
        self.metrics.ready.set(1)
        bundle = slot.predictor.bundle
        log.info(
            "model %s %s (%s, %d classes, backend %s) ready in %.1f s",
            bundle.name,
            bundle.version,
            bundle.architecture,
            len(slot.predictor.classes),
            slot.predictor.backend_name,
            time.perf_counter() - start,
        )
        # Work that can wait until the first prediction is answered: on a cold start it
        # would take CPU from that answer.
        self._after_start = threading.Thread(
            target=self._after_first_answer, args=(slot,), name="fisheye-after-start", daemon=True
        )
        self._after_start.start()

    def _after_first_answer(self, slot: ModelSlot) -> None:
        """Once the first prediction is answered (or FIRST_ANSWER_WAIT_S passed without one):
        start the decode worker processes and open the model's deferred session (before
        this thread's priority is lowered: processes and ONNX Runtime threads inherit it),
        then, at a low priority, run a largest batch (the drift reference is prepared in
        the drift window's thread)."""
        assert slot.batcher is not None and self.decoder is not None
        deadline = time.monotonic() + FIRST_ANSWER_WAIT_S
        while not slot.batcher.answered.wait(0.05):
            if self._closing.is_set():
                return
            if time.monotonic() >= deadline:
                break
        self.decoder.start_processes()
        if self.slots.live is not slot:  # replaced by a swap meanwhile: it serves no more
            return
        try:
            slot.open_deferred_sessions()
        except Exception as exc:  # lone photos keep running in the batch session
            log.warning("opening the model's session for lone photos failed: %s", exc)
        lower_thread_priority(BACKGROUND_NICE)
        try:
            slot.warm_largest_batch(self.settings)
        except Exception as exc:  # the model answers already; the first burst pays instead
            log.warning(
                "warming the model at batch %d failed: %s", self.settings.max_batch_size, exc
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
            verification = isinstance(exc, ModelLoadError) and exc.kind in (INVALID, NOT_PINNED)
            self.load_error = (
                "the model bundle failed verification (see the server log)"
                if verification
                else "the model could not be loaded (see the server log)"
            )

    def close(self) -> None:
        """Stop the batchers after they finish queued work, then the monitoring threads."""
        self._closing.set()
        if self._after_start is not None:
            self._after_start.join(60)
        self.ready = False
        self.metrics.ready.set(0)
        if self.changes is not None:
            self.changes.close()
        if self.decoder is not None:
            self.decoder.close()
        if self.photo_keeper is not None:  # before the log: it names the photos kept last
            self.photo_keeper.stop()
        if self.prediction_log is not None:
            self.prediction_log.stop()
