"""Monitoring inside the server: the drift window, OOD counts and the prediction log.

The Predictor's one model call per batch gives probabilities, features and OOD scores, so
monitoring never runs the model twice. Everything after the answer (window, metrics, log)
is a few appends; the drift test and the SQLite writes run in their own threads.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

from fisheye.inference.predictor import Predictor
from fisheye.monitoring.drift import DriftResult
from fisheye.monitoring.monitor import Monitor
from fisheye.monitoring.prediction_log import PredictionLog, PredictionRow, open_store
from fisheye.monitoring.prediction_log.spool import Spool
from fisheye.serving.drift_window import DriftWindow
from fisheye.serving.fleet_drift import FleetDrift, fleet_drift_for
from fisheye.serving.metrics import Metrics
from fisheye.serving.settings import ServeSettings, default_prediction_db

log = logging.getLogger(__name__)


@dataclass
class Observation:
    """One answered photo, for the window, the metrics and the log."""

    id: str
    label: str
    confidence: float
    ood_score: float | None
    in_distribution: bool | None
    features: np.ndarray | None
    data: bytes | None
    unsure: bool = False  # answered "not sure" (under the abstention threshold)


def open_prediction_log(settings: ServeSettings, metrics: Metrics) -> PredictionLog | None:
    """The app's prediction log (shared by every loaded model), or None when it is off."""
    if not settings.prediction_log:
        return None
    store = open_store(
        settings.prediction_db, replica=settings.replica_id, timeout_s=settings.store_timeout_s
    )
    spool = None
    if getattr(store, "shared", False) and settings.log_spool_max_bytes > 0:
        # One file per replica, should replicas share a volume.
        name = re.sub(r"[^A-Za-z0-9._-]", "_", settings.replica_id)[:100]
        path = settings.log_spool or default_prediction_db().with_name(f"spool-{name}.jsonl")
        spool = Spool(path, settings.log_spool_max_bytes)
    return PredictionLog(
        store,
        spool=spool,
        retention_days=settings.log_retention_days,
        max_rows=settings.log_max_rows,
        on_lost=metrics.log_lost_rows.inc,
        on_degraded=lambda degraded: metrics.log_degraded.set(int(degraded)),
    )


def _weak_callback(method: Callable[[DriftResult], None]) -> Callable[[DriftResult], None]:
    """`method` called through a weak reference to its object.

    The drift window is owned by the monitor; a bound method in the window would make a
    reference cycle (monitor -> window -> method -> monitor) that keeps a retired model's
    predictor, sessions and buffers alive until the cycle collector happens to run.
    """
    ref = weakref.WeakMethod(method)

    def call(result: DriftResult) -> None:
        target = ref()
        if target is not None:
            target(result)

    return call


class LiveMonitor:
    """Owns one model's drift window, and writes to the app's prediction log.

    The live model's monitor sets the drift metrics; a challenger's (`role="challenger"`)
    sets the challenger's, so the two never overwrite each other.
    """

    def __init__(
        self,
        settings: ServeSettings,
        metrics: Metrics,
        predictor: Predictor,
        monitor: Monitor | None,
        prediction_log: PredictionLog | None = None,
        role: str = "live",
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.predictor = predictor
        self.monitor = monitor
        self.role = role
        self._class_index = {c: i for i, c in enumerate(predictor.classes)}
        if self.monitor is None:
            log.warning(
                "the bundle %s has no drift reference: answers carry no OOD score and no drift "
                "is tracked (create it with `fisheye drift fit`)",
                predictor.bundle.path,
            )
        self.window: DriftWindow | None = None
        if self.monitor is not None:
            self.window = DriftWindow(
                self.monitor.drift,
                size=settings.drift_window,
                every_requests=settings.drift_every_requests,
                interval_s=settings.drift_interval_s,
                min_samples=settings.drift_min_samples,
                min_interval_s=settings.drift_min_interval_s,
                false_alarms_per_photo=settings.drift_false_alarms_per_10k / 10_000,
                on_result=_weak_callback(self._on_drift),
            )
        # With a PostgreSQL store: the live model's share of the fleet's drift test.
        self.fleet: FleetDrift | None = None
        if self.monitor is not None and role == "live":
            self.fleet = fleet_drift_for(settings, metrics, predictor, self.monitor)
        self.prediction_log = prediction_log

    @property
    def status(self) -> str:
        """ "ready", "loading" (the drift reference is prepared in the background; answers
        already carry OOD scores) or "no_reference" (the bundle has none)."""
        if self.window is None:
            return "no_reference"
        return "ready" if self.window.prepared else "loading"

    def start(self) -> None:
        """Start the background drift test (the app starts and stops the shared log)."""
        if self.window is not None:
            self.window.start()
        if self.fleet is not None:
            self.fleet.start()

    def stop(self) -> None:
        """Stop the background drift test."""
        if self.window is not None:
            self.window.stop()
        if self.fleet is not None:
            self.fleet.stop()

    def observe(
        self, items: list[Observation], latency_ms: float, kept: Collection[str] = ()
    ) -> None:
        """After answering: feed the drift window, count OOD photos, queue the log rows (those
        whose id is in `kept` name their photo, queued for the photo archive)."""
        feats = [it.features for it in items if it.features is not None]
        if self.window is not None and feats:
            flags = np.array(
                [it.in_distribution is not False for it in items if it.features is not None]
            )
            labels = np.array(
                [self._class_index.get(it.label, -1) for it in items if it.features is not None]
            )
            stacked = np.stack(feats)
            self.window.observe(stacked, flags, labels)
            if self.fleet is not None:
                confidences = np.array([it.confidence for it in items if it.features is not None])
                self.fleet.sampler.offer(stacked, ~flags, labels, confidences)
        n_ood = sum(it.in_distribution is False for it in items)
        if n_ood:
            self.metrics.ood_predictions.inc(n_ood)
        if self.prediction_log is None:
            return
        now = time.time()
        bundle = self.predictor.bundle
        for it in items:
            sha256 = hashlib.sha256(it.data).hexdigest() if it.data is not None else ""
            row = PredictionRow(
                id=it.id,
                ts=now,
                model_version=bundle.version,
                backend=self.predictor.backend_name,
                label=it.label,
                confidence=it.confidence,
                ood_score=it.ood_score
                if it.ood_score is None or np.isfinite(it.ood_score)
                else 1e308,
                in_distribution=it.in_distribution,
                latency_ms=latency_ms,
                sha256=sha256,
                photo_sha256=sha256 if it.id in kept and sha256 else None,
            )
            self.prediction_log.record(row)

    def _on_drift(self, result: DriftResult) -> None:
        version = self.predictor.bundle.version
        if self.role != "live":
            self.metrics.challenger_drift_p_value.set(result.p_value)
            if self.prediction_log is not None:
                self.prediction_log.record_drift(
                    result.to_dict(), role="challenger", model_version=version
                )
            return
        self.metrics.drift_p_value.set(result.p_value)
        self.metrics.drift_alarm.set(int(result.alarm))
        if result.class_mix_p_value is not None:
            self.metrics.class_mix_p_value.set(result.class_mix_p_value)
        if result.drift:
            self.metrics.drift_alarms.labels("mmd").inc()
        if result.class_mix_drift:
            self.metrics.drift_alarms.labels("class_mix").inc()
        self.metrics.drift_score.set(result.score)
        self.metrics.drift_tests.inc()
        if self.prediction_log is not None:
            self.prediction_log.record_drift(result.to_dict(), model_version=version)

    def drift_status(self) -> dict[str, Any]:
        """The latest drift result with its window, for GET /v1/monitoring/drift."""
        if self.window is None:
            return {"enabled": False, "detail": "the model bundle has no drift reference"}
        latest = self.window.latest
        assert self.monitor is not None
        fleet = {} if self.fleet is None else {"fleet": self.fleet.status()}
        return {
            "enabled": True,
            "status": self.status,
            # The reference must come from the serving backend's features (int8 differs).
            "reference_backend": self.monitor.backend,
            "serving_backend": self.predictor.backend_name,
            "reference_matches_backend": self.monitor.matches_backend,
            "window": {
                "size": len(self.window),
                "capacity": self.window.size,
                "every_requests": self.window.every_requests,
                "interval_s": self.window.interval_s,
                "min_samples": self.window.min_samples,
                "min_interval_s": self.window.min_interval_s,
                "tested": self.window.latest_window,
                "false_alarms_per_10k": self.settings.drift_false_alarms_per_10k,
            },
            "class_prior": self.monitor.drift.class_prior is not None,
            "tests": self.window.tests,
            "latest": None
            if latest is None
            else {**latest.to_dict(), "p_value_text": latest.p_text()},
            **fleet,
        }
