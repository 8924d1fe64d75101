"""The fleet's drift test: one elected replica tests every replica's recent photos.

Each replica's `FleetDrift` thread, every `poll_s`:

1. writes the feature rows its `FeatureSampler` admitted since the last round;
2. tries to take the leader lease (a PostgreSQL advisory lock, `FleetStore.try_lead`) unless
   it holds it; the one that holds it runs the drift test, the label-free accuracy estimate
   and the OOD fraction on the fleet's `size` most recent photos of its feature space
   when a test is due (`every_requests` photos of the fleet since the previous fleet test,
   or `interval_s` seconds with some, at most once per `min_interval_s`), writes the result,
   and keeps the feature table to `keep_rows` rows;
3. reads the fleet's latest result, which every replica reports (`latest`, the
   fisheye_fleet_* gauges).

The false-alarm budget is the per-replica test's (`AlarmBudget`), counted over the fleet's
photos: each test spends the photos the fleet answered since the previous fleet test (every
sampled row counts the photos it stands for), so the expected number of false alarms over N
photos of the fleet is at most N x the budget per photo, whichever replica leads. Where the
previous test left off (its newest row, the photos it did not spend) is read from its result,
so a new leader carries on from there. Rows committed out of id order may be missed by that
count: the budget is then spent more slowly, never faster.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from fisheye.inference import backends
from fisheye.inference.predictor import Predictor
from fisheye.monitoring.alarm_budget import AlarmBudget
from fisheye.monitoring.drift import DriftDetector
from fisheye.monitoring.monitor import Monitor
from fisheye.monitoring.prediction_log import StoreError, is_postgres_url, open_fleet_store
from fisheye.serving.drift_window import lower_thread_priority
from fisheye.serving.fleet_features import FeatureSampler
from fisheye.serving.metrics import Metrics
from fisheye.serving.settings import ServeSettings

if TYPE_CHECKING:  # psycopg is imported only when a fleet store is opened
    from fisheye.monitoring.prediction_log.fleet_store import FleetStore
    from fisheye.monitoring.prediction_log.pg_fleet import LastTest

log = logging.getLogger(__name__)
PRUNE_EVERY_S = 10.0
ERROR_LOG_EVERY_S = 30.0


class FleetDrift:
    """One replica's part in the fleet's drift test (see the module's docstring)."""

    def __init__(
        self,
        store: FleetStore,
        sampler: FeatureSampler,
        detector: DriftDetector,
        *,
        size: int = 200,
        every_requests: int = 200,
        interval_s: float = 60.0,
        min_interval_s: float = 0.0,
        min_samples: int = 30,
        false_alarms_per_photo: float,
        keep_rows: int = 10_000,
        poll_s: float = 1.0,
        prune_every_s: float = PRUNE_EVERY_S,
        nice: int = 10,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.sampler = sampler
        self.detector = detector
        self.size = size
        self.every_requests = every_requests
        self.interval_s = interval_s
        self.min_interval_s = min_interval_s
        self.min_samples = min(min_samples, size)
        self.false_alarms_per_photo = false_alarms_per_photo
        self.keep_rows = max(keep_rows, size)
        self.poll_s = poll_s
        self.prune_every_s = prune_every_s
        self.nice = nice
        self.metrics = metrics
        self.latest: dict[str, Any] | None = None  # the fleet's latest result
        self.tests = 0  # fleet tests this replica ran as the leader
        self.rows_written = 0
        self.error: str | None = None  # the last round's store error, None once one succeeds
        self._lead_since: float | None = None
        self._last_prune = float("-inf")
        self._last_error_log = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def feature_space(self) -> str:
        """The bundle and backend family whose photos this replica samples and tests."""
        return self.sampler.feature_space

    @property
    def leading(self) -> bool:
        """Whether this replica runs the fleet's test now."""
        return self.store.leading

    def start(self) -> None:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._run, name="fisheye-fleet-drift", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread, write the rows still waiting, close the connection (giving the
        lease up)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        try:
            if self.error is None:  # a store that failed the last round is not waited for
                self._flush()
        except StoreError:
            pass  # a sample: what the store does not take now is not kept
        finally:
            self.store.close()
            self._set_leading(False)

    def _run(self) -> None:
        # The test is background work and must not take cores from the model under load.
        lower_thread_priority(self.nice)
        while not self._stop.wait(self.poll_s):
            self.step()

    def step(self) -> None:
        """One round: write the sample, lead if possible (testing when due), read the latest
        result. Never raises: store errors are kept in `error` and logged."""
        try:
            self._flush()
            if self.store.try_lead():
                self._set_leading(True)
                self._lead()
            else:
                self._set_leading(False)
            self._report(self.store.latest_result())
            self.error = None
        except StoreError as exc:
            self._set_leading(self.store.leading)
            self._failed(str(exc))
        except Exception as exc:  # the monitor must never take the server down
            log.exception("the fleet drift round failed")
            self._failed(f"{type(exc).__name__}: {exc}")

    def _flush(self) -> None:
        rows = self.sampler.take()
        if not rows:
            return
        try:
            self.store.write_features(rows)
        except StoreError:
            self.sampler.put_back(rows)
            raise
        self.rows_written += len(rows)
        if self.metrics is not None:
            self.metrics.fleet_feature_rows.inc(len(rows))

    def _lead(self) -> None:
        now = time.time()
        if self._lead_since is None:
            self._lead_since = now
            log.info("this replica now runs the fleet's drift test")
        last = self.store.last_test(self.feature_space)
        photos, newest = self.store.new_photos(
            self.feature_space, 0 if last is None else last.last_feature
        )
        since = now - (self._lead_since if last is None else last.ts)
        due = photos >= self.every_requests or (photos > 0 and since >= self.interval_s)
        if due and (last is None or since >= self.min_interval_s):
            self._test(last, photos, newest)
        if now - self._last_prune >= self.prune_every_s:
            self._last_prune = now
            self.store.prune(self.keep_rows)

    def _test(self, last: LastTest | None, photos: int, newest: int) -> None:
        window = self.store.window(self.feature_space, self.size)
        if len(window) < self.min_samples:
            return
        budget = AlarmBudget(self.false_alarms_per_photo, 0 if last is None else last.unspent)
        alpha = budget.alpha(photos)
        labels = window.labels if (window.labels >= 0).all() else None
        result = self.detector.test(
            window.features,
            seed=newest,
            ood_fraction=float(window.ood.mean()),
            alpha=alpha,
            labels=labels,
        )
        budget.settle(result)
        known = window.confidence[np.isfinite(window.confidence)]
        # Mean calibrated confidence: the label-free accuracy estimate of the same photos.
        estimated = float(known.mean()) if known.size else None
        detail = {
            **result.to_dict(),
            "p_value_text": result.p_text(),
            "alarm": result.alarm,
            "estimated_accuracy": estimated,
            "leader": self.store.replica,
            "model_version": self.sampler.model_version,
            "feature_space": self.feature_space,
            "new_photos": photos,
            "window": {
                "size": len(window),
                "capacity": self.size,
                "from": window.first_ts,
                "to": window.last_ts,
                "replicas": window.replicas,
            },
        }
        self.store.write_result(
            {
                **{k: detail[k] for k in ("leader", "model_version", "feature_space", "n")},
                **{k: detail[k] for k in ("score", "p_value", "alpha", "drift", "alarm")},
                "ts": result.computed_at,
                "last_feature": newest,
                "new_photos": photos,
                "unspent": budget.unspent,
                "class_mix_p_value": result.class_mix_p_value,
                "ood_fraction": result.ood_fraction,
                "estimated_accuracy": estimated,
                "detail": detail,
            }
        )
        self.tests += 1
        log.info(
            "fleet drift test on the last %d photos of %s: MMD %.4f, %s (alpha %.3g)%s",
            result.n,
            ", ".join(f"{r} {n}" for r, n in window.replicas.items()),
            result.score,
            result.p_text(),
            result.alpha,
            " DRIFT" if result.alarm else "",
        )

    def _report(self, row: dict[str, Any] | None) -> None:
        if row is None or (self.latest is not None and self.latest["id"] == row["id"]):
            return
        self.latest = {"id": row["id"], **row["detail"]}
        m = self.metrics
        if m is None:
            return
        m.fleet_drift_score.set(row["score"])
        m.fleet_drift_p_value.set(row["p_value"])
        m.fleet_drift_alarm.set(int(row["alarm"]))
        mix = row["class_mix_p_value"]
        m.fleet_class_mix_p_value.set(float("nan") if mix is None else mix)
        estimated = row["estimated_accuracy"]
        m.fleet_estimated_accuracy.set(float("nan") if estimated is None else estimated)

    def _set_leading(self, leading: bool) -> None:
        if not leading:
            self._lead_since = None
        if self.metrics is not None:
            self.metrics.fleet_drift_leader.set(int(leading))

    def _failed(self, why: str) -> None:
        self.error = why
        now = time.monotonic()
        if now - self._last_error_log > ERROR_LOG_EVERY_S:
            self._last_error_log = now
            log.warning("fleet drift: %s (the replica's own drift test goes on)", why)

    def status(self) -> dict[str, Any]:
        """This replica's view of the fleet's drift test, for GET /v1/monitoring/drift."""
        return {
            "enabled": True,
            "leader": self.leading,
            "feature_space": self.feature_space,
            "features_per_s": self.sampler.per_s,
            "feature_rows_written": self.rows_written,
            "feature_rows_dropped": self.sampler.dropped,
            "tests_run_here": self.tests,
            "error": self.error,
            "latest": self.latest,
        }


def fleet_drift_for(
    settings: ServeSettings, metrics: Metrics, predictor: Predictor, monitor: Monitor
) -> FleetDrift | None:
    """The live model's part in the fleet's drift test, or None: the prediction log is not a
    PostgreSQL store (one machine: its own test is the whole story) or the sample is off."""
    db = settings.prediction_db
    if not (settings.prediction_log and is_postgres_url(db) and settings.fleet_features_per_s):
        return None
    bundle = predictor.bundle
    sampler = FeatureSampler(
        settings.fleet_features_per_s,
        model_version=bundle.version,
        # Features of one bundle and backend family are comparable (the same reference).
        feature_space=f"{bundle.sha256[:16] or bundle.version}/"
        f"{backends.family(predictor.backend_name)}",
    )
    return FleetDrift(
        open_fleet_store(str(db), replica=settings.replica_id, timeout_s=settings.store_timeout_s),
        sampler,
        monitor.drift,
        size=settings.drift_window,
        every_requests=settings.drift_every_requests,
        interval_s=settings.drift_interval_s,
        min_interval_s=settings.drift_min_interval_s,
        min_samples=settings.drift_min_samples,
        false_alarms_per_photo=settings.drift_false_alarms_per_10k / 10_000,
        keep_rows=settings.fleet_feature_rows,
        metrics=metrics,
    )
