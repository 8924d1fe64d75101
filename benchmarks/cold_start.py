"""Cold start: seconds from process start to the first answered prediction.

    python -m benchmarks.cold_start                          # from the repository root
    python -m benchmarks.cold_start --runs 5 --servers fisheye bare

Starts each server --runs times as a fresh process on 127.0.0.1 (alternating: fisheye,
bare, fisheye, bare, ... so a slow drift of the machine hits both alike), after one
uncounted start of each that warms the page cache, and measures from `Popen` to:

- listening: the first HTTP answer of any status (imports done, app built, port bound);
- first prediction: the first 200 from `POST /v1/predict` with a real val photo;

and the server's CPU time (user + system, all threads) at that moment, which a loaded
machine changes less than the wall-clock figures.

The client polls every --poll-ms (default 10 ms). The servers are the same two as
benchmarks/peer_compare.py runs (its `server_specs`): `fisheye serve --model M` with its
default settings (monitoring and the prediction log on, a fresh SQLite file per start),
and benchmarks/peers/bare_server.py (FastAPI + uvicorn + ONNX Runtime over the same
model.int8.onnx with the same preprocessing, no monitoring). The first answer of fisheye
is checked to carry an OOD score (the monitored answer, not a degraded one).

Every server runs from compiled bytecode, as an installed package does (pip compiles it at
install time): the servers get `PYTHONPYCACHEPREFIX` set to a folder of this run, the
warm-up start writes the bytecode there, and the counted starts read it (a checkout run
with `PYTHONDONTWRITEBYTECODE=1` would otherwise compile FishEye's modules at every start).

`--baseline-src DIR` adds a server `fisheye-baseline`: the same `fisheye serve` running the
code of another checkout's `src` (e.g. the main branch), started in turn with the others,
for an A/B comparison on a shared machine.

Then one more start of each with `PYTHONPROFILEIMPORTTIME=1` (not counted: it slows
imports) prints the modules with the largest cumulative import time in the serving process,
and (`--timeline`, on by default) one more start of fisheye (and of fisheye-baseline) with
a few probes added prints
when each step of its start-up happened: the imports, the model's load, uvicorn listening,
and the first request.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.peer_compare import SERVERS, Server, make_server, server_specs
from benchmarks.serve_load import DEFAULT_PHOTOS, photo_paths

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0
COLD_SERVERS = tuple(s for s in SERVERS if s != "bentoml")


@dataclass
class Start:
    """One start of one server."""

    server: str
    listening_s: float = float("nan")
    first_prediction_s: float = float("nan")
    cpu_s: float = float("nan")  # the server's user + system CPU time at its first answer
    answer: dict = field(default_factory=dict)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def first_prediction(server: Server, photo: tuple[str, bytes], poll_s: float) -> Start:
    """Poll `POST /v1/predict` until it answers 200; note when anything first answered."""
    out = Start(server.name)
    deadline = server.started + START_TIMEOUT_S
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while time.perf_counter() < deadline:
            if server.proc is not None and server.proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited with {server.proc.returncode}")
            try:
                res = client.post("/v1/predict", files={"file": photo})
            except httpx.HTTPError:
                time.sleep(poll_s)
                continue
            now = time.perf_counter() - server.started
            if out.listening_s != out.listening_s:
                out.listening_s = now
            if res.status_code == 200:
                out.first_prediction_s = now
                out.cpu_s = cpu_seconds(server.proc.pid) if server.proc is not None else out.cpu_s
                out.answer = res.json()
                return out
            time.sleep(poll_s)
    raise RuntimeError(f"{server.name} gave no prediction within {START_TIMEOUT_S:.0f} s")


def start_once(
    name: str, spec: dict, tmp: Path, run: str, photo: tuple[str, bytes], poll_s: float
) -> tuple[Start, Server]:
    """Start one server, wait for its first prediction, stop it."""
    server = make_server(name, spec, tmp, run)
    server.start()
    try:
        return first_prediction(server, photo, poll_s), server
    finally:
        server.stop()


# Run as `python probes.py serve ...` (a file holding this text): the `fisheye` command with
# probes that print "timeline <seconds since the client started the process> <step>" to
# stderr. A probe is added when its module is first imported: the import order is the
# command's own.
TIMELINE = r"""
import importlib.abc, importlib.machinery, os, sys, threading, time
T0 = float(os.environ["COLD_START_T0"])

def mark(step):
    t = time.time() - T0
    name = threading.current_thread().name
    os.write(2, f"timeline {t:.3f} {name}: {step}\n".encode())  # one write: lines stay whole

def wrap(owner, attr, label):
    fn = getattr(owner, attr)
    if hasattr(fn, "__code__") and fn.__code__.co_flags & 0x80:  # a coroutine function
        async def probe(*a, **k):
            mark(label + " begins")
            try:
                return await fn(*a, **k)
            finally:
                mark(label + " ends")
    else:
        def probe(*a, **k):
            mark(label + " begins")
            try:
                return fn(*a, **k)
            finally:
                mark(label + " ends")
    setattr(owner, attr, probe)

def once(owner, attr, label):
    # probes the first two calls only (the first request's, and the next)
    fn = getattr(owner, attr)
    left = [2]
    async def probe(*a, **k):
        if not left[0]:
            return await fn(*a, **k)
        left[0] -= 1
        mark(label + " begins")
        try:
            return await fn(*a, **k)
        finally:
            mark(label + " ends")
    setattr(owner, attr, probe)

def first_request(mw):
    call = mw.__call__
    seen = []
    async def probe(self, scope, receive, send):
        first = not seen and scope["type"] == "http" and scope["path"] == "/v1/predict"
        if first:
            seen.append(1)
            mark("first POST /v1/predict received")
        try:
            return await call(self, scope, receive, send)
        finally:
            if first:
                mark("first POST /v1/predict answered")
    mw.__call__ = probe

PROBES = {
    "fisheye.bundle": lambda m: wrap(m, "load_bundle", "bundle verification"),
    "fisheye.inference.onnx_backend": lambda m: wrap(m.OnnxBackend, "_session", "ONNX session"),
    "fisheye.inference.predictor": lambda m: wrap(m.Predictor, "verify", "model check run"),
    "fisheye.serving.state": lambda m: wrap(m.ServingState, "load", "model load (thread)"),
    "fisheye.serving.changes": lambda m: wrap(m.ModelChanges, "load", "model made live"),
    "fisheye.serving.app": lambda m: wrap(m, "create_app", "create_app"),
    "fisheye.serving.middleware": lambda m: first_request(m.ServingMiddleware),
    "fisheye.serving.decoding": lambda m: once(m.DecodePool, "prepare", "a photo's decode"),
    "fisheye.serving.batcher": lambda m: once(m.MicroBatcher, "submit", "a photo's inference"),
    "uvicorn.server": lambda m: wrap(m.Server, "startup", "uvicorn startup (listening at end)"),
}
# fisheye.cli.serve: the Typer command (the plain form of `serve` goes through
# fisheye.cli.plain_serve and fisheye.cli.serve_start instead, where they exist).
IMPORTS = ("fisheye.cli", "fisheye.cli.serve", "fisheye.cli.plain_serve",
           "fisheye.cli.serve_start", "fisheye.serving.settings", "fastapi", "onnxruntime",
           "uvicorn", "fisheye.serving.routes", "fisheye.serving.app")

class Probes(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in PROBES and name not in IMPORTS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        def probed(module):
            if name in IMPORTS:
                mark(f"import {name} begins")
            exec_module(module)
            if name in IMPORTS:
                mark(f"import {name} ends")
            if name in PROBES:
                PROBES[name](module)
        spec.loader.exec_module = probed
        return spec

sys.meta_path.insert(0, Probes())
mark("interpreter ready")
from fisheye.cli import app
app(sys.argv[1:], prog_name="fisheye")
"""


def timeline(spec: dict, src: str, tmp: Path, photo: tuple[str, bytes], poll_s: float) -> list[str]:
    """One start of fisheye with the TIMELINE probes: its timeline lines, in time order."""
    probes = tmp / "timeline_probes.py"
    probes.write_text(TIMELINE)
    probed = {
        "cmd": [sys.executable, str(probes), *spec["cmd"][spec["cmd"].index("serve") :]],
        "env": {**spec["env"], "PYTHONPATH": src},
    }
    server = make_server("fisheye", probed, tmp, "fisheye-timeline")
    server.env["COLD_START_T0"] = repr(time.time())  # the probes' zero: just before Popen
    server.start()
    try:
        start = first_prediction(server, photo, poll_s)
    finally:
        server.stop()
    lines = [
        line.split(" ", 1)[1]
        for line in server.log.read_text(errors="replace").splitlines()
        if line.startswith("timeline ")
    ]
    lines.sort(key=lambda line: float(line.split(" ", 1)[0]))
    return [*lines, f"{start.first_prediction_s:.3f} client: first 200 from /v1/predict"]


def import_breakdown(log: Path, top: int) -> list[tuple[float, float, int, str]]:
    """(cumulative ms, self ms, depth, module) of the `top` slowest imports in an importtime log."""
    rows = []
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        head, cum_us, name = line.split("|", 2)
        self_us = head.split(":", 1)[1]
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((int(cum_us) / 1000, int(self_us) / 1000, depth, name.strip()))
    total = sum(r[0] for r in rows if r[2] == 0)
    rows.sort(reverse=True)
    return [(total, 0.0, -1, "(all top-level imports)"), *rows[:top]]


# Imports a lean `fisheye serve` avoids or cannot avoid: the CLI's Typer and Rich, the
# settings library, and what FastAPI (pydantic.v1, for its check of each route's models)
# and uvicorn (click, for its own command line) import whoever runs them.
WATCHED_IMPORTS = ("typer", "rich.console", "pydantic_settings", "pydantic.v1", "click")


def watched_imports(log: Path, names: tuple[str, ...] = WATCHED_IMPORTS) -> dict[str, float]:
    """Cumulative ms of each module in `names` where the server first imported it (absent:
    not imported), from an importtime log."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        _, cum_us, name = line.split("|", 2)
        name = name.strip()
        if name in names and name not in found:
            found[name] = int(cum_us) / 1000
    return found


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the starts and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--servers", nargs="+", choices=COLD_SERVERS, default=list(COLD_SERVERS))
    parser.add_argument("--runs", type=int, default=5, help="Counted starts per server.")
    parser.add_argument("--warmup", type=int, default=1, help="Uncounted starts first.")
    parser.add_argument("--poll-ms", type=float, default=10.0)
    parser.add_argument("--import-top", type=int, default=20, help="0: no import breakdown.")
    parser.add_argument(
        "--timeline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="One more start of fisheye with probes: when each start-up step happened.",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        metavar="DIR",
        help="Also start `fisheye-baseline`: fisheye serve running the code in DIR (a src/).",
    )
    parser.add_argument(
        "--fisheye-env",
        nargs="*",
        default=[],
        metavar="FISHEYE_KEY=VALUE",
        help="Extra settings for fisheye serve (default: none, i.e. its defaults).",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 50:
        parser.error("--runs must be within 1..50")
    args.model = args.model.resolve()
    # The interpreter's `fisheye` runs this checkout's code, installed or not.
    src = str(ROOT / "src")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (src, os.environ.get("PYTHONPATH", "")) if p
    )
    photo_path = photo_paths(args.photos, 1, seed=0)[0]
    photo = (photo_path.name, photo_path.read_bytes())
    tmp = Path(tempfile.mkdtemp(prefix="cold-start-"))
    spec_args = argparse.Namespace(
        model=args.model,
        fisheye_env=args.fisheye_env,
        bentoml_config="16:1000",
        bentoml_python=Path(sys.executable),
    )
    specs = server_specs(spec_args, tmp)
    servers = list(args.servers)
    if args.baseline_src is not None:
        baseline = str(args.baseline_src.resolve())
        specs["fisheye-baseline"] = {
            **specs["fisheye"],
            "env": {**specs["fisheye"]["env"], "PYTHONPATH": baseline},
        }
        servers.insert(
            servers.index("fisheye") + 1 if "fisheye" in servers else 0, "fisheye-baseline"
        )
    # Compiled bytecode, as an installed package has: written by the warm-up start.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    poll_s = args.poll_ms / 1000
    print(
        f"cold start of {', '.join(servers)} over {args.model} ({platform.node()}, "
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}), "
        f"photo {photo_path.relative_to(args.photos)}",
        flush=True,
    )
    results: dict[str, list[Start]] = {name: [] for name in servers}
    for i in range(args.warmup + args.runs):
        for name in servers:
            start, _ = start_once(name, specs[name], tmp, f"{name}-{i}", photo, poll_s)
            counted = i >= args.warmup
            if counted:
                results[name].append(start)
            if name.startswith("fisheye") and "ood_score" not in start.answer:
                raise SystemExit(f"fisheye's first answer has no OOD score: {start.answer}")
            print(
                f"  {name} start {i + 1}{'' if counted else ' (warm-up)'}: listening "
                f"{fmt(start.listening_s)} s, first prediction {fmt(start.first_prediction_s)} s",
                flush=True,
            )

    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        "\n| server | runs | first prediction s: median | min | max | listening s: median "
        "| CPU s to first prediction: median |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, starts in results.items():
        firsts = [s.first_prediction_s for s in starts]
        listening = [s.listening_s for s in starts]
        cpu = [s.cpu_s for s in starts]
        print(
            f"| {name} | {len(starts)} | {fmt(statistics.median(firsts))} | {fmt(min(firsts))} "
            f"| {fmt(max(firsts))} | {fmt(statistics.median(listening))} "
            f"| {fmt(statistics.median(cpu))} |"
        )

    probed = {"fisheye": src}
    if args.baseline_src is not None:
        probed["fisheye-baseline"] = str(args.baseline_src.resolve())
    if args.timeline and "fisheye" in servers:
        for name, code in probed.items():
            print(f"\n{name}, one more start with probes: seconds since the process started\n")
            for line in timeline(specs["fisheye"], code, tmp, photo, poll_s):
                print(f"  {line}")

    if args.import_top:
        os.environ["PYTHONPROFILEIMPORTTIME"] = "1"
        try:
            for name in servers:
                start, server = start_once(
                    name, specs[name], tmp, f"{name}-importtime", photo, poll_s
                )
                print(
                    f"\n{name}, started with PYTHONPROFILEIMPORTTIME=1 (first prediction "
                    f"{fmt(start.first_prediction_s)} s): the {args.import_top} largest "
                    "cumulative import times\n"
                )
                print("| module | depth | cumulative ms | self ms |")
                print("|---|---:|---:|---:|")
                for cum, own, depth, module in import_breakdown(server.log, args.import_top):
                    shown = "" if depth < 0 else str(depth)
                    print(f"| {module} | {shown} | {cum:.0f} | {own:.0f} |")
                watched = watched_imports(server.log)
                print(
                    "\nwatched imports (cumulative ms): "
                    + ", ".join(
                        f"{name} {watched[name]:.0f}" if name in watched else f"{name} not imported"
                        for name in WATCHED_IMPORTS
                    )
                )
        finally:
            del os.environ["PYTHONPROFILEIMPORTTIME"]
    return 0


if __name__ == "__main__":
    sys.exit(main())
