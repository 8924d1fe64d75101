"""A FishEye fleet on one machine: N `fisheye serve` replicas behind a real HAProxy.

The replicas share one PostgreSQL prediction store (FISHEYE_PREDICTION_DB) and each has its
own FISHEYE_REPLICA_ID. HAProxy (Debian's `haproxy` package) runs in the foreground as a
child process with deploy/haproxy/haproxy.cfg plus one `server` line per replica, on free
127.0.0.1 ports; never the system service. A replica can be started again after it was
killed (`Replicas.restart`: the same port, settings and spool), as a supervisor would.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.paths import DEPLOY
from tests.helpers.server import Server, fisheye_command, free_port

HAPROXY_CONFIG = DEPLOY / "haproxy" / "haproxy.cfg"
START_TIMEOUT_S = 120.0


def haproxy_path() -> str | None:
    """The haproxy executable (Debian installs it in /usr/sbin), or None."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def render_haproxy_config(servers: dict[str, str], backend_lines: tuple[str, ...] = ()) -> str:
    """deploy/haproxy/haproxy.cfg with `backend_lines` (e.g. an `http-response` rule) and a
    `server NAME ADDRESS` line per replica appended to its backend."""
    lines = "".join(f"    {line}\n" for line in backend_lines)
    lines += "".join(f"    server {name} {address}\n" for name, address in servers.items())
    return HAPROXY_CONFIG.read_text() + lines


def check_haproxy_config(config: Path) -> str:
    """`haproxy -c` on `config`: its output; RuntimeError when the config is not valid."""
    done = subprocess.run(
        [haproxy_path() or "haproxy", "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"haproxy -c failed:\n{output}")
    return output


@dataclass
class Balancer:
    """A running HAProxy: the clients' URL, its stats URL, its process and its log."""

    url: str
    stats_url: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's stats of the `fisheye` backend, by row: each replica's, and "BACKEND"
        (the columns of `/stats;csv`: status, wretr retries, wredis redispatches, ...)."""
        text = httpx.get(f"{self.stats_url}/stats;csv", timeout=5).text.lstrip("# ")
        return {
            row["svname"]: row
            for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == "fisheye" and row["svname"] != "FRONTEND"
        }

    def server_states(self) -> dict[str, str]:
        """Each replica's state in HAProxy's eyes ("UP", "DOWN", "UP 1/2", ...)."""
        return {name: row["status"] for name, row in self.stats().items() if name != "BACKEND"}


class Replicas(dict[str, Server]):
    """Running replicas by name; each can be started again after it stopped or was killed."""

    def __init__(self) -> None:
        super().__init__()
        self._launchers: dict[str, Callable[[], subprocess.Popen]] = {}

    def launch(self, name: str, url: str, log_path: Path, launcher) -> Server:
        """Start replica `name` with `launcher` (a Popen) and remember how."""
        self._launchers[name] = launcher
        self[name] = Server(url, launcher(), log_path)
        return self[name]

    def restart(self, name: str, timeout: float = START_TIMEOUT_S) -> Server:
        """Start replica `name` again (its process must have ended: killed or stopped) on
        the same port with the same settings; returns it once its /readyz answers 200."""
        old = self[name]
        if old.process.poll() is None:
            raise RuntimeError(f"{name} is still running (pid {old.process.pid})")
        server = self.launch(name, old.url, old.log_path, self._launchers[name])
        wait_until(lambda: _ready(server), timeout, f"{server.url}/readyz after the restart")
        return server


@dataclass
class Fleet:
    """Replicas by name (their own URLs) and the balancer in front of them."""

    replicas: Replicas
    balancer: Balancer

    def metrics(self) -> dict[str, dict[str, float]]:
        """Each answering replica's unlabelled Prometheus samples (a histogram's _sum and
        _count, counters' _total, gauges), by replica."""
        out = {}
        for name, server in self.replicas.items():
            with contextlib.suppress(httpx.HTTPError):
                text = httpx.get(f"{server.url}/metrics", timeout=5).text
                out[name] = {
                    sample.name: sample.value
                    for family in text_string_to_metric_families(text)
                    for sample in family.samples
                    if not sample.labels
                }
        return out


def wait_until(condition, timeout: float, what: str, every: float = 0.1):
    """Poll `condition()` until it returns something truthy (returned); a deadline is only a
    safety net: past it, AssertionError saying `what` was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout:g} s for {what}")
        time.sleep(every)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait(5)


@contextlib.contextmanager
def run_replicas(model: Path, log_dir: Path, names: list[str], **env: str) -> Iterator[Replicas]:
    """Start one `fisheye serve` per name at once (FISHEYE_REPLICA_ID=name, `env` added),
    wait until every /readyz answers 200, stop them all afterwards."""
    replicas = Replicas()
    try:
        for name in names:
            port = free_port()
            log_path = log_dir / f"{name}.log"
            log_path.unlink(missing_ok=True)
            cmd = fisheye_command(
                "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)
            )
            full_env = {
                **os.environ,
                "FISHEYE_THREADS": "1",
                "FISHEYE_LOG_LEVEL": "warning",
                **env,
                "FISHEYE_REPLICA_ID": name,
                # Rows spooled while the store is away: in the test's folder, never the
                # user's state folder.
                "FISHEYE_LOG_SPOOL": str(log_dir / f"spool-{name}.jsonl"),
            }

            def launcher(cmd=cmd, full_env=full_env, log_path=log_path) -> subprocess.Popen:
                with open(log_path, "ab") as log:  # a restarted replica's log follows on
                    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)

            replicas.launch(name, f"http://127.0.0.1:{port}", log_path, launcher)
        for server in replicas.values():
            wait_until(lambda s=server: _ready(s), START_TIMEOUT_S, f"{server.url}/readyz")
        yield replicas
    finally:
        for server in replicas.values():
            _stop(server.process)


def _ready(server: Server) -> bool:
    if server.process.poll() is not None:
        raise RuntimeError(f"replica exited with {server.process.returncode}:\n{server.log_tail()}")
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200
    return False


@contextlib.contextmanager
def run_balancer(
    servers: dict[str, str], workdir: Path, backend_lines: tuple[str, ...] = ()
) -> Iterator[Balancer]:
    """HAProxy in the foreground with the rendered config for `servers` (name: host:port)
    and `backend_lines`; waits until it sees every server UP, stops it afterwards."""
    config = workdir / "haproxy.cfg"
    config.write_text(render_haproxy_config(servers, backend_lines))
    check_haproxy_config(config)
    port, stats_port = free_port(), free_port()
    env = {
        **os.environ,
        "FISHEYE_LB_BIND": f"127.0.0.1:{port}",
        "FISHEYE_LB_STATS_BIND": f"127.0.0.1:{stats_port}",
    }
    log_path = workdir / "haproxy.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [haproxy_path() or "haproxy", "-db", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    balancer = Balancer(
        f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stats_port}", proc, log_path
    )
    try:

        def all_up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {proc.returncode}:\n{balancer.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                states = balancer.server_states()
                return sorted(states) == sorted(servers) and set(states.values()) == {"UP"}
            return False

        wait_until(all_up, START_TIMEOUT_S, "haproxy to see every replica UP")
        yield balancer
    finally:
        _stop(proc)


@contextlib.contextmanager
def run_fleet(
    model: Path,
    store_url: str,
    workdir: Path,
    replicas: int = 3,
    backend_lines: tuple[str, ...] = (),
    **env: str,
) -> Iterator[Fleet]:
    """`replicas` replicas of `model` logging to the store at `store_url` (`env` added to
    their settings), behind HAProxy (`backend_lines` added to its backend)."""
    names = [f"replica-{i + 1}" for i in range(replicas)]
    env = {**env, "FISHEYE_PREDICTION_DB": store_url}
    with run_replicas(model, workdir, names, **env) as servers:
        addresses = {name: s.url.removeprefix("http://") for name, s in servers.items()}
        with run_balancer(addresses, workdir, backend_lines) as balancer:
            yield Fleet(servers, balancer)


# An answer's header naming the replica that made it (HAProxy's name for the server), for
# the tests and benchmarks that follow each prediction to its replica.
SERVED_BY = "X-FishEye-Replica"
SERVED_BY_LINE = f"http-response set-header {SERVED_BY} %[srv_name]"
