"""Every SQL statement the prediction log runs on PostgreSQL, one function per read or write.

The same reads and writes as queries.py (SQLite), with each row tagged by the replica that
wrote it: readers see the whole fleet, or one replica when asked. They run in the caller's
connection; `postgres_store.PostgresStore` owns connections and transactions.
"""

from __future__ import annotations

import time
from typing import Any

from fisheye.monitoring.prediction_log.queries import (
    MAX_CORRECTIONS_PER_PREDICTION,
    build_summary,
    clamp_since,
)
from fisheye.monitoring.prediction_log.rollups import aggregate
from fisheye.monitoring.prediction_log.rows import PredictionRow, ShadowRow


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(value)


def insert_predictions(conn: Any, replica: str, rows: list[PredictionRow]) -> int:
    """Insert prediction rows (one statement) and add the new ones to this replica's minute
    rollups; a row whose id is already logged is skipped, and not counted twice."""
    if not rows:
        return 0
    columns = list(
        zip(
            *[
                (
                    r.id,
                    r.ts,
                    r.model_version,
                    r.backend,
                    r.label,
                    r.confidence,
                    r.ood_score,
                    _flag(r.in_distribution),
                    r.latency_ms,
                    r.sha256,
                    r.image_path,
                    r.photo_sha256,
                )
                for r in rows
            ],
            strict=True,
        )
    )
    inserted = conn.execute(
        "INSERT INTO predictions (id, ts, replica, model_version, backend, label, confidence, "
        "ood_score, in_distribution, latency_ms, sha256, image_path, photo_sha256) "
        "SELECT id, ts, %s, mv, be, label, conf, ood, ind, lat, sha, img, photo FROM unnest("
        "%s::text[], %s::float8[], %s::text[], %s::text[], %s::text[], %s::float8[], "
        "%s::float8[], %s::int[], %s::float8[], %s::text[], %s::text[], %s::text[]) "
        "AS r(id, ts, mv, be, label, conf, ood, ind, lat, sha, img, photo) "
        "ON CONFLICT (id) DO NOTHING RETURNING ts, label, confidence, in_distribution, latency_ms",
        (replica, *[list(c) for c in columns]),
    ).fetchall()
    add_to_rollups(conn, replica, inserted)
    return len(inserted)


def add_to_rollups(conn: Any, replica: str, rows: list[Any]) -> None:
    """Add (ts, label, confidence, in_distribution, latency_ms) rows to this replica's rollups
    (keys in order, so concurrent writers of one replica id cannot deadlock)."""
    counts, latency = aggregate(rows)
    if counts:
        keys = sorted(counts)
        conn.execute(
            "INSERT INTO minute_counts AS t (minute, replica, label, n, confidence_sum, "
            "verdicts, ood) SELECT m, %s, l, n, c, v, o FROM unnest(%s::bigint[], %s::text[], "
            "%s::bigint[], %s::float8[], %s::bigint[], %s::bigint[]) AS r(m, l, n, c, v, o) "
            "ON CONFLICT (minute, replica, label) DO UPDATE SET n = t.n + EXCLUDED.n, "
            "confidence_sum = t.confidence_sum + EXCLUDED.confidence_sum, "
            "verdicts = t.verdicts + EXCLUDED.verdicts, ood = t.ood + EXCLUDED.ood",
            (
                replica,
                [m for m, _ in keys],
                [label for _, label in keys],
                *[[counts[k][i] for k in keys] for i in range(4)],
            ),
        )
    if latency:
        keys = sorted(latency)
        conn.execute(
            "INSERT INTO minute_latency AS t (minute, replica, bucket, n) "
            "SELECT m, %s, b, n FROM unnest(%s::bigint[], %s::int[], %s::bigint[]) AS r(m, b, n) "
            "ON CONFLICT (minute, replica, bucket) DO UPDATE SET n = t.n + EXCLUDED.n",
            (replica, [m for m, _ in keys], [b for _, b in keys], [latency[k] for k in keys]),
        )


def insert_drift(conn: Any, replica: str, results: list[dict[str, Any]]) -> None:
    """Insert drift-test results (of the live model or of a challenger); one this replica
    already logged (the same time, model, role and figures: a batch written again after its
    commit went unanswered) is skipped."""
    if not results:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO drift (ts, replica, n, score, p_value, p_value_is_bound, drift, "
            "ood_fraction, role, model_version) SELECT * FROM (VALUES (%s::float8, %s, "
            "%s::int, %s::float8, %s::float8, %s::int, %s::int, %s::float8, %s, %s)) "
            "AS r(ts, replica, n, score, p_value, bound, drift, ood, role, mv) "
            "WHERE NOT EXISTS (SELECT 1 FROM drift d WHERE d.ts = r.ts "
            "AND d.replica = r.replica AND d.role = r.role "
            "AND d.model_version IS NOT DISTINCT FROM r.mv AND d.n IS NOT DISTINCT FROM r.n "
            "AND d.score IS NOT DISTINCT FROM r.score "
            "AND d.p_value IS NOT DISTINCT FROM r.p_value)",
            [
                (
                    d["computed_at"],
                    replica,
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


def insert_shadow(conn: Any, replica: str, rows: list[ShadowRow]) -> None:
    """Insert a shadow challenger's answers; one already logged (the same prediction, time
    and challenger: a batch written again after its commit went unanswered) is skipped."""
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO shadow (id, ts, replica, model_version, label, confidence, ood_score, "
            "in_distribution, latency_ms, live_label, agree) SELECT * FROM (VALUES (%s, "
            "%s::float8, %s, %s, %s, %s::float8, %s::float8, %s::int, %s::float8, %s, "
            "%s::int)) AS r(id, ts, replica, mv, label, conf, ood, ind, lat, live, agree) "
            "WHERE NOT EXISTS (SELECT 1 FROM shadow s WHERE s.ts = r.ts AND s.id = r.id "
            "AND s.model_version IS NOT DISTINCT FROM r.mv)",
            [
                (
                    s.id,
                    s.ts,
                    replica,
                    s.model_version,
                    s.label,
                    s.confidence,
                    s.ood_score,
                    _flag(s.in_distribution),
                    s.latency_ms,
                    s.live_label,
                    int(s.agree),
                )
                for s in rows
            ],
        )


def reference_photos(conn: Any, refs: list[tuple[str, str]]) -> None:
    """Name each (prediction id, photo sha256)'s kept photo in its prediction row."""
    if not refs:
        return
    conn.execute(
        "UPDATE predictions AS p SET photo_sha256 = r.sha FROM unnest(%s::text[], %s::text[]) "
        "AS r(id, sha) WHERE p.id = r.id",
        ([pid for pid, _ in refs], [sha for _, sha in refs]),
    )


def recent_feedback_ids(
    conn: Any, replica: str, predicted_since: float, received_since: float
) -> list[str]:
    """Ids of `replica`'s predictions made after `predicted_since` that got feedback (through
    any replica) after `received_since` (unix seconds)."""
    rows = conn.execute(
        "SELECT id FROM feedback WHERE replica = %s AND prediction_ts >= %s AND ts >= %s",
        (replica, clamp_since(predicted_since), clamp_since(received_since)),
    ).fetchall()
    return [r[0] for r in rows]


def find_prediction(conn: Any, prediction_id: str) -> tuple[float, str] | None:
    """(time, label) of a prediction logged by any replica, or None."""
    row = conn.execute(
        "SELECT ts, label FROM predictions WHERE id = %s", (prediction_id,)
    ).fetchone()
    return None if row is None else (float(row[0]), row[1])


def insert_feedback(
    conn: Any,
    received_by: str,
    prediction_id: str,
    label: str,
    predicted: str,
    prediction_ts: float,
) -> tuple[bool, str, int, int]:
    """Record feedback (the first per prediction counts, whichever replica took it; a
    different later one is kept as a correction): (added, the label on record, feedback
    count of the fleet, correct count). Run in a transaction."""
    now = time.time()
    added = conn.execute(
        "INSERT INTO feedback (id, ts, replica, label, predicted, prediction_ts, correct, "
        "received_by) VALUES (%s, %s, COALESCE((SELECT replica FROM predictions WHERE id = %s), "
        "%s), %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (
            prediction_id,
            now,
            prediction_id,
            received_by,
            label,
            predicted,
            prediction_ts,
            int(predicted == label),
            received_by,
        ),
    ).rowcount
    recorded = conn.execute(
        "SELECT label FROM feedback WHERE id = %s", (prediction_id,)
    ).fetchone()[0]
    if not added and recorded != label:
        conn.execute(
            "INSERT INTO feedback_corrections (id, ts, label, recorded) VALUES (%s,%s,%s,%s)",
            (prediction_id, now, label, recorded),
        )
        conn.execute(
            "DELETE FROM feedback_corrections WHERE ctid IN (SELECT ctid FROM "
            "feedback_corrections WHERE id = %s ORDER BY ts DESC OFFSET %s)",
            (prediction_id, MAX_CORRECTIONS_PER_PREDICTION),
        )
    n, correct = conn.execute(
        "SELECT COALESCE(SUM(n), 0), COALESCE(SUM(correct), 0) FROM feedback_totals"
    ).fetchone()
    return bool(added), recorded, int(n), int(correct)


_RETAINED = (
    ("predictions", "ts"),
    ("feedback", "prediction_ts"),
    ("feedback_corrections", "ts"),
    ("shadow", "ts"),
    ("drift", "ts"),
    ("fleet_drift", "ts"),
    ("fleet_features", "ts"),
)


def apply_retention(conn: Any, retention_days: float, max_rows: int) -> int:
    """Delete rows older than the retention age, and beyond the row limit of each table that
    grows (for the fleet); returns the number of prediction rows deleted. Run in a
    transaction."""
    cutoff = clamp_since(time.time() - retention_days * 86400)
    deleted: dict[str, int] = {}
    conn.execute("DELETE FROM minute_counts WHERE minute < %s", (int(cutoff // 60),))
    conn.execute("DELETE FROM minute_latency WHERE minute < %s", (int(cutoff // 60),))
    for table, column in _RETAINED:
        n = conn.execute(f"DELETE FROM {table} WHERE {column} < %s", (cutoff,)).rowcount
        n += conn.execute(
            f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} "
            f"ORDER BY {column} DESC OFFSET %s)",
            (max(int(max_rows), 0),),
        ).rowcount
        deleted[table] = n
    conn.execute(
        "DELETE FROM feedback_corrections c WHERE NOT EXISTS "
        "(SELECT 1 FROM feedback f WHERE f.id = c.id)"
    )
    return deleted["predictions"]


def _where_replica(replica: str | None) -> tuple[str, tuple[Any, ...]]:
    return ("", ()) if replica is None else (" AND replica = %s", (replica,))


def summarize(conn: Any, since: float, replica: str | None = None) -> dict[str, Any]:
    """The monitoring summary of the fleet's predictions made after `since` (or of one
    replica's), from the minute rollups: the same figures as the SQLite log's."""
    since = clamp_since(since)
    minute = int(since // 60)
    only, arg = _where_replica(replica)
    rows = conn.execute(
        "SELECT label, SUM(n), SUM(confidence_sum), SUM(verdicts), SUM(ood) FROM minute_counts "
        f"WHERE minute >= %s{only} GROUP BY label ORDER BY label",
        (minute, *arg),
    ).fetchall()
    feedback = conn.execute(
        f"SELECT COUNT(*), SUM(correct) FROM feedback WHERE prediction_ts >= %s{only}",
        (since, *arg),
    ).fetchone()
    latency = conn.execute(
        f"SELECT bucket, SUM(n) FROM minute_latency WHERE minute >= %s{only} GROUP BY bucket",
        (minute, *arg),
    ).fetchall()
    drift_rows = conn.execute(
        "SELECT ts, n, score, p_value, p_value_is_bound, drift, ood_fraction FROM drift "
        f"WHERE ts >= %s AND role = 'live'{only} ORDER BY ts",
        (since, *arg),
    ).fetchall()
    challenger_rows = conn.execute(
        "SELECT p_value, drift, model_version FROM drift "
        f"WHERE ts >= %s AND role = 'challenger'{only} ORDER BY ts",
        (since, *arg),
    ).fetchall()
    per_replica = conn.execute(
        f"SELECT replica, SUM(n) FROM minute_counts WHERE minute >= %s{only} "
        "GROUP BY replica ORDER BY replica",
        (minute, *arg),
    ).fetchall()
    summary = build_summary(rows, feedback, latency, drift_rows, challenger_rows)
    summary["replicas"] = {r: int(n) for r, n in per_replica}
    return summary


def report_rows(conn: Any, since: float, replica: str | None = None) -> dict[str, list[tuple]]:
    """What `fisheye monitor report` plots: predictions, live drift tests and feedback."""
    since = clamp_since(since)
    only, arg = _where_replica(replica)
    return {
        "predictions": conn.execute(
            "SELECT ts, label, confidence, in_distribution FROM predictions "
            f"WHERE ts >= %s{only} ORDER BY ts",
            (since, *arg),
        ).fetchall(),
        "drift": conn.execute(
            f"SELECT ts, p_value FROM drift WHERE ts >= %s AND role = 'live'{only} ORDER BY ts",
            (since, *arg),
        ).fetchall(),
        "feedback": conn.execute(
            f"SELECT ts, correct FROM feedback WHERE prediction_ts >= %s{only} ORDER BY ts",
            (since, *arg),
        ).fetchall(),
    }
