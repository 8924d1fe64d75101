"""Answered predictions against logged ones while many clients send feedback at once.

    python -m benchmarks.log_contention                    # from the repository root
    python -m benchmarks.log_contention --seconds 30 --feedback-clients 32 --predict-clients 8 \
        --pythonpath /path/to/other/src

Starts `fisheye serve` on 127.0.0.1 with the committed default model (`--tiny`: a tiny
random one, so more requests a second reach the log) and its prediction log in a temporary
SQLite file. For `--seconds`, `--predict-clients` clients post real photos to
/v1/predict and keep the ids of the answered predictions, while `--feedback-clients` clients
send feedback on those ids as fast as they are answered (a new label, the same one again, or
a conflicting one: every kind of feedback write). Then it stops the server (SIGTERM: the log
writes what it holds) and counts the answered predictions that are not in the log, and
prints the lost-rows counter the server reported before it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sqlite3
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.local_server import start_server, stop_server
from benchmarks.serve_load import DEFAULT_PHOTOS, load_photos
from tests.helpers.bundles import make_bundle

ROOT = Path(__file__).resolve().parents[1]


async def load(
    url: str,
    photos: list[tuple[str, bytes]],
    seconds: float,
    predict_clients: int,
    feedback_clients: int,
    seed: int,
) -> tuple[list[str], Counter[int], Counter[int]]:
    """Run both kinds of clients; returns the answered ids and the status counts."""
    answered: list[str] = []
    predict_codes: Counter[int] = Counter()
    feedback_codes: Counter[int] = Counter()
    limits = httpx.Limits(max_connections=predict_clients + feedback_clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        classes = (await client.get("/v1/model")).json()["classes"]
        stop = time.monotonic() + seconds

        async def predictor(k: int) -> None:
            i = k
            while time.monotonic() < stop:
                name, data = photos[i % len(photos)]
                i += predict_clients
                try:
                    res = await client.post("/v1/predict", files={"file": (name, data)})
                except httpx.HTTPError:
                    predict_codes[0] += 1
                    continue
                predict_codes[res.status_code] += 1
                if res.status_code == 200:
                    answered.append(res.json()["id"])

        async def feedback(k: int) -> None:
            rng = random.Random(seed + k)
            while time.monotonic() < stop:
                if not answered:
                    await asyncio.sleep(0.01)
                    continue
                # Mostly the newest predictions (new feedback), some older ones (repeats
                # and conflicts, which write corrections).
                pick = answered[-1 - min(len(answered) - 1, int(rng.expovariate(0.05)))]
                body = {"id": pick, "label": rng.choice(classes)}
                try:
                    res = await client.post("/v1/feedback", json=body)
                except httpx.HTTPError:
                    feedback_codes[0] += 1
                    continue
                feedback_codes[res.status_code] += 1

        await asyncio.gather(
            *(predictor(k) for k in range(predict_clients)),
            *(feedback(k) for k in range(feedback_clients)),
        )
    return answered, predict_codes, feedback_codes


def lost_rows(metrics: str) -> float:
    """The server's count of prediction-log rows it dropped."""
    found = re.search(r"^fisheye_prediction_log_lost_rows_total (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else 0.0


def main(argv: list[str] | None = None) -> int:
    """Run the load and print what was answered, logged and lost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="Serve a tiny random model instead (more requests a second: more log writes).",
    )
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--predict-clients", type=int, default=8)
    parser.add_argument("--feedback-clients", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pythonpath", help="Serve FishEye from this source folder (compare two versions)."
    )
    args = parser.parse_args(argv)
    photos = load_photos(args.photos, 64)
    if not photos:
        raise SystemExit(f"no photos under {args.photos}")

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "log.db"
        model = make_bundle(Path(tmp) / "tiny") if args.tiny else args.model
        env = {"FISHEYE_PREDICTION_DB": str(db), "FISHEYE_PREDICTION_LOG": "true"}
        url, proc = start_server(model, Path(tmp) / "server.log", env, args.pythonpath)
        try:
            answered, predict_codes, feedback_codes = asyncio.run(
                load(
                    url,
                    photos,
                    args.seconds,
                    args.predict_clients,
                    args.feedback_clients,
                    args.seed,
                )
            )
            lost = lost_rows(httpx.get(f"{url}/metrics", timeout=30).text)
        finally:
            stop_server(proc)
        with sqlite3.connect(db) as conn:
            logged = {r[0] for r in conn.execute("SELECT id FROM predictions")}
            feedback_rows = conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        missing = [i for i in answered if i not in logged]
        print(
            f"{args.predict_clients} predict + {args.feedback_clients} feedback clients for "
            f"{args.seconds:g} s\n"
        )
        print(f"predict statuses:  {dict(sorted(predict_codes.items()))}")
        print(f"feedback statuses: {dict(sorted(feedback_codes.items()))}")
        print(f"feedback rows:     {feedback_rows}")
        print(f"server's lost-rows counter: {lost:g}")
        print(
            f"answered predictions: {len(answered)}, logged: {len(answered) - len(missing)}, "
            f"never logged: {len(missing)}"
        )
        server_log = (Path(tmp) / "server.log").read_text(errors="replace")
        locked = server_log.count("database is locked")
        print(f"'database is locked' in the server log: {locked}")
    return 0 if not missing else 1


if __name__ == "__main__":
    raise SystemExit(main())
