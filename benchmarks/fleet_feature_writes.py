"""What the fleet's drift test costs the store: feature rows written per second, bytes per
row, and the leader's read of a window.

    python benchmarks/fleet_feature_writes.py --rows 20000 --dim 1280 --replicas 1 3

Starts a throwaway PostgreSQL server (Debian's `postgresql` package, as the tests do:
tests/helpers/postgres.py; fsync on, as a real store). Each replica's FleetDrift thread
writes the rows its sample admitted once a second, so rows go in batches of
`--batch` (at most FISHEYE_FLEET_FEATURES_PER_S, 20 by default, a batch):
here `--replicas` writers (threads, each with its own connection, as replicas have) write
`--rows` rows in all as fast as the store takes them. Prints the store's saturation rate in
rows/s, the table's bytes per row (heap, TOAST and indexes, after VACUUM), the time the
leader takes to read a window of `--window` rows, and what the sample costs a request
(FeatureSampler.offer, per photo).
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import psycopg

from fisheye.monitoring.prediction_log.fleet_rows import FeatureRow, encode_features
from fisheye.monitoring.prediction_log.fleet_store import FleetStore
from fisheye.serving.fleet_features import FeatureSampler
from tests.helpers.postgres import fresh_database, postgres_server

SPACE = "bench/onnx"


def feature_rows(n: int, dim: int, seed: int) -> list[FeatureRow]:
    rng = np.random.default_rng(seed)
    feats = np.abs(rng.normal(size=(n, dim))).astype(np.float32)  # post-activation-like
    now = time.time()
    return [
        FeatureRow(
            ts=now + i * 1e-3,
            model_version="v1",
            feature_space=SPACE,
            photos=1,
            label=int(rng.integers(9)),
            ood=bool(rng.random() < 0.05),
            confidence=float(rng.random()),
            features=encode_features(feats[i]),
        )
        for i in range(n)
    ]


def write_rate(url: str, rows: list[FeatureRow], replicas: int, batch: int) -> float:
    """Rows per second written by `replicas` writers, each its share in batches of `batch`."""
    stores = [FleetStore(url, replica=f"replica-{k}") for k in range(replicas)]
    for store in stores:
        store.latest_result()  # connect (and migrate) before the clock starts

    def write(store: FleetStore, share: list[FeatureRow]) -> None:
        for start in range(0, len(share), batch):
            store.write_features(share[start : start + batch])

    threads = [
        threading.Thread(target=write, args=(store, rows[k::replicas]))
        for k, store in enumerate(stores)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for store in stores:
        store.close()
    return len(rows) / elapsed


def bytes_per_row(url: str) -> tuple[int, float]:
    """(rows, total bytes of fleet_features with TOAST and indexes per row) after VACUUM."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM fleet_features")
        n, size = conn.execute(
            "SELECT count(*), pg_total_relation_size('fleet_features') FROM fleet_features"
        ).fetchone()
    return int(n), size / max(1, n)


def window_read_ms(url: str, size: int, repeats: int = 20) -> float:
    """Median time the leader takes to read the `size` most recent rows."""
    store = FleetStore(url, replica="leader")
    store.window(SPACE, size)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        store.window(SPACE, size)
        times.append(time.perf_counter() - start)
    store.close()
    return 1000 * float(np.median(times))


def offer_us(dim: int, n: int = 20_000) -> float:
    """Microseconds per photo of FeatureSampler.offer at the default rate (most skipped)."""
    sampler = FeatureSampler(20, model_version="v1", feature_space=SPACE)
    feats = np.random.default_rng(0).normal(size=(1, dim)).astype(np.float32)
    flags, labels, conf = np.zeros(1, bool), np.zeros(1, int), np.full(1, 0.9)
    start = time.perf_counter()
    for _ in range(n):
        sampler.offer(feats, flags, labels, conf)
    return 1e6 * (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=1280, help="features per photo")
    parser.add_argument("--batch", type=int, default=20, help="rows per write")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--window", type=int, default=200)
    args = parser.parse_args()
    print(f"features: {args.dim} x float16 = {args.dim * 2:,} bytes a row before overhead")
    print(f"{'writers':>8} {'rows/s':>10} {'MB/s':>8} {'bytes/row':>10} {'window read':>12}")
    with postgres_server(durable=True) as server:
        for n in args.replicas:
            url = fresh_database(server, f"fleet_bench_{n}")
            rows = feature_rows(args.rows, args.dim, seed=n)
            rate = write_rate(url, rows, n, args.batch)
            stored, per_row = bytes_per_row(url)
            assert stored == args.rows, f"{stored} rows stored of {args.rows}"
            read = window_read_ms(url, args.window)
            print(
                f"{n:>8} {rate:>10,.0f} {rate * per_row / 1e6:>8.1f} {per_row:>10,.0f} "
                f"{read:>9.1f} ms"
            )
    print(f"sample per photo (FeatureSampler.offer): {offer_us(args.dim):.1f} us")


if __name__ == "__main__":
    main()
