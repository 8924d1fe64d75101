"""The prediction log: SQLite (WAL) written from a background thread, never on the request path.

`record` only puts a row on a bounded queue. One writer thread inserts rows in batches and
applies retention (by age and by row count). If the disk is full, the database is locked
or read-only, or the queue overflows, the rows are dropped and counted (`on_lost`); the
prediction itself is never delayed or failed.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    model_version TEXT,
    backend TEXT,
    label TEXT NOT NULL,
    confidence REAL,
    ood_score REAL,
    in_distribution INTEGER,
    latency_ms REAL,
    sha256 TEXT,
    image_path TEXT
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    label TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS drift (
    ts REAL NOT NULL,
    n INTEGER,
    score REAL,
    p_value REAL,
    p_value_is_bound INTEGER,
    drift INTEGER,
    ood_fraction REAL
);
CREATE INDEX IF NOT EXISTS drift_ts ON drift (ts);
"""
BUSY_TIMEOUT_MS = 200  # the writer waits at most this long for a lock, then drops the batch


@dataclass
class PredictionRow:
    """One logged prediction."""

    id: str
    ts: float
    model_version: str
    backend: str
    label: str
    confidence: float
    ood_score: float | None
    in_distribution: bool | None
    latency_ms: float
    sha256: str
    image_path: str | None = None


class FeedbackError(ValueError):
    """Feedback names an unknown prediction id."""


def connect(path: Path, *, readonly: bool = False, timeout_ms: int = BUSY_TIMEOUT_MS):
    """A SQLite connection to the log (WAL mode; read-only connections never write)."""
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=timeout_ms / 1000, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(str(path), timeout=timeout_ms / 1000, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
    conn.execute(f"PRAGMA busy_timeout={int(timeout_ms)}")
    return conn


class _Barrier:
    def __init__(self) -> None:
        self.event = threading.Event()


class PredictionLog:
    """Asynchronous SQLite prediction log with retention and lost-row accounting."""

    def __init__(
        self,
        path: Path,
        *,
        retention_days: float = 30.0,
        max_rows: int = 1_000_000,
        max_queue: int = 10_000,
        image_dir: Path | None = None,
        on_lost: Callable[[int], None] | None = None,
        retention_every_s: float = 60.0,
        linger_s: float = 0.05,
    ) -> None:
        self.path = Path(path)
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

    # -- writer side -------------------------------------------------------------------
    def start(self) -> None:
        """Create the database (if possible) and start the writer thread."""
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
        self._put(("prediction", row, image))

    def record_drift(self, result: dict[str, Any]) -> None:
        """Queue a drift-test result for the report."""
        self._put(("drift", result, None))

    def _put(self, item: Any) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._count_lost(1, "the prediction log queue is full")

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

    def _open(self) -> sqlite3.Connection | None:
        try:
            return connect(self.path)
        except (sqlite3.Error, OSError) as exc:
            self._count_lost(0, f"cannot open {self.path}: {exc}")
            return None

    def _run(self) -> None:
        conn = self._open()
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
            rows, drifts, barriers = [], [], []
            for item in items:
                if item is None:
                    stop = True
                elif isinstance(item, _Barrier):
                    barriers.append(item)
                elif item[0] == "prediction":
                    rows.append((item[1], item[2]))
                else:
                    drifts.append(item[1])
            if conn is None and (rows or drifts):
                conn = self._open()
            self._write(conn, rows, drifts)
            self._maybe_retain(conn)
            for b in barriers:
                b.event.set()
        if conn is not None:
            conn.close()

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

    def _write(self, conn: sqlite3.Connection | None, rows: list, drifts: list) -> None:
        if not rows and not drifts:
            return
        if conn is None:
            self._count_lost(len(rows) + len(drifts), "the database cannot be opened")
            return
        values = []
        for row, image in rows:
            if image is not None and self.image_dir is not None:
                row.image_path = self._save_image(row, image)
            values.append(astuple(row))
        try:
            with conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO predictions VALUES (?,?,?,?,?,?,?,?,?,?,?)", values
                )
                conn.executemany(
                    "INSERT INTO drift VALUES (?,?,?,?,?,?,?)",
                    [
                        (
                            d["computed_at"],
                            d["n"],
                            d["score"],
                            d["p_value"],
                            int(d.get("p_value_is_bound", False)),
                            int(d["drift"]),
                            d.get("ood_fraction"),
                        )
                        for d in drifts
                    ],
                )
        except (sqlite3.Error, OSError) as exc:
            self._count_lost(len(rows) + len(drifts), f"{type(exc).__name__}: {exc}")

    def _maybe_retain(self, conn: sqlite3.Connection | None) -> None:
        now = time.monotonic()
        if conn is None or now - self._last_retention < self.retention_every_s:
            return
        self._last_retention = now
        with contextlib.suppress(sqlite3.Error):
            apply_retention(conn, self.retention_days, self.max_rows)

    # -- reader side (any thread; each call opens its own connection) --------------------
    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        conn = connect(self.path, timeout_ms=2000)
        try:
            yield conn
        finally:
            conn.close()

    def add_feedback(self, prediction_id: str, label: str) -> dict[str, Any]:
        """Record the true label of a logged prediction; returns whether it was right."""
        self.flush()
        with self._reader() as conn:
            found = conn.execute(
                "SELECT label FROM predictions WHERE id = ?", (prediction_id,)
            ).fetchone()
            if found is None:
                raise FeedbackError(f"no logged prediction has id {prediction_id!r}")
            with conn:
                conn.execute(
                    "INSERT OR REPLACE INTO feedback VALUES (?,?,?)",
                    (prediction_id, time.time(), label),
                )
            acc = conn.execute(
                "SELECT AVG(p.label = f.label), COUNT(*) FROM feedback f "
                "JOIN predictions p ON p.id = f.id"
            ).fetchone()
        return {
            "id": prediction_id,
            "label": label,
            "predicted": found[0],
            "correct": found[0] == label,
            "accuracy": float(acc[0]) if acc[0] is not None else None,
            "feedback_count": int(acc[1]),
        }

    def summary(self, window_s: float) -> dict[str, Any]:
        """Counts per class, confidence, OOD rate, feedback accuracy, latency, drift."""
        self.flush()
        since = time.time() - window_s
        with self._reader() as conn:
            return summarize(conn, since)


def apply_retention(conn: sqlite3.Connection, retention_days: float, max_rows: int) -> int:
    """Delete rows older than the retention age and beyond the row limit; rows deleted."""
    cutoff = time.time() - retention_days * 86400
    with conn:
        n = conn.execute("DELETE FROM predictions WHERE ts < ?", (cutoff,)).rowcount
        n += conn.execute(
            "DELETE FROM predictions WHERE rowid IN (SELECT rowid FROM predictions "
            "ORDER BY ts DESC LIMIT -1 OFFSET ?)",
            (max_rows,),
        ).rowcount
        conn.execute("DELETE FROM drift WHERE ts < ?", (cutoff,))
        conn.execute("DELETE FROM feedback WHERE id NOT IN (SELECT id FROM predictions)")
    return n


def summarize(conn: sqlite3.Connection, since: float) -> dict[str, Any]:
    """The monitoring summary of predictions made after `since` (unix seconds)."""
    counts = dict(
        conn.execute(
            "SELECT label, COUNT(*) FROM predictions WHERE ts >= ? GROUP BY label ORDER BY label",
            (since,),
        ).fetchall()
    )
    n, mean_conf, ood_rate = conn.execute(
        "SELECT COUNT(*), AVG(confidence), AVG(CASE WHEN in_distribution IS NULL THEN NULL "
        "ELSE 1 - in_distribution END) FROM predictions WHERE ts >= ?",
        (since,),
    ).fetchone()
    fb_n, fb_acc = conn.execute(
        "SELECT COUNT(*), AVG(p.label = f.label) FROM feedback f JOIN predictions p "
        "ON p.id = f.id WHERE p.ts >= ?",
        (since,),
    ).fetchone()
    lat = np.array(
        [
            r[0]
            for r in conn.execute(
                "SELECT latency_ms FROM predictions WHERE ts >= ? AND latency_ms IS NOT NULL",
                (since,),
            )
        ],
        dtype=np.float64,
    )
    drift_rows = conn.execute(
        "SELECT ts, n, score, p_value, p_value_is_bound, drift, ood_fraction FROM drift "
        "WHERE ts >= ? ORDER BY ts",
        (since,),
    ).fetchall()
    latest = drift_rows[-1] if drift_rows else None
    return {
        "predictions": int(n),
        "counts": {k: int(v) for k, v in counts.items()},
        "mean_confidence": None if mean_conf is None else float(mean_conf),
        "ood_rate": None if ood_rate is None else float(ood_rate),
        "feedback": {"count": int(fb_n), "accuracy": None if fb_acc is None else float(fb_acc)},
        "latency_ms": {
            f"p{q}": (float(np.percentile(lat, q)) if lat.size else None) for q in (50, 95, 99)
        },
        "drift": {
            "tests": len(drift_rows),
            "drift_detected": sum(int(r[5]) for r in drift_rows),
            "min_p_value": min((r[3] for r in drift_rows), default=None),
            "latest": None
            if latest is None
            else {
                "time": latest[0],
                "n": latest[1],
                "score": latest[2],
                "p_value": latest[3],
                "p_value_is_bound": bool(latest[4]),
                "drift": bool(latest[5]),
                "ood_fraction": latest[6],
            },
        },
    }
