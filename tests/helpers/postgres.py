"""A real PostgreSQL server for the prediction-store tests: Debian's `postgresql` package.

`postgres_server()` runs `initdb` in a fresh temporary folder and starts `postgres` on a free
127.0.0.1 port (its unix socket in the same folder), as an unprivileged user when the tests
run as root (PostgreSQL refuses to run as root); it stops the server and removes the folder
afterwards. `fresh_database()` makes an empty database on it for one test.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
    """A running server: the URL of its `postgres` database, its process and its log."""

    url: str
    port: int
    process: subprocess.Popen
    log_path: Path

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
    process = None
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
        with open(log_path, "wb") as log_file:
            fast = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
            process = subprocess.Popen(
                [bin_dir / "postgres", "-D", data, "-p", str(port), "-k", root]
                + ["-c", "listen_addresses=127.0.0.1"]
                + ([] if durable else fast),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=root,
                env=env,
                **as_user,
            )
        server = PostgresServer(
            f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres", port, process, log_path
        )
        _wait_until_ready(server, bin_dir)
        yield server
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(root, ignore_errors=True)


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
