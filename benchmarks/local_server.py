"""`fisheye serve` on 127.0.0.1 for the benchmarks that measure the server process itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers.server import free_port


def start_server(
    model: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    pythonpath: str | None = None,
    ready_s: float = 180.0,
) -> tuple[str, subprocess.Popen]:
    """Start `fisheye serve --model MODEL` with FISHEYE_* settings in `env` on a free port;
    returns its URL and process once /readyz answers 200. `pythonpath` serves FishEye from
    another source folder (to compare two versions)."""
    port = free_port()
    full_env = {**os.environ, "FISHEYE_LOG_LEVEL": "warning", **(env or {})}
    if pythonpath:
        full_env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, "-c", "from fisheye.cli import app; app(prog_name='fisheye')"]
    cmd += ["serve", "--model", str(model), "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_s
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
    raise SystemExit(f"the server did not become ready in {ready_s:g} s")


def threads(pid: int) -> int:
    """Threads of a process now (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise KeyError("Threads")


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM (the server writes what its prediction log holds), then wait for it."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
