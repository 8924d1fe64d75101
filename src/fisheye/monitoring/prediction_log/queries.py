"""Every SQL statement the prediction log runs on SQLite, one function per read or write.

The writer inserts predictions, drift results and shadow answers; feedback, the monitoring
summary, retention and `fisheye monitor report` read and update through the functions here.
They run in the caller's connection and transaction (`store.SQLiteStore` owns those).
"""

from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import astuple
from typing import Any

from fisheye.monitoring.prediction_log.rollups import add_to_rollups, percentiles
from fisheye.monitoring.prediction_log.rows import PredictionRow, ShadowRow

_LATEST_TS = float(2**40)  # unix seconds far in the future, and a safe SQLite integer / 60
MAX_CORRECTIONS_PER_PREDICTION = 20  # conflicting feedback kept for audit, the latest first


def insert_predictions(conn: sqlite3.Connection, rows: list[PredictionRow]) -> None:
    """Insert prediction rows and add them to the minute rollups (in the caller's transaction)."""
    conn.executemany(
        "INSERT OR IGNORE INTO predictions (id, ts, model_version, backend, label, confidence, "
        "ood_score, in_distribution, latency_ms, sha256, image_path, photo_sha256) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        [astuple(r) for r in rows],
    )
    add_to_rollups(
        conn, [(r.ts, r.label, r.confidence, r.in_distribution, r.latency_ms) for r in rows]
    )


def insert_drift(conn: sqlite3.Connection, results: list[dict[str, Any]]) -> None:
    """Insert drift-test results (of the live model or of a challenger)."""
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
            for d in results
        ],
    )


def insert_shadow(conn: sqlite3.Connection, rows: list[ShadowRow]) -> None:
    """Insert a shadow challenger's answers."""
    conn.executemany("INSERT INTO shadow VALUES (?,?,?,?,?,?,?,?,?,?)", [astuple(s) for s in rows])


def reference_photos(conn: sqlite3.Connection, refs: list[tuple[str, str]]) -> None:
    """Name each (prediction id, photo sha256)'s kept photo in its prediction row."""
    conn.executemany(
        "UPDATE predictions SET photo_sha256 = ? WHERE id = ?", [(sha, pid) for pid, sha in refs]
    )


def recent_feedback_ids(
    conn: sqlite3.Connection, predicted_since: float, received_since: float
) -> list[str]:
    """Ids of the predictions made after `predicted_since` that got feedback after
    `received_since` (unix seconds)."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT id FROM feedback WHERE prediction_ts >= ? AND ts >= ?",
            (clamp_since(predicted_since), clamp_since(received_since)),
        )
    ]


def find_prediction(conn: sqlite3.Connection, prediction_id: str) -> tuple[float, str] | None:
    """(time, label) of a logged prediction, or None."""
    return conn.execute(
        "SELECT ts, label FROM predictions WHERE id = ?", (prediction_id,)
    ).fetchone()


def insert_feedback(
    conn: sqlite3.Connection,
    prediction_id: str,
    label: str,
    predicted: str,
    prediction_ts: float,
) -> tuple[bool, str, int, int]:
    """Record feedback (the first per prediction counts; a different later one is kept as a
    correction): (added, the label on record, feedback count, correct count)."""
    now = time.time()
    with conn:
        added = conn.execute(
            "INSERT INTO feedback VALUES (?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING",
            (prediction_id, now, label, predicted, prediction_ts, predicted == label),
        ).rowcount
        recorded = conn.execute(
            "SELECT label FROM feedback WHERE id = ?", (prediction_id,)
        ).fetchone()[0]
        if not added and recorded != label:
            conn.execute(
                "INSERT INTO feedback_corrections VALUES (?,?,?,?)",
                (prediction_id, now, label, recorded),
            )
            # Conflicting feedback sent again and again keeps only the latest few.
            conn.execute(
                "DELETE FROM feedback_corrections WHERE rowid IN (SELECT rowid FROM "
                "feedback_corrections WHERE id = ? ORDER BY ts DESC, rowid DESC "
                "LIMIT -1 OFFSET ?)",
                (prediction_id, MAX_CORRECTIONS_PER_PREDICTION),
            )
    n, correct = conn.execute("SELECT n, correct FROM feedback_totals").fetchone()
    return bool(added), recorded, int(n), int(correct)


# Every table that grows with traffic or time, and the column that dates its rows.
_RETAINED = (
    ("predictions", "ts"),
    ("feedback", "prediction_ts"),
    ("feedback_corrections", "ts"),
    ("shadow", "ts"),
    ("drift", "ts"),
)


def apply_retention(conn: sqlite3.Connection, retention_days: float, max_rows: int) -> int:
    """Delete rows older than the retention age, and beyond the row limit in each table that
    grows (predictions, feedback, corrections, shadow answers, drift tests); returns the
    number of prediction rows deleted."""
    cutoff = clamp_since(time.time() - retention_days * 86400)
    deleted: dict[str, int] = {}
    with conn:
        conn.execute("DELETE FROM minute_counts WHERE minute < ?", (int(cutoff // 60),))
        conn.execute("DELETE FROM minute_latency WHERE minute < ?", (int(cutoff // 60),))
        for table, column in _RETAINED:
            n = conn.execute(f"DELETE FROM {table} WHERE {column} < ?", (cutoff,)).rowcount
            n += conn.execute(
                f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "
                f"ORDER BY {column} DESC LIMIT -1 OFFSET ?)",
                (max(int(max_rows), 0),),
            ).rowcount
            deleted[table] = n
        # Corrections of feedback that is gone are audit of nothing.
        conn.execute(
            "DELETE FROM feedback_corrections WHERE NOT EXISTS "
            "(SELECT 1 FROM feedback f WHERE f.id = feedback_corrections.id)"
        )
    return deleted["predictions"]


def clamp_since(since: float) -> float:
    """`since` within what SQLite's integers and the log's timestamps can hold."""
    if math.isnan(since):
        return 0.0
    return min(max(since, 0.0), _LATEST_TS)


def summarize(conn: sqlite3.Connection, since: float) -> dict[str, Any]:
    """The monitoring summary of predictions made after `since` (unix seconds).

    Read from the per-minute rollups (the window starts at the minute `since` falls in),
    so it costs the same whatever the number of predictions. A `since` before 1970 (or not
    finite) means the whole log.
    """
    since = clamp_since(since)
    minute = int(since // 60)
    rows = conn.execute(
        "SELECT label, SUM(n), SUM(confidence_sum), SUM(verdicts), SUM(ood) FROM minute_counts "
        "WHERE minute >= ? GROUP BY label ORDER BY label",
        (minute,),
    ).fetchall()
    feedback = conn.execute(
        "SELECT COUNT(*), SUM(correct) FROM feedback WHERE prediction_ts >= ?", (since,)
    ).fetchone()
    latency = conn.execute(
        "SELECT bucket, SUM(n) FROM minute_latency WHERE minute >= ? GROUP BY bucket",
        (minute,),
    ).fetchall()
    drift_rows = conn.execute(
        "SELECT ts, n, score, p_value, p_value_is_bound, drift, ood_fraction FROM drift "
        "WHERE ts >= ? AND role = 'live' ORDER BY ts",
        (since,),
    ).fetchall()
    challenger_rows = conn.execute(
        "SELECT p_value, drift, model_version FROM drift "
        "WHERE ts >= ? AND role = 'challenger' ORDER BY ts",
        (since,),
    ).fetchall()
    return build_summary(rows, feedback, latency, drift_rows, challenger_rows)


def build_summary(
    rows: list[Any],
    feedback: tuple[Any, Any],
    latency_rows: list[Any],
    drift_rows: list[Any],
    challenger_rows: list[Any],
) -> dict[str, Any]:
    """The summary from what a store read: per-label rollups (label, n, confidence sum,
    verdicts, ood), feedback (count, correct), latency (bucket, n), live drift tests (ts, n,
    score, p_value, p_value_is_bound, drift, ood_fraction) and challenger tests (p_value,
    drift, model_version). Every store builds it here, so their figures agree."""
    counts = {label: int(n) for label, n, *_ in rows}
    n = sum(counts.values())
    conf_sum = sum(float(r[2]) for r in rows)
    verdicts, ood = sum(int(r[3]) for r in rows), sum(int(r[4]) for r in rows)
    fb_n, fb_correct = int(feedback[0] or 0), int(feedback[1] or 0)
    latency = {int(bucket): int(count) for bucket, count in latency_rows}
    mean_conf = conf_sum / n if n else None
    ood_rate = ood / verdicts if verdicts else None
    fb_acc = fb_correct / fb_n if fb_n else None
    lat = percentiles(latency, (50, 95, 99))
    latest = drift_rows[-1] if drift_rows else None
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


def report_rows(conn: sqlite3.Connection, since: float) -> dict[str, list[tuple]]:
    """What `fisheye monitor report` plots: predictions, live drift tests and feedback."""
    since = clamp_since(since)
    return {
        "predictions": conn.execute(
            "SELECT ts, label, confidence, in_distribution FROM predictions WHERE ts >= ? "
            "ORDER BY ts",
            (since,),
        ).fetchall(),
        "drift": conn.execute(
            "SELECT ts, p_value FROM drift WHERE ts >= ? AND role = 'live' ORDER BY ts", (since,)
        ).fetchall(),
        "feedback": conn.execute(
            "SELECT ts, correct FROM feedback WHERE prediction_ts >= ? ORDER BY ts", (since,)
        ).fetchall(),
    }
