"""Requests/s through HAProxy: three FishEye replicas against one, on the same host.

    python -m benchmarks.fleet_throughput                  # 16 clients, 30 s, 2 rounds
    python -m benchmarks.fleet_throughput --configs 1 3 3:default --rounds 3

Each configuration is N `fisheye serve` replicas of `--model` behind the same HAProxy
config (deploy/haproxy/haproxy.cfg) logging to the same PostgreSQL store (Debian's
`postgresql`, fsync on; a fresh database per run), loaded by the same `--clients` client
threads posting real validation photos. "N" gives each replica its share of the host's cores
(benchmarks/fleet_settings.py: FISHEYE_THREADS, FISHEYE_MODEL_WORKERS and
FISHEYE_DECODE_WORKERS = cores / N, at least 1); "N:default" leaves every replica at
FishEye's defaults (each sized for the whole host); "N:T,M,D" sets the three explicitly.

After `--warmup` seconds the 200 answers of `--duration` seconds are counted, with the CPU
time each part used meanwhile: the replicas (with their decode processes), PostgreSQL,
HAProxy and the clients (this process), and the host's cores that other work used. On a
shared host req/s moves with that other work; CPU time per request does not, so the table
also gives req/s per core (1000 / CPU ms per request, every part included). The
configurations run in turn, in ABBA order over `--rounds`; the table gives the median of
each, and ratios to the first configuration.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.fleet_settings import per_replica_settings
from fisheye.serving.settings import ServeSettings
from tests.helpers.client_load import ClientLoad, failures, load_photos
from tests.helpers.fleet import Fleet, run_fleet
from tests.helpers.paths import DEFAULT_MODEL
from tests.helpers.postgres import PostgresServer, fresh_database, postgres_server
from tests.helpers.process_tree import tree_cpu_s


@dataclass
class Run:
    config: str
    rate: float  # 200 answers per second
    failed: int
    cpu_ms: dict[str, float]  # CPU ms per answered request, by part
    cores: dict[str, float]  # the host's cores in use during the run: ours, others', idle
    model: dict[str, float]  # the replicas' batches, model time and drift tests


SETTING_NAMES = ("FISHEYE_THREADS", "FISHEYE_MODEL_WORKERS", "FISHEYE_DECODE_WORKERS")


def parse_config(text: str) -> tuple[int, dict[str, str]]:
    """A configuration's replicas and their settings: "3" (each its share of the cores),
    "3:default" (FishEye's defaults), "3:1,1,2" (FISHEYE_THREADS, FISHEYE_MODEL_WORKERS,
    FISHEYE_DECODE_WORKERS)."""
    n, _, mode = text.partition(":")
    values = mode.split(",")
    if not n.isdigit() or int(n) < 1:
        raise SystemExit(f"--configs {text!r}: expected N, N:default or N:T,M,D")
    if mode == "":
        return int(n), per_replica_settings(int(n))
    if mode == "default":  # the fleet helper pins one intra-op thread unless told otherwise
        return int(n), {"FISHEYE_THREADS": str(ServeSettings.model_fields["threads"].default)}
    if len(values) != 3 or not all(v.isdigit() for v in values):
        raise SystemExit(f"--configs {text!r}: expected N, N:default or N:T,M,D")
    return int(n), dict(zip(SETTING_NAMES, values, strict=True))


def describe(settings: dict[str, str]) -> str:
    if set(settings) == {"FISHEYE_THREADS"}:
        return "defaults"
    return ", ".join(f"{k.removeprefix('FISHEYE_')}={v}" for k, v in settings.items())


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def host_cpu_s() -> tuple[float, float]:
    """The host's busy and idle CPU seconds since boot, all cores together (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / TICK, idle / TICK


TICK = os.sysconf("SC_CLK_TCK")
OURS = ("replicas", "postgres", "haproxy", "clients")


def measure(config: str, store: PostgresServer, photos, work: Path, args, index: int) -> Run:
    replicas, settings = parse_config(config)
    db_url = fresh_database(store, f"throughput_{index}")
    workdir = work / f"run-{index}"
    workdir.mkdir()
    with run_fleet(args.model, db_url, workdir, replicas=replicas, **settings) as fleet:
        total = args.warmup + args.duration
        load = ClientLoad(fleet.balancer.url, photos, args.clients, total).start()
        time.sleep(args.warmup)
        parts = {
            "replicas": lambda: sum(tree_cpu_s(s.process.pid) for s in fleet.replicas.values()),
            "postgres": lambda: tree_cpu_s(store.process.pid),
            "haproxy": lambda: tree_cpu_s(fleet.balancer.process.pid),
            "clients": own_cpu_s,
            "host busy": lambda: host_cpu_s()[0],
            "host idle": lambda: host_cpu_s()[1],
        }
        cpu_before = {name: read() for name, read in parts.items()}
        metrics_before = fleet_sums(fleet)
        time.sleep(max(0.0, total - load.elapsed()))
        cpu_after = {name: read() for name, read in parts.items()}
        metrics = {k: v - metrics_before.get(k, 0.0) for k, v in fleet_sums(fleet).items()}
        requests = load.join()
    window = [r for r in requests if r.sent >= args.warmup]
    answered = sum(r.status == 200 for r in window)
    cpu_s = {n: cpu_after[n] - cpu_before[n] for n in parts}
    ours = sum(cpu_s[n] for n in OURS)
    cores = {
        "fleet and clients": ours / args.duration,
        "others": max(0.0, cpu_s["host busy"] - ours) / args.duration,
        "idle": cpu_s["host idle"] / args.duration,
    }
    cpu_ms = {n: 1000 * cpu_s[n] / max(1, answered) for n in OURS}
    photos_run = metrics.get("fisheye_batch_size_sum", 0.0)
    model = {
        "photos per model call": photos_run / max(1.0, metrics.get("fisheye_batch_size_count", 0)),
        "model ms per photo": 1000
        * metrics.get("fisheye_batch_inference_seconds_sum", 0.0)
        / max(1.0, photos_run),
        "drift tests": metrics.get("fisheye_drift_tests_total", 0.0),
    }
    rate = answered / args.duration
    return Run(config, rate, sum(failures(window).values()), cpu_ms, cores, model)


def fleet_sums(fleet: Fleet) -> dict[str, float]:
    """The replicas' model and drift counters, summed over the fleet."""
    names = ("fisheye_batch_size_sum", "fisheye_batch_size_count")
    names += ("fisheye_batch_inference_seconds_sum", "fisheye_drift_tests_total")
    sums: dict[str, float] = dict.fromkeys(names, 0.0)
    for values in fleet.metrics().values():
        for name in names:
            sums[name] += values.get(name, 0.0)
    return sums


def abba(configs: list[str], rounds: int) -> list[str]:
    """Run order: A B, then B A, ... (a drift in the host's load hits each alike)."""
    order: list[str] = []
    for r in range(rounds):
        order += configs if r % 2 == 0 else configs[::-1]
    return order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["1", "3"])
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds not counted")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--photos", type=int, default=256)
    args = parser.parse_args()
    for config in args.configs:
        parse_config(config)  # a typo fails now, not after the first runs
    photos = load_photos(args.photos)
    print(
        f"{args.model} behind HAProxy, one PostgreSQL store; {args.clients} clients, "
        f"{args.duration:g} s measured after {args.warmup:g} s; {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f} at the start"
    )
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp, postgres_server(durable=True) as store:
        for i, config in enumerate(abba(args.configs, args.rounds)):
            run = measure(config, store, photos, Path(tmp), args, i)
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in run.cpu_ms.items())
            cores = ", ".join(f"{k} {v:.2f}" for k, v in run.cores.items())
            model = ", ".join(f"{k} {v:.1f}" for k, v in run.model.items())
            print(
                f"  {config:>10}: {run.rate:6.1f} req/s, {run.failed} failed; CPU ms per "
                f"request: {cpu}; {model}; cores: {cores}; load average "
                f"{os.getloadavg()[0]:.2f}"
            )
            runs.append(run)
    print(
        "\n| replicas | settings per replica | req/s (median) | runs | ratio | "
        "CPU ms/request: replicas | PostgreSQL | HAProxy | clients | req/s per core | ratio |"
    )
    print("|" + "---|" * 11)
    first = first_per_core = None
    for config in args.configs:
        mine = [r for r in runs if r.config == config]
        rate = statistics.median(r.rate for r in mine)
        cpu = {k: statistics.median(r.cpu_ms[k] for r in mine) for k in OURS}
        # What one core gives at this CPU cost per request (the clients' share included):
        # a figure the other work on the host does not move.
        per_core = 1000 / sum(cpu.values())
        first, first_per_core = first or rate, first_per_core or per_core
        replicas, settings = parse_config(config)
        print(
            f"| {replicas} | {describe(settings)} | {rate:.1f} | "
            f"{', '.join(f'{r.rate:.1f}' for r in mine)} | {rate / first:.2f} | "
            f"{cpu['replicas']:.1f} | {cpu['postgres']:.1f} | {cpu['haproxy']:.1f} | "
            f"{cpu['clients']:.1f} | {per_core:.1f} | {per_core / first_per_core:.2f} |"
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
