"""Batch prediction throughput (single process vs Ray Data) and memory as the photo count grows.

    python -m benchmarks.batch_predict                       # from the repository root
    python -m benchmarks.batch_predict --photos 1790 --memory-counts 2000 20000

Photos are the shared validation photos (../shared/data/fish-256/val), repeated to reach
each count through symbolic links in a temporary folder (nothing is copied). Figures:

- photos/s of `--engine local` and of `--engine ray` with 1 and 2 model actors, measured in
  this process from the first photo asked for to the last row written (Ray's start-up is
  outside the timing; its actors' start-up, inside), over `--repeat` interleaved rounds.
  The output is a Parquet folder.
- peak resident memory (VmHWM) of a whole `fisheye predict --out preds.csv` process for
  each of `--memory-counts` photos: the results stream to the file, so it should not grow.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fisheye.data.files import collect_image_paths
from fisheye.inference.batch import local_batches, write_rows
from fisheye.inference.ray_engine import connect, ray_batches
from fisheye.inference.results import ResultWriter
from fisheye.monitoring.loading import load_predictor
from tests.helpers.paths import DEFAULT_MODEL, VAL

PEAK_CODE = """
import resource, sys
from fisheye.cli import app
try:
    app(prog_name="fisheye")
finally:
    print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def linked_photos(folder: Path, count: int) -> Path:
    """`count` links to the validation photos (repeated) in `folder`."""
    photos = sorted(collect_image_paths([VAL]))
    folder.mkdir(parents=True)
    for i in range(count):
        source = Path(photos[i % len(photos)]).resolve()
        (folder / f"{i:06d}{source.suffix}").symlink_to(source)
    return folder


def rate(files: list, out: Path, batches) -> float:
    """Photos per second to stream `batches` for `files` into `out`."""
    start = time.perf_counter()
    with ResultWriter(out) as writer:
        summary = write_rows(batches, writer, total=len(files), skipped=0)
    elapsed = time.perf_counter() - start
    assert summary.written == len(files), summary
    return len(files) / elapsed


def peak_mb(folder: Path, model: Path, out: Path) -> tuple[float, float]:
    """Peak RSS (MiB) and wall time (s) of a `fisheye predict --out` process."""
    cmd = [sys.executable, "-c", PEAK_CODE, "predict", str(folder), "-m", str(model)]
    cmd += ["--out", str(out)]
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"fisheye predict failed:\n{run.stderr}")
    kb = next(int(x.split()[1]) for x in run.stderr.splitlines() if x.startswith("PEAK_KB"))
    return kb / 1024, elapsed


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--photos", type=int, default=1790, help="photos for the photos/s runs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the photos/s runs")
    parser.add_argument("--memory-counts", type=int, nargs="*", default=[2000, 20000])
    args = parser.parse_args()
    if not VAL.is_dir():
        raise SystemExit(f"the shared photos are not at {VAL}")

    # The Predictor as `fisheye predict` builds it (its monitor's OOD scores included).
    load = functools.partial(load_predictor, backend="auto", top_k=3)
    predictor = load(args.model)
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, model {args.model}")
    print(f"# backend {predictor.backend_name}, batch size {args.batch_size}")
    with tempfile.TemporaryDirectory(prefix="fisheye-batch-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        files = collect_image_paths([linked_photos(tmp / "rate", args.photos)])
        connect(None)
        # 0 actors: the local engine.
        engines = [0, *args.actors]
        speeds: dict[int, list[float]] = {e: [] for e in engines}
        # Rounds interleave the engines, so a burst of other work on the machine is shared.
        for round_ in range(args.repeat):
            for actors in engines:
                out = tmp / f"{actors}-{round_}.parquet"
                if actors == 0:
                    batches = local_batches(predictor, files, batch_size=args.batch_size, top_k=3)
                else:
                    batches = ray_batches(
                        files,
                        bundle_dir=args.model,
                        load=load,
                        preparer=predictor.preparer,
                        actors=actors,
                        batch_size=args.batch_size,
                        top_k=3,
                    )
                speeds[actors].append(rate(files, out, batches))
        print(f"\n{args.repeat} rounds of {len(files)} photos; median (min-max):")
        print("\n| engine | photos/s |\n|---|---:|")
        for actors, values in speeds.items():
            name = f"ray, {actors} actor{'s' * (actors > 1)}" if actors else "local (1 process)"
            low, mid, high = min(values), statistics.median(values), max(values)
            print(f"| {name} | {mid:.1f} ({low:.1f}-{high:.1f}) |", flush=True)

        if not args.memory_counts:
            return
        print("\n| photos | peak RSS of `fisheye predict --out` (MiB) | wall time (s) |")
        print("|---:|---:|---:|")
        for count in args.memory_counts:
            folder = linked_photos(tmp / f"mem-{count}", count)
            peak, wall = peak_mb(folder, args.model, tmp / f"mem-{count}.csv")
            print(f"| {count} | {peak:.0f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
