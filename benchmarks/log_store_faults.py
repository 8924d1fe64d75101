"""Two replicas sharing one PostgreSQL prediction store, under faults: what is lost.

    python benchmarks/log_store_faults.py --seconds 24 --clients 8 --outage 10

Starts a throwaway PostgreSQL server (Debian's `postgresql` package, fsync on) and, for each
scenario, two `fisheye serve` replicas (a tiny random model, FISHEYE_THREADS=1) on a fresh
database of it. `--clients` clients post photos to the replicas in turn for `--seconds` and
keep the ids of the predictions answered (200). Scenarios:

- sigkill: replica A is killed with SIGKILL halfway; B is stopped with SIGTERM at the end.
- outage: the store refuses every connection (the replicas' connections are ended, and the
  database takes none) for `--outage` seconds halfway; both replicas are stopped with
  SIGTERM at the end.

Then it counts, per replica, the answered predictions missing from the store (lost), rows
in the store that no client saw answered (extra), and stored ids seen twice (duplicates);
and it sends feedback through replica B on predictions replica A made before the fault.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg

from benchmarks.local_server import start_server, stop_server
from tests.helpers.bundles import make_bundle
from tests.helpers.photos import encode, photo
from tests.helpers.postgres import fresh_database, postgres_server


async def load(
    urls: dict[str, str], seconds: float, clients: int, fault_at: float, fault
) -> tuple[dict[str, list[str]], Counter[str]]:
    """Post photos to the replicas in turn; call `fault()` (in a thread) at `fault_at` s."""
    photos = [encode(photo(i), "PNG") for i in range(8)]
    answered: dict[str, list[str]] = {name: [] for name in urls}
    codes: Counter[str] = Counter()
    names = sorted(urls)
    async with httpx.AsyncClient(timeout=30) as client:
        start = time.monotonic()
        stop = start + seconds

        async def poster(k: int) -> None:
            i = k
            while time.monotonic() < stop:
                name = names[i % len(names)]
                i += 1
                try:
                    res = await client.post(
                        f"{urls[name]}/v1/predict", files={"file": ("p.png", photos[i % 8])}
                    )
                except httpx.HTTPError:
                    codes[f"{name}: connection error"] += 1
                    await asyncio.sleep(0.01)
                    continue
                codes[f"{name}: {res.status_code}"] += 1
                if res.status_code == 200:
                    answered[name].append(res.json()["id"])

        async def fault_later() -> None:
            await asyncio.sleep(fault_at)
            await asyncio.to_thread(fault)

        await asyncio.gather(*(poster(k) for k in range(clients)), fault_later())
    return answered, codes


def block(admin_url: str, db: str) -> None:
    """The store refuses the replicas: no new connections, and theirs ended."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,)
        )


def unblock(admin_url: str, db: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')


def count(url: str, answered: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, replica FROM predictions").fetchall()
    stored = Counter(i for i, _ in rows)
    by_replica: dict[str, set[str]] = {}
    for i, replica in rows:
        by_replica.setdefault(replica, set()).add(i)
    seen = {i for ids in answered.values() for i in ids}
    out = {}
    for name, ids in answered.items():
        mine = by_replica.get(name, set())
        out[name] = {
            "answered": len(ids),
            "stored": len(mine),
            "lost": len(set(ids) - mine),
            "extra": len(mine - seen),
        }
    out["all"] = {"duplicates": sum(n - 1 for n in stored.values() if n > 1)}
    return out


def feedback_across(url_b: str, ids_a: list[str]) -> Counter[int]:
    codes: Counter[int] = Counter()
    with httpx.Client(timeout=30) as client:
        for i in ids_a:
            codes[
                client.post(f"{url_b}/v1/feedback", json={"id": i, "label": "Trout"}).status_code
            ] += 1
    return codes


def scenario(name: str, server, model: Path, tmp: Path, args) -> None:
    db = f"faults_{name}"
    url = fresh_database(server, db)
    procs, urls = {}, {}
    for replica in ("a", "b"):
        env = {
            "FISHEYE_PREDICTION_DB": url,
            "FISHEYE_REPLICA_ID": replica,
            "FISHEYE_LOG_SPOOL": str(tmp / f"{name}-spool-{replica}.jsonl"),
            "FISHEYE_THREADS": "1",
        }
        urls[replica], procs[replica] = start_server(model, tmp / f"{name}-{replica}.log", env)

    def fault() -> None:
        if name == "sigkill":
            procs["a"].send_signal(signal.SIGKILL)
            procs["a"].wait()
        else:
            block(server.url, db)
            time.sleep(args.outage)
            unblock(server.url, db)

    answered, codes = asyncio.run(load(urls, args.seconds, args.clients, args.seconds / 2, fault))
    # Feedback through b on a's earliest predictions (made before the fault).
    fb = feedback_across(urls["b"], answered["a"][:50])
    for proc in procs.values():
        if proc.poll() is None:
            stop_server(proc)  # SIGTERM
    figures = count(url, answered)
    print(
        f"\n== {name} ({args.clients} clients, {args.seconds:g} s"
        + (f", store refused for {args.outage:g} s" if name == "outage" else "")
        + ")"
    )
    print(f"client answers: {dict(sorted(codes.items()))}")
    for replica in ("a", "b"):
        f = figures[replica]
        how = "SIGKILL" if (name == "sigkill" and replica == "a") else "SIGTERM"
        print(
            f"replica {replica} ({how}): answered {f['answered']}, stored {f['stored']}, "
            f"lost {f['lost']}, extra {f['extra']}"
        )
    print(f"duplicate ids in the store: {figures['all']['duplicates']}")
    print(f"feedback through b on a's first 50 predictions: {dict(fb)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=24.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--outage", type=float, default=10.0)
    parser.add_argument("--scenarios", nargs="+", default=["sigkill", "outage"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir, postgres_server(durable=True) as server:
        tmp = Path(tmp_dir)
        model = make_bundle(tmp / "tiny")
        for name in args.scenarios:
            scenario(name, server, model, tmp, args)


if __name__ == "__main__":
    main()
