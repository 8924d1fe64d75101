"""FishEye against two peers serving the same model: a bare FastAPI app and BentoML.

    python -m benchmarks.peer_compare                       # from the repository root
    python -m benchmarks.peer_compare --rounds 3 --servers fisheye bare

Each server is started fresh as its own process on 127.0.0.1 for every round, in the order
FishEye, bare, BentoML, FishEye, bare, BentoML, ... (alternating, so a slow drift of the
machine hits every server alike), and measured the same way:

1. cold start: from process start to the first successful prediction;
2. warm-up (32 requests, not counted);
3. closed loop at concurrency 1, then 16 (benchmarks/serve_load.py's `run_level`, aiohttp
   client by default): p50/p95 latency, requests/s, errors;
4. accuracy: every photo of the labelled set once (8 in flight), label vs folder name;
5. memory after the load: RSS (and PSS) summed over the server's process tree;
then it is stopped. The load is a seeded random sample of real val photos (realistic class
mix); the accuracy set is all val photos (or --accuracy-photos of them, seeded).

The servers:
- fisheye: `fisheye serve --model M`, default settings (monitoring and the prediction log
  on; FISHEYE_PREDICTION_DB points at a fresh temporary file; no other FISHEYE_* set);
- bare: benchmarks/peers/bare_server.py (FastAPI + uvicorn, synchronous endpoint, no
  batching, no monitoring);
- bentoml: benchmarks/peers/bentoml_service.py (BentoML 1.4, adaptive batching), run with
  --bentoml-python (default: .venv-bench/bin/python, see benchmarks/peers/README.md).
Before anything is measured, the peers' tensors for a few real photos must equal
(np.array_equal) FishEye's `Predictor.prepare` output, in each peer's own interpreter;
the script stops otherwise.

The client runs on the same machine as the servers, so it takes CPU from them; its cost is
the same for every server. Results: one table per round and one of medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks.serve_load import (
    CLIENTS,
    DEFAULT_PHOTOS,
    photo_paths,
    predict_all,
    run_level,
)

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
SERVERS = ("fisheye", "bare", "bentoml")
DEFAULT_BENTOML_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
# Chosen from the two configurations tried (benchmarks/peers/README.md): max_batch:max_latency_ms
DEFAULT_BENTOML_CONFIG = "16:1000"
START_TIMEOUT_S = 180.0


@dataclass
class RoundResult:
    """One server's figures in one round."""

    server: str
    round: int
    cold_start_s: float = float("nan")
    c1_p50: float = float("nan")
    c1_p95: float = float("nan")
    c1_rps: float = float("nan")
    c16_p50: float = float("nan")
    c16_p95: float = float("nan")
    c16_rps: float = float("nan")
    errors: int = 0
    accuracy: float = float("nan")
    accuracy_n: int = 0
    rss_mib: float = float("nan")
    pss_mib: float = float("nan")
    processes: int = 0
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_memory(root: int) -> tuple[float, float, int]:
    """(RSS MiB, PSS MiB, processes) summed over a process tree.

    RSS counts pages shared between the processes once per process; PSS splits them.
    """
    rss = pss = 0
    pids = process_tree(root)
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key == "Rss":
                    rss += int(rest.split()[0])
                elif key == "Pss":
                    pss += int(rest.split()[0])
        except OSError:
            continue
    return rss / 1024, pss / 1024, len(pids)


class Server:
    """One server process (its own session, so its whole tree can be stopped)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path, port: int):
        self.name, self.cmd, self.env, self.log, self.port = name, cmd, env, log, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def start(self) -> None:
        self._fh = self.log.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=ROOT,
            env=self.env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_first_prediction(self, photo: tuple[str, bytes]) -> float:
        """Seconds from process start to the first 200 from /v1/predict."""
        deadline = self.started + START_TIMEOUT_S
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
                try:
                    res = client.post("/v1/predict", files={"file": photo})
                    if res.status_code == 200:
                        return time.perf_counter() - self.started
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} gave no prediction within {START_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 15 s (and to stragglers)."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the server leads its own group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(15)
        # Workers that outlive their parent (BentoML's) are in the same group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(5)
        self._fh.close()


def clean_env() -> dict[str, str]:
    """This environment without FISHEYE_*, PEER_* and BENTOML_* variables.

    ONNX Runtime's usage telemetry is off in every server, as FishEye turns it off for itself.
    """
    prefixes = ("FISHEYE_", "PEER_", "BENTOML_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return {"ORT_DISABLE_TELEMETRY": "1", **env}


def server_specs(args: argparse.Namespace, tmp: Path) -> dict[str, dict]:
    """Command line and environment of each server (the port is filled in per start)."""
    fisheye_cli = Path(sys.executable).with_name("fisheye")
    fisheye_cmd = (
        [str(fisheye_cli)]
        if fisheye_cli.exists()
        else [sys.executable, "-c", "from fisheye.cli import app; app()"]
    )
    max_batch, max_latency = args.bentoml_config.split(":")
    return {
        "fisheye": {
            "cmd": [*fisheye_cmd, "serve", "--model", str(args.model), "--port", "{port}"],
            "env": {
                "FISHEYE_PREDICTION_DB": str(tmp / "{run}" / "predictions.sqlite"),
                **dict(item.split("=", 1) for item in args.fisheye_env),
            },
        },
        "bare": {
            "cmd": [
                sys.executable,
                str(PEERS / "bare_server.py"),
                "--model",
                str(args.model),
                "--port",
                "{port}",
            ],
            "env": {},
        },
        "bentoml": {
            "cmd": [
                str(args.bentoml_python),
                "-m",
                "bentoml",
                "serve",
                "benchmarks.peers.bentoml_service:FishEyePeer",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
            ],
            "env": {
                "PEER_MODEL": str(args.model),
                "PEER_BENTO_MAX_BATCH": max_batch,
                "PEER_BENTO_MAX_LATENCY_MS": max_latency,
                "BENTOML_HOME": str(tmp / "bentoml-home"),
                "BENTOML_DO_NOT_TRACK": "True",
            },
        },
    }


def make_server(name: str, spec: dict, tmp: Path, run: str) -> Server:
    port = free_port()
    (tmp / run).mkdir(parents=True, exist_ok=True)
    fill = {"port": str(port), "run": run}
    cmd = [part.format(**fill) if "{" in part else part for part in spec["cmd"]]
    env = clean_env()
    env.update({k: v.format(**fill) for k, v in spec["env"].items()})
    return Server(name, cmd, env, tmp / run / "server.log", port)


# ---------------------------------------------------------------------------------------
# Checks


def check_tensors(args: argparse.Namespace, servers: list[str], tmp: Path) -> dict[str, dict]:
    """Stop unless every peer's interpreter makes FishEye's exact model inputs."""
    from fisheye.inference.options import RuntimeOptions
    from fisheye.inference.predictor import Predictor

    photos = photo_paths(args.photos, args.check_photos, seed=1)
    predictor = Predictor.from_dir(
        args.model, backend="onnx-int8", runtime=RuntimeOptions(threads=1)
    )
    reference = np.stack([predictor.prepare(p) for p in photos])
    pythons = {}
    if "bare" in servers:
        pythons["bare"] = sys.executable
    if "bentoml" in servers:
        pythons["bentoml"] = str(args.bentoml_python)
    versions = {}
    for name, python in pythons.items():
        out = tmp / f"tensors-{name}.npz"
        cmd = [python, str(PEERS / "common.py"), "--model", str(args.model), "--dump", str(out)]
        proc = subprocess.run(
            [*cmd, *map(str, photos)], capture_output=True, text=True, env=clean_env()
        )
        if proc.returncode != 0:
            raise SystemExit(f"the {name} peer's preprocessing failed:\n{proc.stderr}")
        versions[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        with np.load(out) as dump:
            for kind in ("from_bytes", "from_image"):
                x = dump[kind]
                if x.dtype != reference.dtype or not np.array_equal(x, reference):
                    diff = (
                        float(np.abs(x.astype(np.float64) - reference).max())
                        if x.shape == reference.shape
                        else f"shape {x.shape} vs {reference.shape}"
                    )
                    raise SystemExit(
                        f"PREPROCESSING MISMATCH: the {name} peer's tensors ({kind}) differ "
                        f"from fisheye's Predictor.prepare (max abs diff {diff}); refusing to "
                        "compare servers that do not see the same inputs."
                    )
    print(
        f"Preprocessing check: {len(photos)} val photos, peers' tensors np.array_equal to "
        f"fisheye's Predictor.prepare ({', '.join(pythons) or 'no peers'}): OK",
        flush=True,
    )
    return versions


# ---------------------------------------------------------------------------------------
# One measurement


def measure(
    server: Server,
    args: argparse.Namespace,
    load: list[tuple[str, bytes]],
    labelled: list[tuple[str, bytes, str]],
    round_no: int,
) -> RoundResult:
    """Start, measure and stop one server."""
    r = RoundResult(server.name, round_no)
    server.start()
    try:
        r.cold_start_s = server.wait_first_prediction(load[0])
        asyncio.run(predict_all(server.url, load[:32], concurrency=4, client=args.client))
        c1 = asyncio.run(
            run_level(server.url, load, 1, args.requests_c1, args.max_seconds, client=args.client)
        )
        c16 = asyncio.run(
            run_level(server.url, load, 16, args.requests_c16, args.max_seconds, client=args.client)
        )
        r.c1_p50, r.c1_p95, r.c1_rps = (
            c1.percentile(50),
            c1.percentile(95),
            c1.requests / c1.seconds,
        )
        r.c16_p50, r.c16_p95 = c16.percentile(50), c16.percentile(95)
        r.c16_rps = c16.requests / c16.seconds
        r.errors = c1.errors + c16.errors
        answers = asyncio.run(
            predict_all(
                server.url, [(n, d) for n, d, _ in labelled], concurrency=8, client=args.client
            )
        )
        correct = 0
        for (status, body), (_, _, label) in zip(answers, labelled, strict=True):
            if status != 200:
                r.errors += 1
                continue
            correct += json.loads(body).get("label") == label
        r.accuracy, r.accuracy_n = correct / len(labelled), len(labelled)
        r.rss_mib, r.pss_mib, r.processes = tree_memory(server.proc.pid)
    except Exception as exc:
        r.notes.append(f"{type(exc).__name__}: {exc}")
        print(f"  {server.name} round {round_no} FAILED: {exc} (log: {server.log})", flush=True)
    finally:
        server.stop()
    return r


# ---------------------------------------------------------------------------------------
# Tables


def fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


HEADER = (
    "| server | {what} | c1 p50 ms | c1 p95 ms | c16 p50 ms | c16 p95 ms | c16 req/s | errors "
    "| accuracy | RSS MiB (PSS) | cold start s |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def row(r: RoundResult, what: str) -> str:
    acc = "n/a" if r.accuracy != r.accuracy else f"{100 * r.accuracy:.2f}% of {r.accuracy_n}"
    return (
        f"| {r.server} | {what} | {fmt(r.c1_p50)} | {fmt(r.c1_p95)} | {fmt(r.c16_p50)} "
        f"| {fmt(r.c16_p95)} | {fmt(r.c16_rps)} | {r.errors} | {acc} "
        f"| {fmt(r.rss_mib, 0)} ({fmt(r.pss_mib, 0)}) | {fmt(r.cold_start_s, 2)} |"
    )


def median_result(name: str, rows: list[RoundResult]) -> RoundResult:
    """Per metric, the median over rounds (errors: the total)."""
    out = RoundResult(name, 0)
    for key in (
        "cold_start_s",
        "c1_p50",
        "c1_p95",
        "c1_rps",
        "c16_p50",
        "c16_p95",
        "c16_rps",
        "accuracy",
        "rss_mib",
        "pss_mib",
    ):
        values = [getattr(r, key) for r in rows if getattr(r, key) == getattr(r, key)]
        setattr(out, key, statistics.median(values) if values else float("nan"))
    out.errors = sum(r.errors for r in rows)
    out.accuracy_n = max((r.accuracy_n for r in rows), default=0)
    return out


# ---------------------------------------------------------------------------------------


def other_busy_processes(own: int) -> list[str]:
    """Processes (not this one) that used >20% of a core over the last second."""

    def ticks() -> dict[int, tuple[int, str]]:
        out = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == own:
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            out[int(entry.name)] = (int(fields[11]) + int(fields[12]), name)
        return out

    before = ticks()
    time.sleep(1.0)
    after = ticks()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (t, name) in after.items():
        if pid in before and (t - before[pid][0]) / hz > 0.2:
            busy.append(f"{pid} {name} ({100 * (t - before[pid][0]) / hz:.0f}%)")
    return busy


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, check the preprocessing, run the rounds and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--rounds", type=int, default=3, help="Rounds (at least 2 advised).")
    parser.add_argument("--requests-c1", type=int, default=500)
    parser.add_argument("--requests-c16", type=int, default=1500)
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="Cap per concurrency level."
    )
    parser.add_argument(
        "--load-photos", type=int, default=256, help="Distinct photos in the load (seeded)."
    )
    parser.add_argument(
        "--accuracy-photos",
        type=int,
        default=0,
        help="Labelled photos for the accuracy pass (seeded sample); 0: all of --photos.",
    )
    parser.add_argument("--check-photos", type=int, default=8)
    parser.add_argument("--client", choices=CLIENTS, default="aiohttp")
    parser.add_argument("--bentoml-python", type=Path, default=DEFAULT_BENTOML_PYTHON)
    parser.add_argument(
        "--bentoml-config",
        default=DEFAULT_BENTOML_CONFIG,
        help="BentoML batching as max_batch_size:max_latency_ms.",
    )
    parser.add_argument(
        "--fisheye-env",
        nargs="*",
        default=[],
        metavar="FISHEYE_KEY=VALUE",
        help="Extra settings for fisheye serve (default: none, i.e. its defaults), e.g. "
        "FISHEYE_MONITORING=false to see what monitoring costs.",
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the raw results.")
    parser.add_argument("--keep-logs", action="store_true", help="Keep the servers' logs.")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.requests_c1 > 10_000 or args.requests_c16 > 10_000:
        parser.error("keep it bounded: --rounds >= 1, --requests-c1/-c16 <= 10000")
    for item in args.fisheye_env:
        if not item.startswith("FISHEYE_") or "=" not in item:
            parser.error(f"--fisheye-env takes FISHEYE_KEY=VALUE items, not {item!r}")
    args.model = args.model.resolve()
    if "bentoml" in args.servers and not args.bentoml_python.exists():
        parser.error(
            f"no BentoML interpreter at {args.bentoml_python}: create it "
            "(benchmarks/peers/README.md) or pass --bentoml-python, or leave bentoml out"
        )

    load = [(p.name, p.read_bytes()) for p in photo_paths(args.photos, args.load_photos)]
    all_labelled = photo_paths(args.photos, 10**9, seed=2)
    if args.accuracy_photos:
        all_labelled = all_labelled[: args.accuracy_photos]
    labelled = [(p.name, p.read_bytes(), p.parent.name) for p in all_labelled]

    tmp = Path(tempfile.mkdtemp(prefix="peer-compare-"))
    versions = check_tensors(args, args.servers, tmp)
    specs = server_specs(args, tmp)
    busy = other_busy_processes(os.getpid())

    print("\n## Configuration\n")
    print(
        f"- machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"load average {os.getloadavg()[0]:.2f} at start"
        + (f"; other busy processes: {', '.join(busy)}" if busy else "")
    )
    print(f"- model: {args.model} (model.int8.onnx, ONNX Runtime CPU, 2 intra-op threads)")
    print(
        f"- load: {len(load)} distinct val photos (seeded sample of {args.photos}); "
        f"c1: {args.requests_c1} requests, c16: {args.requests_c16} requests (each capped at "
        f"{args.max_seconds:g} s) after 32 warm-up requests; client: {args.client}, same machine"
    )
    print(f"- accuracy: {len(labelled)} labelled val photos, label vs folder name, 8 in flight")
    print(f"- rounds: {args.rounds}, order {', '.join(args.servers)} per round; fresh process each")
    print(f"- commands ({{port}}: a free port per start; {{run}}: server-round; temp dir {tmp}):")
    for name in args.servers:
        spec = specs[name]
        env = " ".join(f"{k}={v}" for k, v in spec["env"].items())
        print(f"  - {name}: `{(env + ' ') if env else ''}{' '.join(spec['cmd'])}`")
        if name in versions:
            print(f"    - peer interpreter: {json.dumps(versions[name])}")
    if "bentoml" in args.servers:
        print(
            "  - BentoML: FishEyePeer (HTTP, workers=1, decode in a thread) -> FishModel "
            "(batchable, workers=1, threads=1), runner_connection max_requests=1e9, "
            "max_age=1e9 s; access log off"
        )
    print("- bare: uvicorn log level warning (no access log); fisheye: its default logging")
    print(flush=True)

    results: list[RoundResult] = []
    started = time.perf_counter()
    for round_no in range(1, args.rounds + 1):
        for name in args.servers:
            server = make_server(name, specs[name], tmp, f"{name}-{round_no}")
            print(f"round {round_no}: {name} ...", flush=True)
            r = measure(server, args, load, labelled, round_no)
            print("  " + row(r, str(round_no)), flush=True)
            results.append(r)
    elapsed = time.perf_counter() - started

    print(f"\n## Per round ({elapsed / 60:.1f} min)\n")
    print(HEADER.format(what="round"))
    for r in results:
        print(row(r, str(r.round)))
    print(f"\n## Median of {args.rounds} rounds (errors: total)\n")
    print(HEADER.format(what="rounds"))
    medians = {}
    for name in args.servers:
        medians[name] = median_result(name, [r for r in results if r.server == name])
        print(row(medians[name], str(args.rounds)))
    if "fisheye" in medians and "bare" in medians:
        fe, bare = medians["fisheye"], medians["bare"]
        print(
            f"\nFishEye vs bare (medians): c1 p50 {fe.c1_p50 / bare.c1_p50:.2f}x, "
            f"c16 req/s {fe.c16_rps / bare.c16_rps:.2f}x"
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"rounds": [asdict(r) for r in results], "versions": versions}, indent=1)
        )
    if not args.keep_logs:
        for path in sorted(tmp.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        tmp.rmdir()
    else:
        print(f"\nserver logs: {tmp}")
    failed = any(r.notes for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
