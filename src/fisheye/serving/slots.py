"""Model slots: one loaded model with its micro-batcher and live monitoring, and which answers.

A request takes one slot when it starts and uses it to the end (`Slots.answering`), so a hot
swap never changes the model under a request in flight; a slot counts what it is answering
(`ModelSlot.in_flight`), and a replaced slot stops once that count is back to zero.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fisheye.inference.predictor import Predictor
from fisheye.monitoring.monitor import Monitor
from fisheye.monitoring.prediction_log import PredictionLog
from fisheye.serving.batcher import MicroBatcher
from fisheye.serving.decoding import DecodePool
from fisheye.serving.live_monitor import LiveMonitor
from fisheye.serving.metrics import Metrics
from fisheye.serving.settings import ServeSettings
from fisheye.tracking.loading import ResolvedSource, open_model

if TYPE_CHECKING:  # the challenger holds a slot
    from fisheye.serving.challenger import Challenger


class WarmupError(RuntimeError):
    """A loaded model failed its warm-up run."""


@dataclass(eq=False)
class ModelSlot:
    """One loaded model and what serves it; `active` counts the requests it is answering."""

    source: str  # what was asked for: a bundle folder or a registry URI
    predictor: Predictor
    monitor: Monitor | None
    batcher: MicroBatcher | None = None
    live_monitor: LiveMonitor | None = None
    loaded_at: float = field(default_factory=time.time)
    active: int = 0

    @property
    def running(self) -> bool:
        """Whether its batcher accepts work."""
        return self.batcher is not None and self.batcher.running

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[ModelSlot]:
        """Count one request (or shadow photo) as answered by this slot until the block ends."""
        self.active += 1
        try:
            yield self
        finally:
            self.active -= 1

    def fresh(self) -> ModelSlot:
        """A new, unstarted slot with the same model (its own batcher and drift window)."""
        return ModelSlot(self.source, self.predictor, self.monitor)

    def start(
        self,
        settings: ServeSettings,
        metrics: Metrics,
        decoder: DecodePool | None,
        prediction_log: PredictionLog | None,
        role: str = "live",
        largest_batch: bool = True,
    ) -> None:
        """Start the batcher (warming the model: WarmupError) and the drift window.

        Each worker runs a photo and, with `largest_batch`, a largest batch first. At
        start-up the server leaves the largest batch to `warm_largest_batch` after it is
        ready: the host check and the model's own check have run both sessions already.
        """
        predictor = self.predictor
        batcher = MicroBatcher(
            predictor.infer,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_batch_wait_ms,
            max_queue=settings.max_queue,
            on_batch=metrics.observe_batch if role == "live" else None,
            on_queue=metrics.queue_depth.set if role == "live" else None,
            incoming=(lambda: decoder.pending) if decoder is not None else (lambda: 1),
            workers=settings.model_workers,
        )
        # Warm up in the worker threads, at the smallest and largest batch, so the first
        # real request does not pay for lazy initialisation.
        size = predictor.preprocessing.input_size
        sizes = sorted({1, settings.max_batch_size if largest_batch else 1})
        try:
            batcher.start([np.zeros((n, 3, size, size), np.float32) for n in sizes])
        except Exception as exc:
            raise WarmupError(f"the model failed its warm-up run: {exc}") from exc
        self.batcher = batcher
        if settings.monitoring:
            self.live_monitor = LiveMonitor(
                settings, metrics, predictor, self.monitor, prediction_log, role
            )
            self.live_monitor.start()

    def open_deferred_sessions(self) -> None:
        """Open what `load_slot(cold_start=True)` left for later (a backend's spinning
        session), at the calling thread's priority."""
        opener = getattr(self.predictor.backend, "open_spinning_session", None)
        if opener is not None:
            opener()

    def warm_largest_batch(self, settings: ServeSettings) -> None:
        """Run one largest batch (its buffers are allocated now, not under the first burst)."""
        size = self.predictor.preprocessing.input_size
        self.predictor.backend.run(np.zeros((settings.max_batch_size, 3, size, size), np.float32))

    def stop(self) -> None:
        """Stop the batcher (after its queued work) and the drift window."""
        if self.batcher is not None:
            self.batcher.stop()
        if self.live_monitor is not None:
            self.live_monitor.stop()

    def describe(self) -> dict[str, Any]:
        """Which model this is, for the admin and monitoring endpoints."""
        bundle = self.predictor.bundle
        return {
            "name": bundle.name,
            "version": bundle.version,
            "backend": self.predictor.backend_name,
            "backend_status": self.predictor.backend_selection.status,
            "sha256": bundle.sha256,
            "source": self.source,
            "path": str(bundle.path),
            "loaded_at": self.loaded_at,
            "in_flight": self.active,
        }


def load_slot(
    resolved: ResolvedSource, settings: ServeSettings, *, cold_start: bool = False
) -> ModelSlot:
    """Load and verify a resolved bundle with the server's settings (ModelLoadError if not).

    `cold_start`: the server's first model; a second ONNX Runtime session (for lone photos)
    is left to `ModelSlot.open_deferred_sessions`, after the first prediction.
    """
    runtime = settings.runtime_options()
    if cold_start:
        runtime = replace(runtime, spinning_session_later=True)
    loaded = open_model(
        resolved,
        backend=settings.backend,
        runtime=runtime,
        options=settings.prediction_options(),
        monitoring=settings.monitor_options(),
        # Each file is hash-checked when it is read (before ONNX Runtime or the monitor
        # gets its bytes), not every file of the bundle up front.
        check_all_files=False,
    )
    return ModelSlot(resolved.source, loaded.predictor, loaded.monitor)


@dataclass
class Slots:
    """The live slot, the one the last change replaced (for rollback), and the challenger."""

    live: ModelSlot | None = None
    previous: ModelSlot | None = None
    challenger: Challenger | None = None

    @contextlib.contextmanager
    def answering(self) -> Iterator[ModelSlot]:
        """The slot that answers one request: the live one, or a canary's share of requests.

        It counts as in flight from the moment it is chosen (no await in between, so a swap
        that replaces it waits for this request) until the block ends.
        """
        challenger = self.challenger
        if (
            challenger is not None
            and challenger.mode == "canary"
            and random.random() < challenger.share
        ):
            challenger.answered_canary(1)
            slot = challenger.slot
        else:
            assert self.live is not None
            slot = self.live
        with slot.in_flight():
            yield slot
