"""What keeping photos costs: on the request path, in the keeper's thread, and in the store.

    python benchmarks/photo_archive.py --photos 2000 --kb 60 --rows 200000

- `offer`: deciding and holding one answered photo, on the request path (µs per photo; the
  default 1% sample rate, so nearly every photo is held in memory for feedback);
- `put`: photos written into a folder archive a second (each synced to disk before it is
  renamed into place), then the same photos again (found, not written);
- `prune`: listing a folder archive of --photos photos and deleting the oldest half;
- `lookup`: the keeper's look for feedback (every 2 s while photos are held) on a SQLite log
  of --rows predictions over the last 10 minutes, 1% of them with feedback.
Photos are random bytes behind a JPEG header (--kb each): the archive never decodes them.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from fisheye.monitoring.photo_archive import KeepOptions, LocalArchive, PhotoKeeper
from fisheye.monitoring.prediction_log import PredictionRow
from fisheye.monitoring.prediction_log.queries import insert_predictions, recent_feedback_ids
from fisheye.monitoring.prediction_log.schema import connect


def _photos(n: int, kb: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [b"\xff\xd8\xff\xe0" + rng.randbytes(kb * 1024 - 4) for _ in range(n)]


def bench_offer(photos: list[bytes], repeats: int) -> float:
    """Median µs per `offer` of a photo the policy does not keep at once."""
    keeper = PhotoKeeper(
        LocalArchive(Path(tempfile.mkdtemp())),
        KeepOptions("bench"),
        lambda *_: [],
        lambda _refs: None,
    )
    keeper.start()
    runs = []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            for i, data in enumerate(photos):
                keeper.offer(f"id-{i}", data, in_distribution=True, unsure=False)
            runs.append((time.perf_counter() - start) / len(photos) * 1e6)
    finally:
        keeper.stop()
    return statistics.median(runs)


def bench_put(root: Path, photos: list[bytes]) -> tuple[float, float]:
    """Photos a second: written new, then the same ones again."""
    archive = LocalArchive(root)
    rates = []
    for _ in range(2):
        start = time.perf_counter()
        for data in photos:
            archive.put(data)
        rates.append(len(photos) / (time.perf_counter() - start))
    return rates[0], rates[1]


def bench_prune(root: Path, photos: list[bytes]) -> tuple[float, int]:
    """Seconds to prune the archive to half its size, and photos deleted."""
    archive = LocalArchive(root)
    now = time.time()
    for i, p in enumerate(archive.photos()):  # distinct ages: the oldest half goes
        when = now - 3600 - i
        os.utime(root / p.path, (when, when))
    half = sum(len(p) for p in photos) // 2
    start = time.perf_counter()
    result = archive.prune(max_bytes=half, max_age_days=30)
    return time.perf_counter() - start, result.deleted


def bench_lookup(path: Path, rows: int, repeats: int, seed: int) -> tuple[float, int]:
    """Median ms of the keeper's feedback lookup, and the ids it returned."""
    rng = random.Random(seed)
    now = time.time()
    conn = connect(path)
    batch = []
    for _ in range(rows):
        batch.append(
            PredictionRow(
                id=str(uuid.UUID(int=rng.getrandbits(128))),
                ts=now - rng.random() * 600,
                model_version="v1",
                backend="onnx-int8",
                label="Trout",
                confidence=0.9,
                ood_score=1.0,
                in_distribution=True,
                latency_ms=5.0,
                sha256="",
            )
        )
    with conn:
        insert_predictions(conn, batch)
        chosen = rng.sample(batch, rows // 100)
        conn.executemany(
            "INSERT INTO feedback VALUES (?,?,?,?,?,?)",
            [(r.id, now - rng.random() * 600, "Trout", "Trout", r.ts, 1) for r in chosen],
        )
    times, found = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        found = len(recent_feedback_ids(conn, now - 600 - 60, now - 2 - 60))
        times.append((time.perf_counter() - start) * 1000)
    conn.close()
    return statistics.median(times), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--kb", type=int, default=60, help="size of each photo")
    parser.add_argument("--rows", type=int, default=200_000, help="predictions in the log")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    photos = _photos(args.photos, args.kb, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "archive"
        offer_us = bench_offer(photos, args.repeats)
        new, again = bench_put(root, photos)
        prune_s, deleted = bench_prune(root, photos)
        lookup_ms, found = bench_lookup(Path(tmp) / "log.sqlite", args.rows, args.repeats, 1)
    mb = args.kb / 1024
    print(f"photos: {args.photos} x {args.kb} KiB")
    print(f"offer (request path):      {offer_us:8.2f} µs per photo")
    print(f"put, new photos:           {new:8.0f} photos/s ({new * mb:.0f} MiB/s, each synced)")
    print(f"put, photos already kept:  {again:8.0f} photos/s")
    print(f"prune to half:             {prune_s * 1000:8.1f} ms ({deleted} photos deleted)")
    print(
        f"feedback lookup:           {lookup_ms:8.2f} ms ({args.rows} predictions in the "
        f"last 10 min, {found} with feedback in the last 62 s)"
    )


if __name__ == "__main__":
    main()
