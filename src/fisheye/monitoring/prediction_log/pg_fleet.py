"""Every SQL statement of the fleet's drift test on PostgreSQL, one function per read or write:
replicas write sampled feature rows; the leader (who holds FLEET_DRIFT_LOCK) reads the fleet's
window, writes its results and prunes old rows; every replica reads the latest result.

They run in the caller's connection (autocommit); `fleet_store.FleetStore` owns it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg.types.json import Jsonb

from fisheye.monitoring.prediction_log.fleet_rows import FeatureRow, FleetWindow, decode_features
from fisheye.monitoring.prediction_log.pg_schema import FLEET_DRIFT_LOCK


@dataclass(frozen=True)
class LastTest:
    """Where the previous fleet test of a feature space left off."""

    ts: float
    last_feature: int  # the newest feature row it counted
    unspent: int  # photos whose share of the false-alarm budget it did not use


def insert_features(conn: Any, replica: str, rows: list[FeatureRow]) -> None:
    """Insert sampled feature rows (one statement)."""
    if not rows:
        return
    conn.execute(
        "INSERT INTO fleet_features (ts, replica, model_version, feature_space, photos, label, "
        "ood, confidence, features) SELECT ts, %s, mv, fs, ph, lb, ood, conf, f FROM unnest("
        "%s::float8[], %s::text[], %s::text[], %s::int[], %s::int[], %s::bool[], %s::real[], "
        "%s::bytea[]) AS r(ts, mv, fs, ph, lb, ood, conf, f)",
        (
            replica,
            [r.ts for r in rows],
            [r.model_version for r in rows],
            [r.feature_space for r in rows],
            [r.photos for r in rows],
            [r.label for r in rows],
            [r.ood for r in rows],
            [r.confidence for r in rows],
            [r.features for r in rows],
        ),
    )


def try_lead(conn: Any) -> bool:
    """Take the fleet-drift lock for this session if no other session holds it."""
    return bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (FLEET_DRIFT_LOCK,)).fetchone()[0])


def last_test(conn: Any, feature_space: str) -> LastTest | None:
    """The latest fleet test of `feature_space`, or None."""
    row = conn.execute(
        "SELECT ts, last_feature, unspent FROM fleet_drift WHERE feature_space = %s "
        "ORDER BY id DESC LIMIT 1",
        (feature_space,),
    ).fetchone()
    return None if row is None else LastTest(float(row[0]), int(row[1]), int(row[2]))


def new_photos(conn: Any, feature_space: str, after: int) -> tuple[int, int]:
    """(photos, newest row id) of the feature rows of `feature_space` stored after row
    `after` (`after` itself when there are none)."""
    photos, newest = conn.execute(
        "SELECT COALESCE(SUM(photos), 0), MAX(id) FROM fleet_features "
        "WHERE feature_space = %s AND id > %s",
        (feature_space, after),
    ).fetchone()
    return int(photos), after if newest is None else int(newest)


def window(conn: Any, feature_space: str, size: int) -> FleetWindow:
    """The `size` most recent photos of `feature_space`, of every replica."""
    rows = conn.execute(
        "SELECT ts, replica, label, ood, confidence, features FROM fleet_features "
        "WHERE feature_space = %s ORDER BY ts DESC, id DESC LIMIT %s",
        (feature_space, size),
    ).fetchall()[::-1]
    return FleetWindow(
        features=decode_features([bytes(r[5]) for r in rows]),
        labels=np.array([r[2] for r in rows], dtype=np.int64),
        ood=np.array([bool(r[3]) for r in rows], dtype=bool),
        confidence=np.array([np.nan if r[4] is None else r[4] for r in rows], dtype=np.float64),
        replicas=dict(sorted(Counter(r[1] for r in rows).items())),
        first_ts=float(rows[0][0]) if rows else None,
        last_ts=float(rows[-1][0]) if rows else None,
    )


_RESULT_COLUMNS = (
    "ts",
    "leader",
    "model_version",
    "feature_space",
    "last_feature",
    "new_photos",
    "unspent",
    "n",
    "score",
    "p_value",
    "alpha",
    "drift",
    "class_mix_p_value",
    "alarm",
    "ood_fraction",
    "estimated_accuracy",
)


def insert_result(conn: Any, result: dict[str, Any]) -> int:
    """Store a fleet drift test (`result` has every column of fleet_drift but `id`, `detail`
    being a JSON-ready dict); returns its id."""
    values = [result[c] for c in _RESULT_COLUMNS]
    values[_RESULT_COLUMNS.index("drift")] = int(result["drift"])
    values[_RESULT_COLUMNS.index("alarm")] = int(result["alarm"])
    placeholders = ", ".join(["%s"] * (len(_RESULT_COLUMNS) + 1))
    return int(
        conn.execute(
            f"INSERT INTO fleet_drift ({', '.join(_RESULT_COLUMNS)}, detail) "
            f"VALUES ({placeholders}) RETURNING id",
            (*values, Jsonb(result["detail"])),
        ).fetchone()[0]
    )


def latest_result(conn: Any) -> dict[str, Any] | None:
    """The fleet's latest drift test (of any feature space), or None."""
    row = conn.execute(
        f"SELECT id, {', '.join(_RESULT_COLUMNS)}, detail FROM fleet_drift ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    out = dict(zip(("id", *_RESULT_COLUMNS, "detail"), row, strict=True))
    out["drift"], out["alarm"] = bool(out["drift"]), bool(out["alarm"])
    return out


def prune_features(conn: Any, keep: int) -> int:
    """Delete all but the newest `keep` feature rows (of every feature space); returns how
    many were deleted."""
    return conn.execute(
        "DELETE FROM fleet_features WHERE id <= (SELECT id FROM fleet_features "
        "ORDER BY id DESC OFFSET %s LIMIT 1)",
        (max(int(keep), 0),),
    ).rowcount
