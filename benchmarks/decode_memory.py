"""Peak memory of a FishEye server while it decodes worst-case photos, many at once.

    python -m benchmarks.decode_memory                    # from the repository root
    python -m benchmarks.decode_memory --concurrency 16 --kinds gif-canvas png-16bit

Starts `fisheye serve` on 127.0.0.1 (the tiny random model: decoding, not the model, is
measured), then for each kind of worst-case file (tests/helpers/bombs.py: small files with
a canvas just under the 40-million-pixel limit) sends it `--concurrency` times at once to
/v1/predict and reads the server's peak resident memory (VmHWM, reset before each kind
through /proc/<pid>/clear_refs) and its resident memory a few seconds later. Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.helpers.bombs import WORST_CASES
from tests.helpers.bundles import make_bundle
from tests.helpers.memory import peak_mb, reset_peak, rss_mb
from tests.helpers.server import free_port


async def burst(url: str, name: str, data: bytes, n: int) -> Counter[int]:
    """Send the same file n times at once; count the status codes."""
    async with httpx.AsyncClient(timeout=120) as client:

        async def one() -> int:
            try:
                res = await client.post(f"{url}/v1/predict", files={"file": (name, data)})
                return res.status_code
            except httpx.HTTPError:
                return 0  # connection failed: the server died or dropped it

        return Counter(await asyncio.gather(*(one() for _ in range(n))))


def start_server(
    model: Path, pythonpath: str | None, log_path: Path
) -> tuple[str, subprocess.Popen]:
    """`fisheye serve` on a free port; returns its URL and process once it is ready."""
    port = free_port()
    env = {**os.environ, "FISHEYE_LOG_LEVEL": "warning", "FISHEYE_PREDICTION_LOG": "false"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, "-c", "from fisheye.cli import app; app(prog_name='fisheye')"]
    cmd += ["serve", "--model", str(model), "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready in 120 s")


def main(argv: list[str] | None = None) -> int:
    """Run the bursts and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kinds", nargs="*", default=list(WORST_CASES))
    parser.add_argument("--settle-s", type=float, default=3.0, help="Wait before 'after' RSS.")
    parser.add_argument(
        "--pythonpath", help="Serve FishEye from this source folder (compare two versions)."
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model = make_bundle(Path(tmp) / "bundle")
        url, proc = start_server(model, args.pythonpath, Path(tmp) / "server.log")
        try:
            base = rss_mb(proc.pid)
            print(
                f"server pid {proc.pid}, resident {base:.0f} MiB after start; "
                f"{args.concurrency} concurrent uploads per kind\n"
            )
            print("| file | bytes | statuses | before MiB | peak MiB | peak - before | after MiB |")
            print("|---|---:|---|---:|---:|---:|---:|")
            for kind in args.kinds:
                maker, suffix, _ = WORST_CASES[kind]
                data = maker()
                reset_peak(proc.pid)
                before = rss_mb(proc.pid)
                codes = asyncio.run(burst(url, f"{kind}{suffix}", data, args.concurrency))
                peak = peak_mb(proc.pid)
                time.sleep(args.settle_s)
                alive = proc.poll() is None
                after = rss_mb(proc.pid) if alive else float("nan")
                statuses = ", ".join(f"{c}x{n}" for c, n in sorted(codes.items()))
                print(
                    f"| {kind} | {len(data):,} | {statuses} | {before:.0f} | {peak:.0f} "
                    f"| {peak - before:.0f} | {after:.0f} |"
                )
                if not alive:
                    print("\nthe server died")
                    return 1
        finally:
            proc.terminate()
            proc.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
