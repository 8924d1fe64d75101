"""Prediction-log queries at scale: the monitoring summary and feedback writes.

    python benchmarks/log_queries.py --rows 1000000

Fills a fresh SQLite prediction log with `--rows` predictions spread over the last
`--hours` (plus feedback on `--feedback-share` of them), then times
`PredictionLog.summary` for windows of 1h and 24h and `add_feedback` on random
predictions (median and p99 of `--repeats` calls each).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from fisheye.monitoring.prediction_log import PredictionLog, PredictionRow
from fisheye.monitoring.prediction_log.queries import insert_predictions
from fisheye.monitoring.prediction_log.schema import connect

LABELS = ("Trout", "Sea Bass", "Shrimp", "Red Mullet", "Gilt-Head Bream")


def fill(path: Path, rows: int, hours: float, feedback_share: float, seed: int) -> list[str]:
    """Write the rows in batches of 10,000; returns the ids that have no feedback yet."""
    rng = random.Random(seed)
    now = time.time()
    ids: list[str] = []
    conn = connect(path)
    batch: list[PredictionRow] = []
    for i in range(rows):
        row = PredictionRow(
            id=str(uuid.UUID(int=rng.getrandbits(128))),
            ts=now - rng.random() * hours * 3600,
            model_version="v1",
            backend="onnx-int8",
            label=rng.choice(LABELS),
            confidence=rng.random(),
            ood_score=rng.random() * 100,
            in_distribution=rng.random() > 0.05,
            latency_ms=5 + rng.expovariate(0.1),
            sha256="",
        )
        batch.append(row)
        ids.append(row.id)
        if len(batch) == 10_000 or i == rows - 1:
            with conn:
                insert_predictions(conn, batch)
            batch = []
    with conn:
        chosen = rng.sample(ids, int(len(ids) * feedback_share))
        conn.executemany(
            "INSERT INTO feedback SELECT id, ?, ?, label, ts, label = ? FROM predictions "
            "WHERE id = ?",
            [(now, lab, lab, i) for i, lab in ((i, rng.choice(LABELS)) for i in chosen)],
        )
    conn.close()
    return sorted(set(ids) - set(chosen))


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median, p99) wall time of fn() in ms."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


def main(argv: list[str] | None = None) -> int:
    """Fill a log, time the queries, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--feedback-share", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.sqlite"
        start = time.perf_counter()
        ids = fill(path, args.rows, args.hours, args.feedback_share, args.seed)
        size_mb = path.stat().st_size / 2**20
        print(
            f"{args.rows:,} predictions over {args.hours:g} h, "
            f"{int(args.rows * args.feedback_share):,} with feedback; filled in "
            f"{time.perf_counter() - start:.0f} s, {size_mb:.0f} MiB\n"
        )
        plog = PredictionLog(path)
        plog.start()
        rng = random.Random(args.seed + 1)
        try:
            print("| query | median ms | p99 ms |")
            print("|---|---:|---:|")
            for window in (3600, 86400):
                med, p99 = timed(lambda w=window: plog.summary(w), args.repeats)
                print(f"| summary, last {window // 3600} h | {med:.1f} | {p99:.1f} |")
            fresh = iter(rng.sample(ids, args.repeats))
            med, p99 = timed(
                lambda: plog.add_feedback(next(fresh), rng.choice(LABELS)), args.repeats
            )
            print(f"| feedback write | {med:.2f} | {p99:.2f} |")
        except Exception as exc:
            print(f"failed: {exc}")
            return 1
        finally:
            plog.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
