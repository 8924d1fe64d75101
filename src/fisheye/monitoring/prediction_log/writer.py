"""The prediction log's writer: every write goes through one thread and one connection.

`record` only puts a row on a bounded queue; `add_feedback` puts a request on the same queue
and waits for its answer. One writer thread writes rows in batches, then the feedback that
came after them, and applies retention (by age and by row count). Being the only writer in
the process, it never competes with itself for SQLite's lock; when another process holds it,
the writer keeps the batch and tries again until it is written. Rows are dropped and counted
(`on_lost`) only when they cannot be kept: the disk is full, the database is read-only or
cannot be opened, the queue overflows, or the log stops while the lock is still held. The
prediction itself is never delayed or failed.

With a PostgreSQL store shared by replicas: while the store cannot be reached or does not
answer within its timeout, batches go to a bounded spool file (spool.py) and are replayed in
order when it answers (`degraded` says why meanwhile); feedback on an id not found is
looked up again for SHARED_STORE_GRACE_S, as the replica that answered it may still be
writing it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fisheye.monitoring.prediction_log.feedback_writes import FeedbackRequest, FeedbackWrites
from fisheye.monitoring.prediction_log.rows import (
    PredictionRow,
    ShadowRow,
    StoreBusyError,
    StoreError,
    StoreUnavailableError,
)
from fisheye.monitoring.prediction_log.spool import Batch, Spool
from fisheye.monitoring.prediction_log.store import LogStore, SQLiteStore

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BATCH = 500
BUSY_BACKOFF_S = (0.005, 0.1)  # first and longest wait between tries of a write that met a lock
REPLAY_EVERY_S = 1.0  # how often spooled rows are offered to a store that was away
UNAVAILABLE_BACKOFF_S = 1.0  # the longest wait between tries while the store cannot be reached
SHARED_STORE_GRACE_S = 2.0  # how long feedback looks for a prediction of another replica


class PredictionLog(FeedbackWrites):
    """Asynchronous prediction log (SQLite or PostgreSQL) with retention and lost-row
    accounting."""

    def __init__(
        self,
        store: LogStore | Path,
        *,
        retention_days: float = 30.0,
        max_rows: int = 1_000_000,
        max_queue: int = 10_000,
        on_lost: Callable[[int], None] | None = None,
        retention_every_s: float = 60.0,
        linger_s: float = 0.05,
        feedback_timeout_s: float = 10.0,
        give_up_on_stop_s: float = 5.0,
        unknown_grace_s: float | None = None,
        on_degraded: Callable[[bool], None] | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.store: LogStore = store if not isinstance(store, Path) else SQLiteStore(store)
        self.retention_days = retention_days
        self.max_rows = max_rows
        self.on_lost = on_lost
        self.on_degraded = on_degraded
        # Where batches go while a shared store cannot be reached (None: they wait in the
        # queue, and the writer waits for the store).
        self.spool = spool
        self._last_replay = 0.0
        self.retention_every_s = retention_every_s
        self.linger_s = linger_s
        self.feedback_timeout_s = feedback_timeout_s
        self.give_up_on_stop_s = give_up_on_stop_s
        # A store shared by replicas may not have another replica's newest rows yet (they
        # wait in its queue for up to a batch): feedback on an unknown id looks again
        # for this long before it is answered as unknown.
        if unknown_grace_s is None:
            unknown_grace_s = SHARED_STORE_GRACE_S if getattr(self.store, "shared", False) else 0.0
        self.unknown_grace_s = unknown_grace_s
        self.lost = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_error_log = 0.0
        self._last_wait_log = 0.0
        self.degraded: str | None = None  # why rows wait instead of being written, or None
        self._last_retention = 0.0

    # -- writer side -------------------------------------------------------------------
    @property
    def path(self) -> Path | None:
        """The SQLite file, when the log is one."""
        return self.store.path if isinstance(self.store, SQLiteStore) else None

    @property
    def running(self) -> bool:
        """Whether the writer thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Create the database (if possible) and start the writer thread."""
        if self.path is not None:
            with contextlib.suppress(OSError):  # reported when the writer opens it
                self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="fisheye-predlog", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer thread.

        A write that waits for another process's lock is tried for `give_up_on_stop_s`
        more, then its rows are counted as lost.
        """
        if self._thread is None:
            return
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout + self.give_up_on_stop_s)
        self._thread = None

    def record(self, row: PredictionRow) -> None:
        """Queue a prediction for writing; never blocks (a full queue drops and counts it)."""
        self._put(("prediction", row, None))

    def reference_photos(self, refs: list[tuple[str, str]]) -> None:
        """Queue (prediction id, photo sha256) pairs: each logged prediction's photo is now in
        the photo archive (written after the rows queued before them)."""
        self._put(("photos", refs, None))

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
        if not self.running:
            return False
        barrier = threading.Event()  # set once the rows queued before it are written
        try:
            self._queue.put(barrier, timeout=timeout)
        except queue.Full:
            return False
        return barrier.wait(timeout)

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

    def _next_batch(self) -> list[Any]:
        """The next item, and what follows it within `linger_s` (a busy server then commits
        many rows per transaction instead of one per request)."""
        try:  # with rows in the spool, wake up to replay them even when nothing arrives
            items = [self._queue.get(timeout=REPLAY_EVERY_S if self._spooling() else None)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.linger_s
        while len(items) < MAX_BATCH and not _ends_batch(items[-1]):
            remaining = deadline - time.monotonic()
            try:
                items.append(
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return items

    def _run(self) -> None:
        opened = self._open()
        stop = False
        while not stop:
            rows, drifts, shadows, feedback, barriers, photos = [], [], [], [], [], []
            for item in self._next_batch():
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    barriers.append(item)
                elif isinstance(item, FeedbackRequest):
                    feedback.append(item)
                elif item[0] == "prediction":
                    rows.append(item[1])
                elif item[0] == "photos":
                    photos.extend(item[1])
                elif item[0] == "shadow":
                    shadows.append(item[1])
                else:
                    drifts.append(item[1])
            if not opened and (rows or drifts or shadows or feedback or photos):
                opened = self._open()
            # Stopping while the store does not answer: the spool waits for the next start
            # (another try could outlast the stop's grace).
            if opened and self._spooling() and not (stop and self.degraded):
                self._replay(force=stop)
            self._write(opened, rows, drifts, shadows)
            self._reference_photos(opened, photos)
            # After the rows queued before them: feedback finds a prediction answered just now.
            for request in feedback:
                self._answer(self._refusal(opened), request)
            if opened and not self._spooling():  # not while the store does not answer
                self._maybe_retain()
            for b in barriers:
                b.set()
        self.store.close()

    def _reference_photos(self, opened: bool, refs: list[tuple[str, str]]) -> None:
        if not refs:
            return
        # While rows are spooled, their rows are not in the store to take a reference.
        refused = self._refusal(opened)
        if refused is not None:
            self._count_lost(len(refs), str(refused))
            return
        try:
            self._until_unlocked(lambda: self.store.reference_photos(refs))
        except StoreError as exc:
            self._count_lost(len(refs), str(exc))

    def _write(self, opened: bool, rows: list, drifts: list, shadows: list) -> None:
        if not rows and not drifts and not shadows:
            return
        n = len(rows) + len(drifts) + len(shadows)
        if not opened:
            self._count_lost(n, "the database cannot be opened")
            return
        predictions = rows
        if self._spooling():  # after the rows already there, in order
            self._to_spool((predictions, drifts, shadows), n)
            return
        try:
            self._until_unlocked(lambda: self.store.write(predictions, drifts, shadows))
        except StoreUnavailableError as exc:
            if self.spool is None:
                self._count_lost(n, str(exc))
            else:
                self._waiting(str(exc))
                self._to_spool((predictions, drifts, shadows), n)
        except StoreError as exc:
            self._count_lost(n, str(exc))

    def _refusal(self, opened: bool) -> StoreError | None:
        """Why feedback cannot be written now, or None. While rows are spooled, the store
        did not take the last replay (the next is at most REPLAY_EVERY_S away): feedback
        fails at once rather than wait for a store that does not answer."""
        if not opened:
            return StoreError("the database cannot be opened")
        if self._spooling():
            return StoreUnavailableError(
                "the prediction store cannot take writes now "
                f"({self.degraded or 'rows wait in the spool'}); retry shortly"
            )
        return None

    def _spooling(self) -> bool:
        return self.spool is not None and self.spool.pending

    def _to_spool(self, batch: Batch, n: int) -> None:
        assert self.spool is not None
        if not self.spool.append(batch):
            self._count_lost(n, f"the spool {self.spool.path} is full or cannot be written")

    def _replay(self, force: bool = False) -> None:
        """Write the spooled batches, oldest first, at most once per REPLAY_EVERY_S (and
        once more when the log stops); what the store does not take yet stays spooled."""
        assert self.spool is not None
        now = time.monotonic()
        if not force and now - self._last_replay < REPLAY_EVERY_S:
            return
        self._last_replay = now
        batches = self.spool.batches()
        done = 0
        try:
            for batch in batches:
                self.store.write(*batch)
                done += 1
        except StoreBusyError as exc:  # still away (or a lock): the rest waits
            if isinstance(exc, StoreUnavailableError):
                self._waiting(str(exc))
            if done:
                self.spool.keep_only(batches[done:])
            return
        except StoreError as exc:  # a batch the store refuses: drop it, keep the rest
            self._count_lost(sum(len(part) for part in batches[done]), str(exc))
            self.spool.keep_only(batches[done + 1 :])
            return
        self.spool.keep_only([])
        log.warning("prediction log: the store is back; %d spooled batch(es) written", done)
        self._set_degraded(None)

    def _until_unlocked(self, write: Callable[[], T]) -> T:
        """`write()`, tried again while another process holds the lock (StoreBusyError);
        once the log is stopping, for at most `give_up_on_stop_s` more. A store that cannot
        be reached is waited for the same way, unless the log has a spool (then it raises
        StoreUnavailableError at once: the rows go to the spool, feedback fails fast)."""
        wait, longest = BUSY_BACKOFF_S
        give_up: float | None = None
        while True:
            try:
                result = write()
            except StoreBusyError as exc:
                now = time.monotonic()
                if isinstance(exc, StoreUnavailableError):
                    if self.spool is not None:
                        raise
                    longest = UNAVAILABLE_BACKOFF_S
                    self._waiting(str(exc))
                if self._stopping.is_set():
                    give_up = now + self.give_up_on_stop_s if give_up is None else give_up
                    if now >= give_up:
                        raise
                time.sleep(wait)
                wait = min(longest, wait * 2)
            else:
                # With rows still spooled, the replay says when the store is back.
                if self.degraded is not None and not self._spooling():
                    log.warning("prediction log: the store is back; queued rows are written")
                    self._set_degraded(None)
                return result

    def _set_degraded(self, why: str | None) -> None:
        was, self.degraded = self.degraded, why
        if self.on_degraded is not None and (was is None) != (why is None):
            self.on_degraded(why is not None)

    def _waiting(self, why: str) -> None:
        """Note (and log, at most every 10 s) that rows wait for the store."""
        self._set_degraded(why)
        now = time.monotonic()
        if now - self._last_wait_log > 10:
            self._last_wait_log = now
            log.warning(
                "prediction log: the store cannot be reached (%s); rows wait (in %s) and "
                "predictions are unaffected",
                why,
                "the queue" if self.spool is None else self.spool.path,
            )

    def _maybe_retain(self) -> None:
        now = time.monotonic()
        if now - self._last_retention < self.retention_every_s:
            return
        self._last_retention = now
        with contextlib.suppress(StoreError):
            self._until_unlocked(lambda: self.store.retain(self.retention_days, self.max_rows))

    # -- reader side (any thread) ---------------------------------------------------------
    def summary(self, window_s: float, replica: str | None = None) -> dict[str, Any]:
        """Counts per class, confidence, OOD rate, feedback accuracy, latency, drift: of every
        replica writing to the store (PostgreSQL), or of `replica` only."""
        if self.degraded is None:  # include the rows still queued (else they are spooled)
            self.flush()
        return self.store.summary(time.time() - window_s, replica)


def _ends_batch(item: Any) -> bool:
    """Whether the writer should stop gathering after `item`: the log stops, or a caller
    waits for it (a flush or a feedback)."""
    return item is None or isinstance(item, threading.Event | FeedbackRequest)
