"""Resident memory and threads of a FishEye server over many hot swaps.

    python -m benchmarks.swap_leak                         # from the repository root
    python -m benchmarks.swap_leak --swaps 30 --pythonpath /path/to/other/src

Starts `fisheye serve` on 127.0.0.1 with the committed default model, then swaps between it
and a copy of it in another folder (POST /v1/admin/model: each swap loads the model again)
`--swaps` times, sending a few real photos before each swap so the drift window and the
prediction log have work. After each swap it waits for the replaced model to be retired and
prints the server's resident memory (VmRSS) and thread count. The server keeps two models on
purpose (the live one and the one kept for rollback); anything above that grows with every
swap. Linux only.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.local_server import start_server, stop_server, threads
from benchmarks.serve_load import DEFAULT_PHOTOS, load_photos
from tests.helpers.memory import rss_mb

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "swap-leak-benchmark"


def main(argv: list[str] | None = None) -> int:
    """Run the swaps and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--swaps", type=int, default=30)
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--per-swap", type=int, default=8, help="Photos sent before each swap.")
    parser.add_argument("--settle-s", type=float, default=1.5, help="Wait after each swap.")
    parser.add_argument("--backend", default="onnx")
    parser.add_argument(
        "--pythonpath", help="Serve FishEye from this source folder (compare two versions)."
    )
    args = parser.parse_args(argv)
    photos = load_photos(args.photos, 32) if args.photos.is_dir() else []
    if not photos:
        print(f"no photos under {args.photos}: swapping without traffic", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        models = [args.model, Path(shutil.copytree(args.model, Path(tmp) / "copy"))]
        env = {
            "FISHEYE_ADMIN_TOKEN": TOKEN,
            "FISHEYE_BACKEND": args.backend,
            "FISHEYE_PREDICTION_DB": str(Path(tmp) / "log.db"),
        }
        url, proc = start_server(models[0], Path(tmp) / "server.log", env, args.pythonpath)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                for name, data in photos[: args.per_swap]:  # warm the first model's paths
                    client.post("/v1/predict", files={"file": (name, data)})
                time.sleep(args.settle_s)
                rss0, threads0 = rss_mb(proc.pid), threads(proc.pid)
                print(f"server pid {proc.pid}; {args.swaps} swaps, backend {args.backend}\n")
                print("| swap | status | RSS MiB | threads |")
                print("|---:|---|---:|---:|")
                print(f"| 0 | | {rss0:.0f} | {threads0} |")
                for i in range(1, args.swaps + 1):
                    for k in range(args.per_swap):
                        name, data = photos[(i * args.per_swap + k) % len(photos)]
                        client.post("/v1/predict", files={"file": (name, data)})
                    target = str(models[i % 2])
                    res = client.post("/v1/admin/model", json={"model": target}, headers=auth)
                    time.sleep(args.settle_s)
                    print(
                        f"| {i} | {res.status_code} | {rss_mb(proc.pid):.0f} "
                        f"| {threads(proc.pid)} |"
                    )
                rss1, threads1 = rss_mb(proc.pid), threads(proc.pid)
            print(
                f"\nafter {args.swaps} swaps: RSS {rss0:.0f} -> {rss1:.0f} MiB "
                f"({rss1 - rss0:+.0f}), threads {threads0} -> {threads1} ({threads1 - threads0:+d})"
            )
        finally:
            stop_server(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
