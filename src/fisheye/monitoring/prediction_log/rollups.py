"""Per-minute rollups of the prediction log: counts, confidence, OOD and a latency histogram.

Written with the rows, so a summary reads minutes, not rows, and costs the same whatever the
number of predictions.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from typing import Any

# Latency histogram of the rollups: bucket k holds latencies up to LATENCY_BASE_MS * 1.05**k,
# so a percentile read from it is within 5% (bucket 0 holds everything up to the base).
LATENCY_BASE_MS = 0.1
LATENCY_GROWTH = 1.05
LATENCY_BUCKETS = 400


def latency_bucket(ms: float) -> int:
    """The rollup histogram bucket of a latency."""
    if ms <= LATENCY_BASE_MS:
        return 0
    k = math.ceil(math.log(ms / LATENCY_BASE_MS) / math.log(LATENCY_GROWTH) - 1e-9)
    return min(LATENCY_BUCKETS - 1, k)


def aggregate(
    rows: Iterable[Any],
) -> tuple[dict[tuple[int, str], list[float]], dict[tuple[int, int], int]]:
    """(ts, label, confidence, in_distribution, latency_ms) rows summed per minute: counts
    per (minute, label) as [n, confidence sum, verdicts, ood], latencies per (minute, bucket)."""
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
    return counts, latency


def add_to_rollups(conn: sqlite3.Connection, rows: Iterable[Any]) -> None:
    """Add (ts, label, confidence, in_distribution, latency_ms) rows to the minute rollups."""
    counts, latency = aggregate(rows)
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


def percentiles(counts: dict[int, int], qs: tuple[int, ...]) -> dict[str, float | None]:
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
