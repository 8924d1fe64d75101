"""A real `fisheye serve` process on a free 127.0.0.1 port, for the integration tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

# The training extra's libraries, as if they were not installed: `import torch` fails and
# importlib.util.find_spec("torch") is None (a module set to None in sys.modules).
TRAIN_EXTRA_MODULES = (
    "torch",
    "torchvision",
    "lightning",
    "torchmetrics",
    "hydra",
    "omegaconf",
    "sklearn",
    "torchdrift",
    "kagglehub",
)


def fisheye_command(*args: str, without: tuple[str, ...] = ()) -> list[str]:
    """The command line that runs `fisheye ARGS`, with the modules `without` made missing."""
    hide = "".join(f"sys.modules[{m!r}] = None; " for m in without)
    code = f"import sys; {hide}from fisheye.cli import app; app(prog_name='fisheye')"
    return [sys.executable, "-c", code, *args]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running `fisheye serve` process."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, n: int = 40) -> str:
        """The last lines of the server's log."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@contextlib.contextmanager
def run_server(
    model: Path,
    log_dir: Path,
    timeout: float = 90.0,
    until: Callable[[httpx.Response], bool] | None = None,
    without: tuple[str, ...] = (),
    **env: str,
) -> Iterator[Server]:
    """Start `fisheye serve` on a free 127.0.0.1 port, wait for /readyz, stop it afterwards.

    `env` adds FISHEYE_* settings; the server logs to `log_dir`/server-<port>.log. `until`
    says which /readyz answer to wait for (default: 200, the model is ready); e.g. a test
    of a model that fails to load waits for its 503. `without` names modules the server
    must run without (e.g. TRAIN_EXTRA_MODULES: the lean runtime).
    """
    until = until or (lambda res: res.status_code == 200)
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    cmd = fisheye_command(
        "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port), without=without
    )
    full_env = {**os.environ, "FISHEYE_THREADS": "1", "FISHEYE_LOG_LEVEL": "warning", **env}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if until(httpx.get(f"{server.url}/readyz", timeout=2)):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
