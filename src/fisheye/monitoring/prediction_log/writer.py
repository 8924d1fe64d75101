"""The prediction log's writer: rows queued on the request path, written by one thread.

`record` only puts a row on a bounded queue. One writer thread writes rows in batches to the
store and applies retention (by age and by row count). If the disk is full, the database is
locked or read-only, or the queue overflows, the rows are dropped and counted (`on_lost`);
the prediction itself is never delayed or failed.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fisheye.monitoring.prediction_log.rows import (
    FeedbackConflictError,
    FeedbackError,
    PredictionRow,
    ShadowRow,
    StoreError,
)
from fisheye.monitoring.prediction_log.store import LogStore, SQLiteStore

log = logging.getLogger(__name__)


class _Barrier:
    def __init__(self) -> None:
        self.event = threading.Event()


class PredictionLog:
    """Asynchronous SQLite prediction log with retention and lost-row accounting."""

    def __init__(
        self,
        store: LogStore | Path,
        *,
        retention_days: float = 30.0,
        max_rows: int = 1_000_000,
        max_queue: int = 10_000,
        image_dir: Path | None = None,
        on_lost: Callable[[int], None] | None = None,
        retention_every_s: float = 60.0,
        linger_s: float = 0.05,
    ) -> None:
        self.store: LogStore = store if not isinstance(store, Path) else SQLiteStore(store)
        self.retention_days = retention_days
        self.max_rows = max_rows
        self.image_dir = image_dir
        self.on_lost = on_lost
        self.retention_every_s = retention_every_s
        self.linger_s = linger_s
        self.lost = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._last_error_log = 0.0
        self._last_retention = 0.0
        # Predictions queued but not yet written: feedback on them needs no flush.
        self._pending: dict[str, tuple[float, str]] = {}
        self._pending_lock = threading.Lock()

    # -- writer side -------------------------------------------------------------------
    @property
    def path(self) -> Path | None:
        """The SQLite file, when the log is one."""
        return self.store.path if isinstance(self.store, SQLiteStore) else None

    def start(self) -> None:
        """Create the database (if possible) and start the writer thread."""
        if self.path is not None:
            with contextlib.suppress(OSError):  # reported when the writer opens it
                self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="fisheye-predlog", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer thread."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None

    def record(self, row: PredictionRow, image: bytes | None = None) -> None:
        """Queue a prediction for writing; never blocks (a full queue drops and counts it)."""
        with self._pending_lock:
            self._pending[row.id] = (row.ts, row.label)
        if not self._put(("prediction", row, image)):
            with self._pending_lock:
                self._pending.pop(row.id, None)

    def record_drift(
        self, result: dict[str, Any], role: str = "live", model_version: str | None = None
    ) -> None:
        """Queue a drift-test result of the live model or of a challenger."""
        self._put(("drift", {**result, "role": role, "model_version": model_version}, None))

    def record_shadow(self, row: ShadowRow) -> None:
        """Queue a shadow challenger's answer for a logged prediction."""
        self._put(("shadow", row, None))

    def _put(self, item: Any) -> bool:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._count_lost(1, "the prediction log queue is full")
            return False
        return True

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until rows queued so far are written (or dropped); False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return False
        barrier = _Barrier()
        try:
            self._queue.put(barrier, timeout=timeout)
        except queue.Full:
            return False
        return barrier.event.wait(timeout)

    def _count_lost(self, n: int, why: str) -> None:
        self.lost += n
        if self.on_lost is not None:
            self.on_lost(n)
        now = time.monotonic()
        if now - self._last_error_log > 10:  # at most one warning per 10 s
            self._last_error_log = now
            log.warning("prediction log: %d row(s) lost (%s); predictions are unaffected", n, why)

    def _open(self) -> bool:
        try:
            self.store.open()
        except StoreError as exc:
            self._count_lost(0, str(exc))
            return False
        return True

    def _run(self) -> None:
        opened = self._open()
        stop = False
        while not stop:
            items = [self._queue.get()]
            # Linger briefly so a busy server commits many rows per transaction instead of
            # one per request (each commit costs far more than the rows in it).
            deadline = time.monotonic() + self.linger_s
            while (
                len(items) < 500 and items[-1] is not None and not isinstance(items[-1], _Barrier)
            ):
                remaining = deadline - time.monotonic()
                try:
                    items.append(
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
            rows, drifts, shadows, barriers = [], [], [], []
            for item in items:
                if item is None:
                    stop = True
                elif isinstance(item, _Barrier):
                    barriers.append(item)
                elif item[0] == "prediction":
                    rows.append((item[1], item[2]))
                elif item[0] == "shadow":
                    shadows.append(item[1])
                else:
                    drifts.append(item[1])
            if not opened and (rows or drifts or shadows):
                opened = self._open()
            self._write(opened, rows, drifts, shadows)
            with self._pending_lock:
                for row, _ in rows:
                    self._pending.pop(row.id, None)
            if opened:
                self._maybe_retain()
            for b in barriers:
                b.event.set()
        self.store.close()

    def _save_image(self, row: PredictionRow, image: bytes) -> str | None:
        assert self.image_dir is not None
        try:
            folder = self.image_dir / row.sha256[:2]
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / row.sha256
            if not target.exists():
                target.write_bytes(image)
            return str(target)
        except OSError as exc:
            log.warning("could not store the photo of prediction %s: %s", row.id, exc)
            return None

    def _write(self, opened: bool, rows: list, drifts: list, shadows: list) -> None:
        if not rows and not drifts and not shadows:
            return
        if not opened:
            self._count_lost(
                len(rows) + len(drifts) + len(shadows), "the database cannot be opened"
            )
            return
        for row, image in rows:
            if image is not None and self.image_dir is not None:
                row.image_path = self._save_image(row, image)
        try:
            self.store.write([row for row, _ in rows], drifts, shadows)
        except StoreError as exc:
            self._count_lost(len(rows) + len(drifts) + len(shadows), str(exc))

    def _maybe_retain(self) -> None:
        now = time.monotonic()
        if now - self._last_retention < self.retention_every_s:
            return
        self._last_retention = now
        with contextlib.suppress(StoreError):
            self.store.retain(self.retention_days, self.max_rows)

    # -- reader side (any thread) ---------------------------------------------------------
    def add_feedback(self, prediction_id: str, label: str) -> dict[str, Any]:
        """Record the true label of a logged prediction; returns whether it was right.

        The first feedback on a prediction counts. A later, different label raises
        FeedbackConflictError after keeping it in `feedback_corrections` (audit); the same
        label again is answered like the first. StoreError when the log cannot be used.
        """
        found = self.store.find_prediction(prediction_id)
        if found is None:
            with self._pending_lock:
                found = self._pending.get(prediction_id)
        if found is None:
            raise FeedbackError(f"no logged prediction has id {prediction_id!r}")
        prediction_ts, predicted = found
        added, recorded, n, correct = self.store.add_feedback(
            prediction_id, label, predicted, prediction_ts
        )
        result = {
            "id": prediction_id,
            "label": recorded,
            "predicted": predicted,
            "correct": predicted == recorded,
            "accuracy": correct / n if n else None,
            "feedback_count": n,
            "new": added,
        }
        if not added and recorded != label:
            raise FeedbackConflictError(
                f"prediction {prediction_id!r} already has feedback {recorded!r}; "
                f"{label!r} was kept as a correction for review",
                result,
            )
        return result

    def summary(self, window_s: float) -> dict[str, Any]:
        """Counts per class, confidence, OOD rate, feedback accuracy, latency, drift."""
        self.flush()  # include the rows still queued
        return self.store.summary(time.time() - window_s)
