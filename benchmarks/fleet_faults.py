"""Three FishEye replicas behind HAProxy on one PostgreSQL store, under faults: what is lost.

    python -m benchmarks.fleet_faults                      # every scenario, 60 s each
    python -m benchmarks.fleet_faults --scenario kill --duration 30

Starts a throwaway PostgreSQL server (Debian's `postgresql`, fsync on: tests/helpers/
postgres.py) and, for each scenario, a fresh database and a fleet of `--replicas` `fisheye
serve` replicas of `--model` behind a real HAProxy running deploy/haproxy/haproxy.cfg
(tests/helpers/fleet.py; the benchmark adds only a response header naming the replica that
answered). `--clients` client threads post real validation photos through HAProxy for
`--duration` seconds; a third of the way in, the scenario's fault:

- kill:       replica-1 is killed with SIGKILL and started again at once (as a supervisor
              would); HAProxy takes it back once its /readyz answers.
- pg-restart: PostgreSQL is restarted (fast shutdown, then start: `pg_ctl restart`).
- pg-pause:   PostgreSQL is frozen for `--pause` seconds (SIGSTOP of the postmaster and
              every process it started, then SIGCONT). Just before it each replica is
              asked for the monitoring summary (so it holds a pooled read connection, as
              one asked in the last minutes does); a third of the way into the pause, for
              /readyz, the summary and feedback: what each answered, and how long it took.
- none:       no fault (the baseline).

After the load, feedback is posted through HAProxy for a sample of the predictions replica-1
made before the fault (after its restart, in the kill scenario), then every replica is
stopped with SIGTERM (each writes what its log still holds) and the store is counted against
the 200 answers the clients received: rows missing, rows no client saw, duplicate ids. One
table sums the scenarios up; the store's bytes per row are printed for sizing it.
"""

from __future__ import annotations

import argparse
import inspect
import os
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from benchmarks.fleet_settings import per_replica_settings
from fisheye.monitoring.prediction_log.writer import MAX_BATCH, PredictionLog
from tests.helpers.client_load import ClientLoad, Photo, Request, failures, load_photos
from tests.helpers.fleet import SERVED_BY_LINE, Fleet, run_fleet, wait_until
from tests.helpers.paths import DEFAULT_MODEL
from tests.helpers.postgres import PostgresServer, fresh_database, postgres_server

SCENARIOS = ("kill", "pg-restart", "pg-pause", "none")
VICTIM = "replica-1"
BACK_UP_S = 180.0  # safety net for a restarted replica or store to answer again
# The tables FishEye writes; their sizes over the predictions' count give bytes per row.
STORE_TABLES = (
    "predictions",
    "minute_counts",
    "minute_latency",
    "feedback",
    "feedback_totals",
    "feedback_corrections",
    "drift",
    "shadow",
)


@dataclass
class Outcome:
    """What one scenario's run gave."""

    scenario: str
    requests: list[Request]
    seconds: float
    events: list[tuple[float, str]]
    haproxy: dict[str, int]
    feedback: Counter[str]
    watch: LogWatch
    stored: dict[str, str] = field(default_factory=dict)  # id: replica, as the store has it
    duplicates: int = 0
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    bytes_per_row: dict[str, float] = field(default_factory=dict)
    probes: list[Probe] = field(default_factory=list)

    @property
    def answered(self) -> list[Request]:
        return [r for r in self.requests if r.status == 200]

    def missing(self, replica: str | None = None) -> list[Request]:
        """200 answers (of `replica`, or all) whose row is not in the store."""
        return [
            r
            for r in self.answered
            if r.id not in self.stored and (replica is None or r.replica == replica)
        ]

    def extra(self) -> int:
        """Rows in the store that no client received as an answer."""
        return len(set(self.stored) - {r.id for r in self.answered})


@dataclass
class Probe:
    """One request to one replica while the store was frozen."""

    replica: str
    route: str
    sent: float
    seconds: float
    answer: str


class PauseProbes:
    """Asks every replica, all at once, for /readyz, the summary and feedback (on an id no
    replica made: the store must be read to answer it)."""

    CALLS = (
        ("/readyz", "GET", None),
        ("/v1/monitoring/summary", "GET", None),
        ("/v1/feedback", "POST", {"id": "00000000-0000-4000-8000-000000000000", "label": "other"}),
    )

    def __init__(self, fleet: Fleet, clock) -> None:
        self.fleet, self.clock = fleet, clock
        self.probes: list[Probe] = []
        self._threads: list[threading.Thread] = []
        for server in fleet.replicas.values():  # each replica's read pool holds a connection
            httpx.get(f"{server.url}/v1/monitoring/summary", timeout=30).raise_for_status()

    def start(self, delay_s: float) -> None:
        """Send every request `delay_s` from now, each in its own thread."""
        self._threads = [
            threading.Thread(target=self._run, args=(name, server.url, call, delay_s), daemon=True)
            for name, server in self.fleet.replicas.items()
            for call in self.CALLS
        ]
        for t in self._threads:
            t.start()

    def _run(self, name: str, url: str, call, delay_s: float) -> None:
        route, method, body = call
        time.sleep(delay_s)
        sent = self.clock()
        try:
            res = httpx.request(method, f"{url}{route}", json=body, timeout=BACK_UP_S)
            detail = res.json().get("prediction_log") or res.json().get("error", "")
            answer = f"{res.status_code} {detail}".strip()
        except (httpx.TransportError, ValueError) as exc:
            answer = type(exc).__name__
        self.probes.append(Probe(name, route, sent, self.clock() - sent, answer))

    def join(self) -> list[Probe]:
        for t in self._threads:
            t.join()
        order = [route for route, _, _ in self.CALLS]
        return sorted(self.probes, key=lambda p: (p.replica, order.index(p.route)))


class LogWatch:
    """Polls every replica's /metrics while the load runs: when each said its prediction
    log was degraded (the store unreachable: rows going to the spool), and the rows each
    counted as lost."""

    def __init__(self, fleet: Fleet, clock, every_s: float = 0.5) -> None:
        self.fleet, self.clock, self.every_s = fleet, clock, every_s
        self.degraded: dict[str, list[float]] = {}
        self.lost: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LogWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            # A replica killed, or starting again, is left out.
            for name, values in self.fleet.metrics().items():
                if values.get("fisheye_prediction_log_degraded"):
                    self.degraded.setdefault(name, []).append(self.clock())
                # A counter starts again at 0 in a restarted replica: keep the largest seen.
                lost = values.get("fisheye_prediction_log_lost_rows_total", 0.0)
                self.lost[name] = max(self.lost.get(name, 0.0), lost)

    def summary(self) -> str:
        spans = [f"{n} t={min(t):.1f}-{max(t):.1f} s" for n, t in sorted(self.degraded.items())]
        return ", ".join(spans) or "never"


def fault_action(
    scenario: str, fleet: Fleet, store: PostgresServer, pause_s: float, mark, clock
) -> list[Probe]:
    """Apply `scenario`'s fault now; `mark(text)` notes each step's time. Returns the
    requests made to the replicas during a pause."""
    if scenario == "kill":
        victim = fleet.replicas[VICTIM]
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        mark(f"{VICTIM} killed (SIGKILL); started again")
        fleet.replicas.restart(VICTIM, timeout=BACK_UP_S)
        mark(f"{VICTIM} ready again (/readyz 200)")
        wait_until(
            lambda: fleet.balancer.server_states()[VICTIM] == "UP",
            BACK_UP_S,
            f"haproxy to take {VICTIM} back",
        )
        mark(f"{VICTIM} UP in haproxy")
    elif scenario == "pg-restart":
        mark("PostgreSQL stopping (fast shutdown)")
        store.restart()
        mark("PostgreSQL accepting connections again")
    elif scenario == "pg-pause":
        probes = PauseProbes(fleet, clock)
        with store.paused():
            mark(f"PostgreSQL paused (SIGSTOP) for {pause_s:g} s")
            probes.start(pause_s / 3)
            time.sleep(pause_s)
        mark("PostgreSQL resumed (SIGCONT)")
        return probes.join()
    return []


def post_feedback(url: str, sample: list[Request]) -> Counter[str]:
    """Feedback (each photo's true class) on `sample` through `url`: answers by code."""
    codes: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=60) as client:
        for r in sample:
            try:
                res = client.post("/v1/feedback", json={"id": r.id, "label": r.label})
                codes[str(res.status_code)] += 1
            except httpx.TransportError as exc:
                codes[type(exc).__name__] += 1
    return codes


def stored_ids(url: str, ids: list[str]) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM predictions WHERE id = ANY(%s)", (ids,))}


def haproxy_counters(fleet: Fleet) -> dict[str, int]:
    """The backend's retries, redispatches and errors, as HAProxy counted them."""
    row = fleet.balancer.stats()["BACKEND"]
    names = {"wretr": "retries", "wredis": "redispatches", "econ": "connection errors"}
    names |= {"eresp": "response errors", "hrsp_5xx": "5xx answers"}
    return {label: int(row.get(key) or 0) for key, label in names.items()}


def run_scenario(
    scenario: str, store: PostgresServer, photos: list[Photo], work: Path, args
) -> Outcome:
    db_url = fresh_database(store, f"faults_{scenario.replace('-', '_')}")
    workdir = work / scenario
    workdir.mkdir(exist_ok=True)
    settings = per_replica_settings(args.replicas)
    fault_at = args.duration * args.fault_at
    events: list[tuple[float, str]] = []
    with run_fleet(
        args.model,
        db_url,
        workdir,
        replicas=args.replicas,
        backend_lines=(SERVED_BY_LINE,),
        **settings,
    ) as fleet:
        load = ClientLoad(fleet.balancer.url, photos, args.clients, args.duration).start()

        def mark(text: str) -> None:
            events.append((load.elapsed(), text))

        with LogWatch(fleet, load.elapsed) as watch:
            time.sleep(max(0.0, fault_at - load.elapsed()))
            probes = fault_action(scenario, fleet, store, args.pause, mark, load.elapsed)
            requests = load.join()
        seconds = load.ended - load.started
        counters = haproxy_counters(fleet)
        # Feedback on the victim's predictions from before the fault, those in the store
        # (a row the kill lost cannot take feedback: it counts as missing instead).
        before = [r for r in requests if r.status == 200 and r.replica == VICTIM]
        before = [r for r in before if r.sent + r.took < fault_at]
        present = stored_ids(db_url, [r.id for r in before])
        sample = [r for r in before if r.id in present]
        sample = random.Random(0).sample(sample, min(args.feedback, len(sample)))
        feedback = post_feedback(fleet.balancer.url, sample)
    # Leaving run_fleet stopped every replica with SIGTERM and waited for it.
    outcome = Outcome(scenario, requests, seconds, events, counters, feedback, watch)
    outcome.probes = probes
    outcome.exit_codes = {n: s.process.returncode for n, s in fleet.replicas.items()}
    count_store(db_url, outcome)
    return outcome


def count_store(db_url: str, outcome: Outcome) -> None:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT id, replica FROM predictions").fetchall()
        sizes = {
            t: conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0]
            for t in STORE_TABLES
        }
    outcome.stored = dict(rows)
    outcome.duplicates = sum(n - 1 for n in Counter(i for i, _ in rows).values() if n > 1)
    n = max(1, len(rows))
    outcome.bytes_per_row = {
        "predictions": sizes["predictions"] / n,
        "all tables": sum(sizes.values()) / n,
    }


def print_details(o: Outcome, args) -> None:
    print(f"\n== {o.scenario}: {len(o.requests)} requests in {o.seconds:.1f} s")
    for t, text in o.events:
        print(f"   t={t:6.1f} s  {text}")
    failed = [r for r in o.requests if r.status != 200]
    if failed:
        when = ", ".join(f"{r.sent:.1f}" for r in failed[:12])
        more = f" (+{len(failed) - 12} more)" if len(failed) > 12 else ""
        print(f"   client-visible failures: {dict(failures(o.requests))}, sent at t={when}{more}")
    else:
        print("   client-visible failures: none")
    print(f"   haproxy backend counters: {o.haproxy}")
    print(f"   prediction log degraded (store unreachable, rows spooled): {o.watch.summary()}")
    print(f"   rows the replicas counted as lost: {dict(sorted(o.watch.lost.items()))}")
    for p in o.probes:
        print(
            f"   during the pause, {p.replica} {p.route} (sent t={p.sent:.1f} s): {p.answer} "
            f"after {p.seconds:.2f} s"
        )
    slowest = max((r.took for r in o.answered), default=0.0)
    print(f"   slowest 200 answer: {slowest:.2f} s")
    per_replica = Counter(r.replica for r in o.answered)
    print(f"   200 answers by replica: {dict(sorted(per_replica.items(), key=str))}")
    for name in sorted(per_replica, key=str):
        missing = o.missing(name)
        if missing:
            last = max(r.sent for r in missing)
            print(f"   {name}: {len(missing)} answered rows missing (sent up to t={last:.1f} s)")
    print(
        "   replicas' exit codes at the end (-15: stopped by SIGTERM, after the graceful "
        f"stop; -9: killed, the stop took too long): {o.exit_codes}"
    )
    if o.scenario == "kill":
        victim = [r for r in o.answered if r.replica == VICTIM]
        fault_at = args.duration * args.fault_at
        rate = sum(r.sent < fault_at for r in victim) / fault_at
        linger = inspect.signature(PredictionLog).parameters["linger_s"].default
        print(
            f"   SIGKILL: {len(o.missing(VICTIM))} rows lost; the writer's batch is at most "
            f"{MAX_BATCH} rows gathered for {linger * 1000:.0f} ms (at {VICTIM}'s "
            f"{rate:.1f} answers/s, {rate * linger:.1f} rows a batch)"
        )


def print_table(outcomes: list[Outcome]) -> None:
    header = (
        "| scenario | requests | client failures | 200 answers | rows stored | rows missing | "
        "rows no client saw | duplicate ids | feedback accepted (replica-1's) |"
    )
    print("\n" + header)
    print("|" + "---|" * 9)
    for o in outcomes:
        answered = o.answered
        stored = sum(r.id in o.stored for r in answered)
        fb_total = sum(o.feedback.values())
        print(
            f"| {o.scenario} | {len(o.requests)} | {sum(failures(o.requests).values())} | "
            f"{len(answered)} | {stored} | {len(o.missing())} | {o.extra()} | {o.duplicates} | "
            f"{o.feedback.get('200', 0)}/{fb_total} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--fault-at", type=float, default=1 / 3, help="share of the run")
    parser.add_argument("--pause", type=float, default=10.0, help="pg-pause: seconds frozen")
    parser.add_argument("--feedback", type=int, default=100, help="feedback sample size")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument(
        "--keep", type=Path, help="keep the logs (replicas', HAProxy's) in this folder"
    )
    args = parser.parse_args()
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    photos = load_photos(args.photos)
    load_avg = os.getloadavg()
    print(
        f"{args.replicas} replicas of {args.model} behind HAProxy, one PostgreSQL store; "
        f"{args.clients} clients, {args.duration:g} s per scenario, fault at "
        f"{args.duration * args.fault_at:.0f} s; {os.cpu_count()} cores, load average "
        f"{load_avg[0]:.2f} at the start; per replica: {per_replica_settings(args.replicas)}"
    )
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp, postgres_server(durable=True) as store:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for scenario in scenarios:
            outcome = run_scenario(scenario, store, photos, work, args)
            print_details(outcome, args)
            outcomes.append(outcome)
    print_table(outcomes)
    sizes = outcomes[-1].bytes_per_row
    print(
        f"\nstore size per prediction row ({outcomes[-1].scenario}, "
        f"{len(outcomes[-1].stored)} rows): predictions table with its indexes "
        f"{sizes['predictions']:.0f} B, every FishEye table {sizes['all tables']:.0f} B"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
