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

Then one more start of each with `PYTHONPROFILEIMPORTTIME=1` (not counted: it slows
imports) prints the modules with the largest cumulative import time in the serving process.
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
    poll_s = args.poll_ms / 1000
    print(
        f"cold start of {', '.join(args.servers)} over {args.model} ({platform.node()}, "
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}), "
        f"photo {photo_path.relative_to(args.photos)}",
        flush=True,
    )
    results: dict[str, list[Start]] = {name: [] for name in args.servers}
    for i in range(args.warmup + args.runs):
        for name in args.servers:
            start, _ = start_once(name, specs[name], tmp, f"{name}-{i}", photo, poll_s)
            counted = i >= args.warmup
            if counted:
                results[name].append(start)
            if name == "fisheye" and "ood_score" not in start.answer:
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

    if args.import_top:
        os.environ["PYTHONPROFILEIMPORTTIME"] = "1"
        try:
            for name in args.servers:
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
        finally:
            del os.environ["PYTHONPROFILEIMPORTTIME"]
    return 0


if __name__ == "__main__":
    sys.exit(main())
