"""The prediction log: SQLite (WAL) written from a background thread, never on the request path.

`record` only puts a row on a bounded queue. One writer thread inserts rows in batches and
applies retention (by age and by row count). If the disk is full, the database is locked
or read-only, or the queue overflows, the rows are dropped and counted (`on_lost`); the
prediction itself is never delayed or failed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
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
-- Per-minute rollups, written with the rows: a summary reads minutes, not rows.
CREATE TABLE IF NOT EXISTS minute_counts (
    minute INTEGER NOT NULL,
    label TEXT NOT NULL,
    n INTEGER NOT NULL,
    confidence_sum REAL NOT NULL,
    verdicts INTEGER NOT NULL,
    ood INTEGER NOT NULL,
    PRIMARY KEY (minute, label)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS minute_latency (
    minute INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (minute, bucket)
) WITHOUT ROWID;
-- The first feedback on a prediction is the one that counts; later ones are corrections,
-- kept for audit in feedback_corrections.
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    label TEXT NOT NULL,
    predicted TEXT NOT NULL,
    prediction_ts REAL NOT NULL,
    correct INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_prediction_ts ON feedback (prediction_ts, correct);
CREATE TABLE IF NOT EXISTS feedback_corrections (
    id TEXT NOT NULL,
    ts REAL NOT NULL,
    label TEXT NOT NULL,
    recorded TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback_totals (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    n INTEGER NOT NULL,
    correct INTEGER NOT NULL
);
INSERT OR IGNORE INTO feedback_totals VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS feedback_counted AFTER INSERT ON feedback BEGIN
    UPDATE feedback_totals SET n = n + 1, correct = correct + NEW.correct;
END;
CREATE TRIGGER IF NOT EXISTS feedback_uncounted AFTER DELETE ON feedback BEGIN
    UPDATE feedback_totals SET n = n - 1, correct = correct - OLD.correct;
END;
CREATE TABLE IF NOT EXISTS drift (
    ts REAL NOT NULL,
    n INTEGER,
    score REAL,
    p_value REAL,
    p_value_is_bound INTEGER,
    drift INTEGER,
    ood_fraction REAL,
    role TEXT NOT NULL DEFAULT 'live',  -- live, or challenger (shadow or canary)
    model_version TEXT
);
CREATE INDEX IF NOT EXISTS drift_ts ON drift (ts);
-- What a shadow challenger answered for a logged prediction (docs/serving.md).
CREATE TABLE IF NOT EXISTS shadow (
    id TEXT NOT NULL,
    ts REAL NOT NULL,
    model_version TEXT,
    label TEXT NOT NULL,
    confidence REAL,
    ood_score REAL,
    in_distribution INTEGER,
    latency_ms REAL,
    live_label TEXT NOT NULL,
    agree INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS shadow_ts ON shadow (ts);
"""
# Latency histogram of the rollups: bucket k holds latencies up to LATENCY_BASE_MS * 1.05**k,
# so a percentile read from it is within 5% (bucket 0 holds everything up to the base).
LATENCY_BASE_MS = 0.1
LATENCY_GROWTH = 1.05
LATENCY_BUCKETS = 400
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


@dataclass
class ShadowRow:
    """A shadow challenger's answer for the logged prediction `id` (the live model's)."""

    id: str
    ts: float
    model_version: str
    label: str
    confidence: float
    ood_score: float | None
    in_distribution: bool | None
    latency_ms: float
    live_label: str
    agree: bool


class FeedbackError(ValueError):
    """Feedback names an unknown prediction id."""


class FeedbackConflictError(ValueError):
    """The prediction already has feedback; the new label was kept as a correction."""

    def __init__(self, message: str, recorded: dict[str, Any]) -> None:
        super().__init__(message)
        self.recorded = recorded


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
        conn.execute(f"PRAGMA busy_timeout={int(timeout_ms)}")
        _create_or_migrate(conn)
    conn.execute(f"PRAGMA busy_timeout={int(timeout_ms)}")
    return conn


def _create_or_migrate(conn: sqlite3.Connection) -> None:
    """Create the tables, or bring a log written by an earlier FishEye up to date."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    with conn:
        old_feedback = [r[1] for r in conn.execute("PRAGMA table_info(feedback)")]
        if old_feedback and "correct" not in old_feedback:
            conn.execute("ALTER TABLE feedback RENAME TO feedback_v1")
        old_drift = [r[1] for r in conn.execute("PRAGMA table_info(drift)")]
        if old_drift and "role" not in old_drift:  # before challengers: every test was live
            conn.execute("ALTER TABLE drift ADD COLUMN role TEXT NOT NULL DEFAULT 'live'")
            conn.execute("ALTER TABLE drift ADD COLUMN model_version TEXT")
        conn.executescript(SCHEMA)
        if old_feedback and "correct" not in old_feedback:
            conn.execute(
                "INSERT OR IGNORE INTO feedback SELECT f.id, f.ts, f.label, p.label, p.ts, "
                "p.label = f.label FROM feedback_v1 f JOIN predictions p ON p.id = f.id"
            )
            conn.execute("DROP TABLE feedback_v1")
        if conn.execute("SELECT COUNT(*) FROM minute_counts").fetchone()[0] == 0:
            _add_to_rollups(
                conn,
                conn.execute(
                    "SELECT ts, label, confidence, in_distribution, latency_ms FROM predictions"
                ),
            )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def insert_predictions(conn: sqlite3.Connection, rows: list[PredictionRow]) -> None:
    """Insert prediction rows and add them to the minute rollups (in the caller's transaction)."""
    conn.executemany(
        "INSERT OR IGNORE INTO predictions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        [astuple(r) for r in rows],
    )
    _add_to_rollups(
        conn, [(r.ts, r.label, r.confidence, r.in_distribution, r.latency_ms) for r in rows]
    )


def latency_bucket(ms: float) -> int:
    """The rollup histogram bucket of a latency."""
    if ms <= LATENCY_BASE_MS:
        return 0
    k = math.ceil(math.log(ms / LATENCY_BASE_MS) / math.log(LATENCY_GROWTH) - 1e-9)
    return min(LATENCY_BUCKETS - 1, k)


def _add_to_rollups(conn: sqlite3.Connection, rows) -> None:
    """Add (ts, label, confidence, in_distribution, latency_ms) rows to the minute rollups."""
    counts: dict[tuple[int, str], list[float]] = {}
    latency: dict[tuple[int, int], int] = {}
    for ts, label, confidence, in_distribution, latency_ms in rows:
        minute = int(ts // 60)
        c = counts.setdefault((minute, label), [0, 0.0, 0, 0])
        c[0] += 1
        c[1] += confidence or 0.0
        if in_distribution is not None:
            c[2] += 1
            c[3] += not in_distribution
        if latency_ms is not None:
            key = (minute, latency_bucket(latency_ms))
            latency[key] = latency.get(key, 0) + 1
    conn.executemany(
        "INSERT INTO minute_counts VALUES (?,?,?,?,?,?) ON CONFLICT (minute, label) DO UPDATE "
        "SET n = n + excluded.n, confidence_sum = confidence_sum + excluded.confidence_sum, "
        "verdicts = verdicts + excluded.verdicts, ood = ood + excluded.ood",
        [(m, lab, *c) for (m, lab), c in counts.items()],
    )
    conn.executemany(
        "INSERT INTO minute_latency VALUES (?,?,?) ON CONFLICT (minute, bucket) DO UPDATE "
        "SET n = n + excluded.n",
        [(m, b, n) for (m, b), n in latency.items()],
    )


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
        # Predictions queued but not yet written: feedback on them needs no flush.
        self._pending: dict[str, tuple[float, str]] = {}
        self._pending_lock = threading.Lock()

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
            if conn is None and (rows or drifts or shadows):
                conn = self._open()
            self._write(conn, rows, drifts, shadows)
            with self._pending_lock:
                for row, _ in rows:
                    self._pending.pop(row.id, None)
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

    def _write(
        self, conn: sqlite3.Connection | None, rows: list, drifts: list, shadows: list = ()
    ) -> None:
        if not rows and not drifts and not shadows:
            return
        if conn is None:
            self._count_lost(
                len(rows) + len(drifts) + len(shadows), "the database cannot be opened"
            )
            return
        for row, image in rows:
            if image is not None and self.image_dir is not None:
                row.image_path = self._save_image(row, image)
        try:
            with conn:
                insert_predictions(conn, [row for row, _ in rows])
                conn.executemany(
                    "INSERT INTO drift (ts, n, score, p_value, p_value_is_bound, drift, "
                    "ood_fraction, role, model_version) VALUES (?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            d["computed_at"],
                            d["n"],
                            d["score"],
                            d["p_value"],
                            int(d.get("p_value_is_bound", False)),
                            int(d["drift"]),
                            d.get("ood_fraction"),
                            d.get("role", "live"),
                            d.get("model_version"),
                        )
                        for d in drifts
                    ],
                )
                conn.executemany(
                    "INSERT INTO shadow VALUES (?,?,?,?,?,?,?,?,?,?)", [astuple(s) for s in shadows]
                )
        except (sqlite3.Error, OSError) as exc:
            self._count_lost(len(rows) + len(drifts) + len(shadows), f"{type(exc).__name__}: {exc}")

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
        """Record the true label of a logged prediction; returns whether it was right.

        The first feedback on a prediction counts. A later, different label raises
        FeedbackConflictError after keeping it in `feedback_corrections` (audit); the same
        label again is answered like the first.
        """
        with self._reader() as conn:
            found = conn.execute(
                "SELECT ts, label FROM predictions WHERE id = ?", (prediction_id,)
            ).fetchone()
            if found is None:
                with self._pending_lock:
                    found = self._pending.get(prediction_id)
            if found is None:
                raise FeedbackError(f"no logged prediction has id {prediction_id!r}")
            prediction_ts, predicted = found
            now = time.time()
            with conn:
                added = conn.execute(
                    "INSERT INTO feedback VALUES (?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING",
                    (prediction_id, now, label, predicted, prediction_ts, predicted == label),
                ).rowcount
                recorded = conn.execute(
                    "SELECT label, ts FROM feedback WHERE id = ?", (prediction_id,)
                ).fetchone()
                if not added and recorded[0] != label:
                    conn.execute(
                        "INSERT INTO feedback_corrections VALUES (?,?,?,?)",
                        (prediction_id, now, label, recorded[0]),
                    )
            n, correct = conn.execute("SELECT n, correct FROM feedback_totals").fetchone()
        result = {
            "id": prediction_id,
            "label": recorded[0],
            "predicted": predicted,
            "correct": predicted == recorded[0],
            "accuracy": correct / n if n else None,
            "feedback_count": int(n),
            "new": bool(added),
        }
        if not added and recorded[0] != label:
            raise FeedbackConflictError(
                f"prediction {prediction_id!r} already has feedback {recorded[0]!r}; "
                f"{label!r} was kept as a correction for review",
                result,
            )
        return result

    def summary(self, window_s: float) -> dict[str, Any]:
        """Counts per class, confidence, OOD rate, feedback accuracy, latency, drift."""
        self.flush()  # include the rows still queued
        since = time.time() - window_s
        with self._reader() as conn:
            return summarize(conn, since)


def apply_retention(conn: sqlite3.Connection, retention_days: float, max_rows: int) -> int:
    """Delete rows older than the retention age and beyond the row limit; rows deleted."""
    cutoff = time.time() - retention_days * 86400
    with conn:
        conn.execute("DELETE FROM minute_counts WHERE minute < ?", (int(cutoff // 60),))
        conn.execute("DELETE FROM minute_latency WHERE minute < ?", (int(cutoff // 60),))
        conn.execute("DELETE FROM feedback WHERE prediction_ts < ?", (cutoff,))
        n = conn.execute("DELETE FROM predictions WHERE ts < ?", (cutoff,)).rowcount
        n += conn.execute(
            "DELETE FROM predictions WHERE rowid IN (SELECT rowid FROM predictions "
            "ORDER BY ts DESC LIMIT -1 OFFSET ?)",
            (max_rows,),
        ).rowcount
        conn.execute("DELETE FROM drift WHERE ts < ?", (cutoff,))
    return n


def _percentiles(counts: dict[int, int], qs: tuple[int, ...]) -> dict[str, float | None]:
    """Percentiles of the rollups' latency histogram (each bucket's upper bound)."""
    total = sum(counts.values())
    out: dict[str, float | None] = {}
    for q in qs:
        if not total:
            out[f"p{q}"] = None
            continue
        rank, seen = q / 100 * total, 0
        for bucket in sorted(counts):
            seen += counts[bucket]
            if seen >= rank:
                out[f"p{q}"] = round(LATENCY_BASE_MS * LATENCY_GROWTH**bucket, 3)
                break
    return out


def summarize(conn: sqlite3.Connection, since: float) -> dict[str, Any]:
    """The monitoring summary of predictions made after `since` (unix seconds).

    Read from the per-minute rollups (the window starts at the minute `since` falls in),
    so it costs the same whatever the number of predictions.
    """
    minute = int(since // 60)
    rows = conn.execute(
        "SELECT label, SUM(n), SUM(confidence_sum), SUM(verdicts), SUM(ood) FROM minute_counts "
        "WHERE minute >= ? GROUP BY label ORDER BY label",
        (minute,),
    ).fetchall()
    counts = {label: int(n) for label, n, *_ in rows}
    n = sum(counts.values())
    conf_sum = sum(r[2] for r in rows)
    verdicts, ood = sum(r[3] for r in rows), sum(r[4] for r in rows)
    fb_n, fb_correct = conn.execute(
        "SELECT COUNT(*), SUM(correct) FROM feedback WHERE prediction_ts >= ?", (since,)
    ).fetchone()
    latency = dict(
        conn.execute(
            "SELECT bucket, SUM(n) FROM minute_latency WHERE minute >= ? GROUP BY bucket",
            (minute,),
        ).fetchall()
    )
    mean_conf = conf_sum / n if n else None
    ood_rate = ood / verdicts if verdicts else None
    fb_acc = fb_correct / fb_n if fb_n else None
    lat = _percentiles(latency, (50, 95, 99))
    drift_rows = conn.execute(
        "SELECT ts, n, score, p_value, p_value_is_bound, drift, ood_fraction FROM drift "
        "WHERE ts >= ? AND role = 'live' ORDER BY ts",
        (since,),
    ).fetchall()
    latest = drift_rows[-1] if drift_rows else None
    challenger_rows = conn.execute(
        "SELECT p_value, drift, model_version FROM drift "
        "WHERE ts >= ? AND role = 'challenger' ORDER BY ts",
        (since,),
    ).fetchall()
    return {
        "predictions": int(n),
        "counts": {k: int(v) for k, v in counts.items()},
        "mean_confidence": None if mean_conf is None else float(mean_conf),
        # With a calibrated bundle the mean confidence estimates the accuracy (no labels).
        "estimated_accuracy": None if mean_conf is None else float(mean_conf),
        "ood_rate": None if ood_rate is None else float(ood_rate),
        "feedback": {"count": int(fb_n), "accuracy": None if fb_acc is None else float(fb_acc)},
        "latency_ms": lat,
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
        "challenger_drift": {
            "tests": len(challenger_rows),
            "drift_detected": sum(int(r[1]) for r in challenger_rows),
            "min_p_value": min((r[0] for r in challenger_rows), default=None),
            "model_versions": sorted({r[2] for r in challenger_rows if r[2]}),
        },
    }
