"""How fast the prediction log's stores take rows: SQLite, and PostgreSQL shared by replicas.

    python benchmarks/log_store_write_rate.py --rows 100000 --replicas 1 3

Starts a throwaway PostgreSQL server (Debian's `postgresql` package, as the tests do:
tests/helpers/postgres.py; fsync on, as a real store), then writes `--rows` predictions
through `PredictionLog` as fast as they can be queued: once into a SQLite file, then into
PostgreSQL from each count of `--replicas` (one log per replica, each with its own writer
thread and connection, the rows split between them). Prints rows written per second (from
the first record to the last row flushed), rows lost, and the rows the store holds after.
The write rate is the store's saturation rate: predictions arrive far slower on a server.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path

from fisheye.monitoring.prediction_log import PredictionLog, PredictionRow, open_store
from tests.helpers.postgres import fresh_database, postgres_server

LABELS = ("Trout", "Sea Bass", "Shrimp", "Red Mullet", "Gilt-Head Bream")


def rows(n: int, seed: int) -> list[PredictionRow]:
    rng = random.Random(seed)
    now = time.time()
    return [
        PredictionRow(
            id=str(uuid.UUID(int=rng.getrandbits(128))),
            ts=now - rng.random() * 3600,
            model_version="v1",
            backend="onnx-int8",
            label=rng.choice(LABELS),
            confidence=rng.random(),
            ood_score=rng.random() * 100,
            in_distribution=rng.random() > 0.05,
            latency_ms=5 + rng.expovariate(0.1),
            sha256="",
        )
        for _ in range(n)
    ]


def write(dbs: list[Path | str], batch: list[PredictionRow]) -> tuple[float, int, int]:
    """(rows per second, rows lost, rows in the store) for the rows split across `dbs`."""
    logs = [
        PredictionLog(open_store(db, replica=f"replica-{k}"), max_queue=len(batch) + 1)
        for k, db in enumerate(dbs)
    ]
    for log in logs:
        log.start()
    shares = [batch[k :: len(logs)] for k in range(len(logs))]

    def feed(log: PredictionLog, share: list[PredictionRow]) -> None:
        for row in share:
            log.record(row)

    start = time.perf_counter()
    threads = [threading.Thread(target=feed, args=pair) for pair in zip(logs, shares, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        assert log.flush(timeout=600), "the log did not flush within 600 s"
    elapsed = time.perf_counter() - start
    stored = logs[0].summary(7200)["predictions"]
    lost = sum(log.lost for log in logs)
    for log in logs:
        log.stop()
    return len(batch) / elapsed, lost, stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{'store':<28} {'rows/s':>10} {'lost':>6} {'stored':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        rate, lost, stored = write([Path(tmp) / "log.sqlite"], rows(args.rows, args.seed))
        print(f"{'SQLite, 1 replica':<28} {rate:>10,.0f} {lost:>6} {stored:>8}")
    with postgres_server(durable=True) as server:
        for n in args.replicas:
            url = fresh_database(server, f"bench_{n}")
            rate, lost, stored = write([url] * n, rows(args.rows, args.seed + n))
            print(f"{f'PostgreSQL, {n} replica(s)':<28} {rate:>10,.0f} {lost:>6} {stored:>8}")


if __name__ == "__main__":
    main()
