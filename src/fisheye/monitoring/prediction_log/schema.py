"""The SQLite schema of the prediction log, its migrations, and connections to it (WAL)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fisheye.monitoring.prediction_log.rollups import add_to_rollups

SCHEMA_VERSION = 6
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
    image_path TEXT,
    photo_sha256 TEXT  -- the photo's key in the photo archive, when it is kept
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
-- kept for audit in feedback_corrections (the latest few per prediction).
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
CREATE INDEX IF NOT EXISTS feedback_corrections_id ON feedback_corrections (id, ts);
CREATE INDEX IF NOT EXISTS feedback_corrections_ts ON feedback_corrections (ts);
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
BUSY_TIMEOUT_MS = 200  # the writer waits at most this long for a lock


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
        old_predictions = [r[1] for r in conn.execute("PRAGMA table_info(predictions)")]
        if old_predictions and "photo_sha256" not in old_predictions:  # before the archive
            conn.execute("ALTER TABLE predictions ADD COLUMN photo_sha256 TEXT")
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
            add_to_rollups(
                conn,
                conn.execute(
                    "SELECT ts, label, confidence, in_distribution, latency_ms FROM predictions"
                ),
            )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
