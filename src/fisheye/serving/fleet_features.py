"""A replica's sample of its photos' features for the fleet's drift test (PostgreSQL store).

`offer` runs after each answer and is cheap: a token bucket admits at most `per_s` photos a
second (so the store never carries more than replicas x per_s rows a second, however busy
the fleet is), and each admitted row counts the photos skipped before it, so the fleet's
test spends its false-alarm budget over every photo the fleet answered. Admitted rows wait in
a bounded buffer until the fleet monitor's thread writes them (`take`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from fisheye.monitoring.prediction_log import FeatureRow
from fisheye.monitoring.prediction_log.fleet_rows import encode_features

PENDING_SECONDS = 30  # how many seconds of admitted rows wait for the store at most


class FeatureSampler:
    """At most `per_s` photos a second of one replica's live model, as feature rows."""

    def __init__(
        self,
        per_s: float,
        *,
        model_version: str,
        feature_space: str,
        max_pending: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_s <= 0:
            raise ValueError(f"the feature sample rate must be positive, got {per_s}")
        self.per_s = per_s
        self.model_version = model_version
        self.feature_space = feature_space
        self.max_pending = max_pending or max(100, int(per_s * PENDING_SECONDS))
        self._burst = max(1.0, per_s)  # one second's worth
        self._tokens = self._burst
        self._clock = clock
        self._last = clock()
        self._skipped = 0  # photos seen since the last admitted one
        self._pending: deque[FeatureRow] = deque()
        self._lock = threading.Lock()
        self.dropped = 0  # admitted rows dropped because the buffer was full

    def offer(
        self,
        features: np.ndarray,
        ood: np.ndarray,
        labels: np.ndarray,
        confidences: np.ndarray,
    ) -> None:
        """Offer answered photos (features (n, D), OOD flags, class indices, confidences)."""
        now, ts = self._clock(), time.time()
        with self._lock:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self.per_s)
            self._last = now
            for i in range(len(features)):
                self._skipped += 1
                if self._tokens < 1:
                    continue
                self._tokens -= 1
                conf = float(confidences[i])
                self._keep(
                    FeatureRow(
                        ts=ts,
                        model_version=self.model_version,
                        feature_space=self.feature_space,
                        photos=self._skipped,
                        label=int(labels[i]),
                        ood=bool(ood[i]),
                        confidence=conf if np.isfinite(conf) else None,
                        features=encode_features(features[i]),
                    )
                )
                self._skipped = 0

    def take(self) -> list[FeatureRow]:
        """The admitted rows not yet taken, oldest first."""
        with self._lock:
            rows = list(self._pending)
            self._pending.clear()
        return rows

    def put_back(self, rows: list[FeatureRow]) -> None:
        """Return rows the store did not take, before the newer ones (the oldest beyond the
        bound are dropped)."""
        with self._lock:
            self._pending.extendleft(reversed(rows))
            while len(self._pending) > self.max_pending:
                self._pending.popleft()
                self.dropped += 1

    def _keep(self, row: FeatureRow) -> None:
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(row)
