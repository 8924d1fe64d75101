"""A real PostgreSQL server for the prediction-store tests: Debian's `postgresql` package.

`postgres_server()` runs `initdb` in a fresh temporary folder and starts `postgres` on a free
127.0.0.1 port (its unix socket in the same folder), as an unprivileged user when the tests
run as root (PostgreSQL refuses to run as root); it stops the server and removes the folder
afterwards. `fresh_database()` makes an empty database on it for one test. For fault
benchmarks and tests, a running server can be restarted (`restart`, PostgreSQL's fast
shutdown then a start on the same port and data) and frozen (`paused`: SIGSTOP to the
postmaster and every process it started, SIGCONT afterwards).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.process_tree import descendants
from tests.helpers.server import free_port

START_TIMEOUT_S = 60.0
SUPERUSER = "fisheye"
UNPRIVILEGED = "nobody"  # who runs the server when the tests run as root


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian's layout), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    return Path(found[-1]).parent if found else None


@dataclass
class PostgresServer:
    """A running server: the URL of its `postgres` database, its process and its log.
    `launch` starts the server process again (the same data folder, port and settings)."""

    url: str
    port: int
    process: subprocess.Popen
    log_path: Path
    launch: Callable[[], subprocess.Popen] | None = None
    bin_dir: Path | None = None

    def stop(self) -> None:
        """PostgreSQL's fast shutdown (SIGINT): clients are disconnected, the data is kept."""
        _stop(self.process)

    def start(self) -> None:
        """Start the stopped server again and wait until it accepts connections."""
        if self.launch is None:
            raise RuntimeError("this server cannot be started again")
        self.process = self.launch()
        _wait_until_ready(self, self.bin_dir or postgres_bin_dir())

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server, keep it down for `down_s` seconds, start it again (as `pg_ctl
        restart` does, fast mode)."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def processes(self) -> list[int]:
        """The postmaster's pid and those of the processes it started (backends, writers)."""
        return descendants(self.process.pid)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The whole server frozen (SIGSTOP) while the block runs: connections stay open
        and nothing answers, as a store stalled by its host or its storage would."""
        pids = self.processes()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def log_tail(self, n: int = 40) -> str:
        """The last lines of the server's log."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def database_url(self, name: str) -> str:
        """The URL of the database `name` on this server."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{name}"


def _as_user() -> dict:
    """Popen arguments that run a command as UNPRIVILEGED when we are root."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam(UNPRIVILEGED)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@contextlib.contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL server; RuntimeError when it cannot be started. Tests
    skip fsync for speed; `durable` keeps PostgreSQL's defaults (for measurements)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="fisheye-pg-"))
    data, log_path = root / "data", root / "postgres.log"
    as_user = _as_user()
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    server = None
    try:
        subprocess.run(
            [bin_dir / "initdb", "-D", data, "-U", SUPERUSER, "-A", "trust", "-E", "UTF8"]
            + ["--locale=C", "--no-sync"],
            check=True,
            capture_output=True,
            cwd=root,
            env=env,
            **as_user,
        )
        port = free_port()
        fast = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        argv = [bin_dir / "postgres", "-D", data, "-p", str(port), "-k", root]
        argv += ["-c", "listen_addresses=127.0.0.1"] + ([] if durable else fast)

        def launch() -> subprocess.Popen:
            with open(log_path, "ab") as log_file:
                return subprocess.Popen(
                    argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=root, env=env, **as_user
                )

        url = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
        server = PostgresServer(url, port, launch(), log_path, launch, bin_dir)
        _wait_until_ready(server, bin_dir)
        yield server
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
    finally:
        if server is not None:
            # Whatever a fault left it in: running, paused, or stopped.
            if server.process.poll() is None:
                os.kill(server.process.pid, signal.SIGCONT)
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_until_ready(server: PostgresServer, bin_dir: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"postgres exited:\n{server.log_tail()}")
        ready = subprocess.run(
            [bin_dir / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(server.port)],
            check=False,
        )
        if ready.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"postgres did not start in {START_TIMEOUT_S:g} s:\n{server.log_tail()}")


def fresh_database(server: PostgresServer, name: str) -> str:
    """Create an empty database `name` on `server`; returns its URL."""
    import psycopg

    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.database_url(name)
