"""S3 and GCS emulators as real processes on free 127.0.0.1 ports, for the DVC remote tests.

S3: moto's server mode (`python -m moto.server`). GCS: `gcp-storage-emulator`, in memory.
Each context manager starts the server, waits until it answers, makes the bucket, and stops
the process afterwards; its log is kept in `log_dir` for failure messages.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers.server import free_port

START_TIMEOUT_S = 60.0


@dataclass
class Emulator:
    """A running emulator: its base URL, its process and its log file."""

    name: str
    url: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, n: int = 40) -> str:
        """The last lines of the emulator's log."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@contextlib.contextmanager
def _serve(
    name: str, cmd: list[str], port: int, log_dir: Path, ready: Callable[[httpx.Client], bool]
) -> Iterator[Emulator]:
    """Run `cmd` (a server on 127.0.0.1:`port`), wait until `ready`, stop it on exit."""
    log_path = log_dir / f"{name}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=log_dir
        )
    emulator = Emulator(name, f"http://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        # trust_env=False: a proxy from the environment must not see 127.0.0.1 traffic.
        with httpx.Client(base_url=emulator.url, timeout=2, trust_env=False) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode}:\n{emulator.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if ready(client):
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{name} not ready after {START_TIMEOUT_S:.0f} s:\n{emulator.log_tail()}"
                    )
                time.sleep(0.2)
        yield emulator
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def moto_s3(log_dir: Path, bucket: str) -> Iterator[Emulator]:
    """moto's S3 server on a free 127.0.0.1 port with `bucket` created (any credentials work)."""
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]

    def ready(client: httpx.Client) -> bool:
        # Path-style CreateBucket: moto accepts unsigned requests.
        return client.put(f"/{bucket}").status_code == 200

    with _serve("moto-s3", cmd, port, log_dir, ready) as emulator:
        yield emulator


@contextlib.contextmanager
def gcs_emulator(log_dir: Path, bucket: str) -> Iterator[Emulator]:
    """gcp-storage-emulator on a free 127.0.0.1 port, in memory, with `bucket` created."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "gcp_storage_emulator",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--default-bucket",
        bucket,
        "--in-memory",
    ]

    def ready(client: httpx.Client) -> bool:
        return client.get(f"/storage/v1/b/{bucket}").status_code == 200

    with _serve("gcs-emulator", cmd, port, log_dir, ready) as emulator:
        yield emulator
