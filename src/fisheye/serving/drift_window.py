"""The server's drift window: features of the last N accepted photos, tested in the background."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from fisheye.monitoring.alarm_budget import AlarmBudget
from fisheye.monitoring.drift import DriftDetector, DriftResult

log = logging.getLogger(__name__)


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value by `nice` (Linux: a thread id is a valid
    PRIO_PROCESS target), so its background work yields the cores to answering requests."""
    if nice > 0 and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError, AttributeError):
            tid = threading.get_native_id()
            current = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))


class DriftWindow:
    """A ring buffer of features (never photos) and a thread that runs the MMD test on it.

    `observe` is cheap and safe to call from any thread. The test runs in its own thread
    every `every_requests` photos or every `interval_s` seconds (whichever comes first),
    once the window holds at least `min_samples` photos.

    With `false_alarms_per_photo` (r), each test runs at level alpha = r x (photos not yet
    spent) (`AlarmBudget`): on a healthy stream the expected number of false alarms over N
    photos is at most r x N whatever the windows' overlap or the test schedule.
    """

    def __init__(
        self,
        detector: DriftDetector,
        *,
        size: int = 200,
        every_requests: int = 200,
        interval_s: float = 60.0,
        min_samples: int = 30,
        min_interval_s: float = 0.0,
        nice: int = 10,
        false_alarms_per_photo: float | None = None,
        on_result: Callable[[DriftResult], None] | None = None,
    ) -> None:
        self.detector = detector
        self.size = size
        self.every_requests = every_requests
        self.interval_s = interval_s
        self.min_samples = min(min_samples, size)
        self.min_interval_s = min_interval_s
        self.nice = nice
        self.on_result = on_result
        self.false_alarms_per_photo = false_alarms_per_photo
        self._budget = (
            None if false_alarms_per_photo is None else AlarmBudget(false_alarms_per_photo)
        )
        self._features: deque[np.ndarray] = deque(maxlen=size)
        self._ood: deque[bool] = deque(maxlen=size)
        self._times: deque[float] = deque(maxlen=size)
        self._labels: deque[int] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._since_test = 0
        self._last_test = time.monotonic()
        self._last_run: float | None = None  # when the last test ran (the rate limit)
        self._thread: threading.Thread | None = None
        self.latest: DriftResult | None = None
        self.latest_window: dict[str, Any] | None = None
        self.tests = 0

    def __len__(self) -> int:
        return len(self._features)

    def observe(
        self,
        features: np.ndarray,
        in_distribution: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        """Add accepted photos' features (n, D) and predicted class indices to the window."""
        now = time.time()
        with self._lock:
            for i, row in enumerate(np.asarray(features, dtype=np.float32)):
                self._features.append(row)
                ood = in_distribution is not None and not bool(in_distribution[i])
                self._ood.append(ood)
                self._times.append(now)
                self._labels.append(-1 if labels is None else int(labels[i]))
            self._since_test += len(features)
            due = self._since_test >= self.every_requests
        if due:
            self._wake.set()

    def start(self) -> None:
        """Start the background test thread."""
        self._thread = threading.Thread(target=self._run, name="fisheye-drift", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background thread and drop the result callback (a stopped window reports
        nothing, and holds no reference to its owner)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.on_result = None

    def _lower_priority(self) -> None:
        # The test is background work and must not take cores from the model under load.
        # (NumPy's BLAS runs one thread in the server.)
        lower_thread_priority(self.nice)

    @property
    def prepared(self) -> bool:
        """Whether the detector's reference is ready for a test (it is prepared in the thread)."""
        return self.detector.prepared

    def _run(self) -> None:
        self._lower_priority()
        try:
            # The reference's own kernel block, at this thread's low priority: the server
            # answers before it is done, and a test due earlier computes it itself.
            self.detector.prepare()
        except Exception:  # the monitor must never take the server down
            log.exception("preparing the drift reference failed")
        while not self._stop.is_set():
            remaining = self.interval_s - (time.monotonic() - self._last_test)
            self._wake.wait(max(remaining, 0.05))
            self._wake.clear()
            if self._stop.is_set():
                return
            # Rate limit: at most one test per min_interval_s, however busy the server is.
            if self._last_run is not None:
                wait = self.min_interval_s - (time.monotonic() - self._last_run)
                if wait > 0 and self._stop.wait(wait):
                    return
            with self._lock:
                due = self._since_test >= self.every_requests or (
                    self._since_test > 0 and time.monotonic() - self._last_test >= self.interval_s
                )
            if not due:
                if time.monotonic() - self._last_test >= self.interval_s:
                    self._last_test = time.monotonic()
                continue
            try:
                self.run_test()
            except Exception:  # the monitor must never take the server down
                log.exception("background drift test failed")

    def run_test(self) -> DriftResult | None:
        """Test the current window now (returns None while it is too small)."""
        with self._lock:
            if len(self._features) < self.min_samples:
                return None
            feats = np.stack(self._features)
            ood = np.array(self._ood)
            labels = np.array(self._labels)
            new_photos = self._since_test
            window = {
                "size": len(feats),
                "capacity": self.size,
                "from": self._times[0],
                "to": self._times[-1],
            }
            self._since_test = 0
            self._last_test = self._last_run = time.monotonic()
        alpha = None if self._budget is None else self._budget.alpha(new_photos)
        result = self.detector.test(
            feats,
            seed=self.tests,
            ood_fraction=float(ood.mean()),
            alpha=alpha,
            labels=labels if (labels >= 0).all() else None,
        )
        self.tests += 1
        if self._budget is not None:
            self._budget.settle(result)
        self.latest, self.latest_window = result, window
        log.info(
            "drift test on the last %d photos: MMD %.4f, %s, class mix p = %s (alpha %.3g)%s",
            result.n,
            result.score,
            result.p_text(),
            "n/a" if result.class_mix_p_value is None else f"{result.class_mix_p_value:.3g}",
            result.alpha,
            " DRIFT" if result.alarm else "",
        )
        on_result = self.on_result
        if on_result is not None:
            on_result(result)
        return result
