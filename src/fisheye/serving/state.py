"""The app's shared objects (settings, models, batchers, metrics, monitoring) and their life cycle.

A model is served from a `ModelSlot`: its Predictor, its own micro-batcher and its drift
window. A request takes one slot when it starts and uses it to the end, so a hot swap
(load, verify and warm the new slot beside the live one, then replace one reference) never
changes the model under a request in flight; the old slot stops once its last request has
been answered. The slot replaced last is kept (stopped) for a one-step rollback.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fisheye.bundle import BundleError
from fisheye.inference.predictor import Predictor
from fisheye.inference.registry import BackendUnavailableError
from fisheye.monitoring.prediction_log import PredictionLog
from fisheye.monitoring.reference import Monitor, load_predictor
from fisheye.serving.batcher import MicroBatcher
from fisheye.serving.challenger import Challenger
from fisheye.serving.decoding import DecodePool
from fisheye.serving.errors import APIError
from fisheye.serving.live_monitor import LiveMonitor, open_prediction_log
from fisheye.serving.memory import return_large_buffers_to_the_os, trim_freed_memory
from fisheye.serving.metrics import Metrics
from fisheye.serving.settings import ServeSettings
from fisheye.serving.uploads import UploadBudget
from fisheye.tracking.registry import PinMismatchError, RegistryError, resolve_reference
from fisheye.tracking.store import TrackingError, TrackingUnavailableError

log = logging.getLogger(__name__)
RETIRE_GRACE_S = 0.5


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


class ModelChangeError(Exception):
    """A model change that was refused or failed; the live model is unchanged."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail

    def api_error(self) -> APIError:
        """The JSON error the admin endpoints answer with."""
        return APIError(self.status, self.error, self.detail)


@dataclass(eq=False)
class ModelSlot:
    """One loaded model and what serves it; `active` counts the requests it is answering."""

    source: str  # what was asked for: a bundle folder or a registry URI
    predictor: Predictor
    monitor: Monitor | None
    batcher: MicroBatcher | None = None
    monitoring: LiveMonitor | None = None
    loaded_at: float = field(default_factory=time.time)
    active: int = 0

    @property
    def running(self) -> bool:
        """Whether its batcher accepts work."""
        return self.batcher is not None and self.batcher.running

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


@dataclass
class ServingState:
    """Everything a request handler needs; one per app, stored on `app.state.serving`."""

    settings: ServeSettings
    metrics: Metrics = field(default_factory=Metrics)
    live: ModelSlot | None = None
    previous: ModelSlot | None = None  # the slot the last change replaced (stopped)
    challenger: Challenger | None = None
    decoder: DecodePool | None = None
    uploads: UploadBudget | None = None
    log: PredictionLog | None = None
    ready: bool = False
    load_error: str | None = None
    changes: list[dict[str, Any]] = field(default_factory=list)  # the last model changes
    _change_lock: threading.Lock = field(default_factory=threading.Lock)
    _retiring: list[threading.Thread] = field(default_factory=list)

    # The live slot's parts, for the routes (one attribute read each).
    @property
    def predictor(self) -> Predictor | None:
        """The live model's Predictor."""
        return None if self.live is None else self.live.predictor

    @property
    def batcher(self) -> MicroBatcher | None:
        """The live model's micro-batcher."""
        return None if self.live is None else self.live.batcher

    @property
    def monitoring(self) -> LiveMonitor | None:
        """The live model's monitoring."""
        return None if self.live is None else self.live.monitoring

    # -- start-up and shutdown -----------------------------------------------------------
    def load(self) -> None:
        """Load the bundle, start its batcher and warm the model (blocking; run in a thread)."""
        s = self.settings
        start = time.perf_counter()
        path, pinned = self._resolve(s.model, s.model_sha256)
        limit_blas_threads()
        return_large_buffers_to_the_os()
        self.decoder = DecodePool(s.decode_workers, s.max_decode_queue, on_idle=trim_freed_memory)
        self.uploads = UploadBudget(s.max_upload_memory_bytes)
        if s.monitoring:
            self.log = open_prediction_log(s, self.metrics)
            if self.log is not None:
                self.log.start()
        slot = ModelSlot(str(s.model), *self._load_predictor(path, pinned))
        self._start(slot)
        self._make_live(slot)
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
            cause = exc.__cause__ if isinstance(exc, ModelChangeError) else exc
            self.load_error = (
                "the model bundle failed verification (see the server log)"
                if isinstance(cause, BundleError)
                else "the model could not be loaded (see the server log)"
            )

    def close(self) -> None:
        """Stop the batchers after they finish queued work, then the monitoring threads."""
        self.ready = False
        self.metrics.ready.set(0)
        for thread in self._retiring:
            thread.join(self.settings.request_timeout_s + 5)
        for slot in (self.live, None if self.challenger is None else self.challenger.slot):
            if slot is not None:
                self._stop(slot)
        if self.decoder is not None:
            self.decoder.close()
        if self.log is not None:
            self.log.stop()

    def prediction_log(self) -> PredictionLog:
        """The prediction log, or 404 when it is off."""
        if self.log is None:
            raise APIError(
                404,
                "prediction_log_disabled",
                "the prediction log is off (FISHEYE_MONITORING / FISHEYE_PREDICTION_LOG)",
            )
        return self.log

    # -- which model answers ---------------------------------------------------------------
    def answering_slot(self) -> ModelSlot:
        """The slot that answers the next request: the live one, or a canary's share."""
        challenger = self.challenger
        if (
            challenger is not None
            and challenger.mode == "canary"
            and random.random() < challenger.share
        ):
            return challenger.slot
        assert self.live is not None
        return self.live

    # -- model changes (blocking: run them in a thread) --------------------------------------
    def swap(self, source: Path | str, action: str = "swap") -> dict[str, Any]:
        """Load, verify and warm `source` beside the live model, then make it live."""
        with self._changing(action):
            path, pinned = self._resolve(source, None)
            slot = ModelSlot(str(source), *self._load_predictor(path, pinned))
            self._start(slot)
            return self._replace_live(slot, action)

    def reload(self) -> dict[str, Any]:
        """SIGHUP: load the configured model again (a registry alias may point elsewhere now)."""
        return self.swap(self.settings.model, action="reload")

    def attach(self, source: Path | str, mode: str, share: float) -> dict[str, Any]:
        """Load `source` as the challenger (replacing any), in shadow or canary mode."""
        with self._changing("attach"):
            path, pinned = self._resolve(source, None)
            slot = ModelSlot(str(source), *self._load_predictor(path, pinned))
            self._start(slot, role="challenger")
            old, self.challenger = (
                self.challenger,
                Challenger(slot, mode, share, self.settings, self.metrics, self.log),
            )
            if old is not None:
                self._retire(old.slot)
                old.close()
            self._record("attach", slot, mode=mode, share=share)
            return self.status()

    def detach(self) -> dict[str, Any]:
        """Drop the challenger (404 when there is none)."""
        with self._changing("detach"):
            challenger = self._need_challenger()
            self.challenger = None
            challenger.close()
            self._retire(challenger.slot)
            self._record("detach", challenger.slot)
            return self.status()

    def promote(self) -> dict[str, Any]:
        """Make the challenger the live model (the old live model is kept for rollback)."""
        with self._changing("promote"):
            challenger = self._need_challenger()
            # A fresh batcher and a live drift window; the challenger's own slot stops once
            # the canary or shadow photos it took are answered.
            slot = ModelSlot(
                challenger.slot.source, challenger.slot.predictor, challenger.slot.monitor
            )
            self._start(slot)
            self.challenger = None
            challenger.close()
            self._retire(challenger.slot)
            return self._replace_live(slot, "promote")

    def rollback(self) -> dict[str, Any]:
        """Make the model the last change replaced live again (one step back)."""
        with self._changing("rollback"):
            previous = self.previous
            if previous is None:
                raise ModelChangeError(
                    409, "nothing_to_roll_back", "no earlier model is kept: nothing to roll back"
                )
            slot = ModelSlot(previous.source, previous.predictor, previous.monitor)
            self._start(slot)
            result = self._replace_live(slot, "rollback")
            self.previous = None  # one step only
            return {**result, "previous": None}

    def status(self) -> dict[str, Any]:
        """The live, previous and challenger models and the recent changes."""
        return {
            "live": None if self.live is None else self.live.describe(),
            "previous": None if self.previous is None else self.previous.describe(),
            "challenger": None if self.challenger is None else self.challenger.describe(),
            "changes": list(self.changes),
        }

    # -- internals ---------------------------------------------------------------------------
    def _changing(self, action: str):
        """One model change at a time (409 for a second); failures are counted and logged."""
        state = self

        class _Change:
            def __enter__(self) -> None:
                if not state._change_lock.acquire(blocking=False):
                    raise ModelChangeError(
                        409, "change_in_progress", "another model change is in progress; retry"
                    )
                if not state.ready and action != "load":
                    state._change_lock.release()
                    raise ModelChangeError(503, "model_not_ready", "the server is still starting")

            def __exit__(self, kind, exc, tb) -> None:
                state._change_lock.release()
                if exc is not None:
                    state.metrics.model_swaps.labels(action, "failed").inc()
                    log.warning("model %s failed: %s", action, exc)
                    state._record(action, None, error=str(exc))

        return _Change()

    def _need_challenger(self) -> Challenger:
        if self.challenger is None:
            raise ModelChangeError(404, "no_challenger", "no challenger model is attached")
        return self.challenger

    def _resolve(self, source: Path | str, pinned: str | None) -> tuple[Path, str | None]:
        """A folder or registry URI as (bundle folder, pinned sha256), or ModelChangeError."""
        try:
            path, sha, _ = resolve_reference(source, pinned)
        except TrackingUnavailableError as exc:
            raise ModelChangeError(503, "registry_unavailable", str(exc)) from exc
        except PinMismatchError as exc:
            raise ModelChangeError(422, "bundle_not_pinned", str(exc)) from exc
        except (RegistryError, BundleError) as exc:
            raise ModelChangeError(422, "bundle_invalid", f"cannot use {source}: {exc}") from exc
        except TrackingError as exc:
            raise ModelChangeError(503, "registry_unavailable", str(exc)) from exc
        except Exception as exc:  # MLflow's own errors: an unreachable server, a bad URI
            raise ModelChangeError(
                503, "registry_unavailable", f"cannot resolve {source}: {type(exc).__name__}"
            ) from exc
        return path, sha

    def _load_predictor(self, path: Path, pinned: str | None) -> tuple[Predictor, Monitor | None]:
        """Load and verify a bundle (every file's hash; one model call checks its outputs)."""
        s = self.settings
        try:
            return load_predictor(
                path,
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
                expected_sha256=pinned,
            )
        except BundleError as exc:
            raise ModelChangeError(
                422, "bundle_invalid", f"the bundle {path} failed verification: {exc}"
            ) from exc
        except BackendUnavailableError as exc:
            raise ModelChangeError(422, "backend_unavailable", str(exc)) from exc
        except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
            raise ModelChangeError(
                422, "bundle_invalid", f"the bundle {path} cannot be loaded: {exc}"
            ) from exc

    def _start(self, slot: ModelSlot, role: str = "live") -> None:
        """Start the slot's batcher (warming the model) and its drift window."""
        s = self.settings
        predictor = slot.predictor
        decoder = self.decoder
        batcher = MicroBatcher(
            predictor.infer,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_batch_wait_ms,
            max_queue=s.max_queue,
            on_batch=self.metrics.observe_batch if role == "live" else None,
            on_queue=self.metrics.queue_depth.set if role == "live" else None,
            incoming=(lambda: decoder.pending) if decoder is not None else (lambda: 1),
            workers=s.model_workers,
        )
        # Warm up in the worker threads, at the smallest and largest batch, so the first
        # real request does not pay for lazy initialisation.
        size = predictor.preprocessing.input_size
        try:
            batcher.start(
                [np.zeros((n, 3, size, size), np.float32) for n in sorted({1, s.max_batch_size})]
            )
        except Exception as exc:
            raise ModelChangeError(
                500, "warmup_failed", f"the model failed its warm-up run: {exc}"
            ) from exc
        slot.batcher = batcher
        if s.monitoring:
            slot.monitoring = LiveMonitor(
                s,
                self.metrics,
                predictor,
                slot.monitor,
                prediction_log=self.log,
                role=role,
            )
            slot.monitoring.start()

    def _stop(self, slot: ModelSlot) -> None:
        if slot.batcher is not None:
            slot.batcher.stop()
        if slot.monitoring is not None:
            slot.monitoring.stop()

    def _make_live(self, slot: ModelSlot) -> None:
        old = self.live
        self.live = slot  # one reference: requests that start from now on take the new slot
        bundle = slot.predictor.bundle
        if old is not None:
            b = old.predictor.bundle
            self.metrics.model_info.remove(b.name, b.version, b.architecture)
        self.metrics.model_info.labels(bundle.name, bundle.version, bundle.architecture).set(1)
        self.metrics.backend_fallback.set(
            int(slot.predictor.backend_selection.fallback_from is not None)
        )
        self.metrics.model_loaded_at.set(slot.loaded_at)

    def _replace_live(self, slot: ModelSlot, action: str) -> dict[str, Any]:
        old = self.live
        assert old is not None
        slot.loaded_at = time.time()
        self._make_live(slot)
        self.previous = old
        self._retire(old)
        self.metrics.model_swaps.labels(action, "ok").inc()
        self._record(action, slot, replaced=old.describe())
        log.info(
            "%s: %s %s is live (was %s %s)",
            action,
            slot.predictor.bundle.name,
            slot.predictor.bundle.version,
            old.predictor.bundle.name,
            old.predictor.bundle.version,
        )
        return self.status()

    def _retire(self, slot: ModelSlot) -> None:
        """Stop a slot once the requests it took are answered (in a background thread)."""
        deadline = time.monotonic() + self.settings.request_timeout_s + 5

        def wait_then_stop() -> None:
            # A request that read the old `live` just before the switch counts itself in
            # `active` right after (no await in between); the grace covers that instant.
            time.sleep(RETIRE_GRACE_S)
            while slot.active > 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            self._stop(slot)

        self._retiring = [t for t in self._retiring if t.is_alive()]
        thread = threading.Thread(target=wait_then_stop, name="fisheye-retire", daemon=True)
        thread.start()
        self._retiring.append(thread)

    def _record(self, action: str, slot: ModelSlot | None, **extra: Any) -> None:
        entry: dict[str, Any] = {"action": action, "at": time.time(), **extra}
        if slot is not None:
            entry["model"] = {k: slot.describe()[k] for k in ("name", "version", "sha256")}
        self.changes = [*self.changes[-19:], entry]
