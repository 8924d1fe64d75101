"""How FishEye connects to a PostgreSQL store: every wait bounded.

`timeout_s` (FISHEYE_STORE_TIMEOUT_S) bounds each use of the store:

- connect_timeout: opening a connection (a server that accepts the TCP connection but does
  not answer, as a frozen one does, fails after it);
- statement_timeout (sent as a startup option): the server cancels a statement that runs or
  waits for a lock longer; the connection stays open;
- TCP keepalives and tcp_user_timeout: a peer that vanished (host lost, network cut) is
  noticed, on an idle connection and on one waiting for data to be acknowledged;
- this side's deadline (pg_deadline.py), CUT_GRACE_S later than the server's: what the
  server cannot cancel itself because it does not run (frozen, a stalled disk).
"""

from __future__ import annotations

import math
from typing import Any

import psycopg

from fisheye.monitoring.prediction_log.pg_deadline import bounded
from fisheye.monitoring.prediction_log.pg_schema import Migration, migrate, pending_migrations

# The server cancels a slow statement itself (the connection stays usable) before this side
# cuts the connection.
CUT_GRACE_S = 1.0


def client_deadline_s(timeout_s: float) -> float:
    """How long this side lets one use of a connection run before cutting it."""
    return timeout_s + CUT_GRACE_S


def connect_kwargs(timeout_s: float, application_name: str, options: str = "") -> dict[str, Any]:
    """psycopg.connect's arguments (also a pool's) for a connection whose waits are bounded
    by `timeout_s`; `options`: more server settings (`-c name=value ...`)."""
    idle = max(1, math.ceil(timeout_s))
    return {
        "autocommit": True,
        "application_name": application_name[:63],
        "connect_timeout": max(2, math.ceil(timeout_s)),  # libpq's least
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": max(1, math.ceil(idle / 3)),
        "keepalives_count": 3,
        "tcp_user_timeout": math.ceil(client_deadline_s(timeout_s) * 1000),
        "options": f"-c statement_timeout={math.ceil(timeout_s * 1000)} {options}".strip(),
    }


def connect(
    url: str, timeout_s: float, application_name: str, options: str = ""
) -> psycopg.Connection:
    """A connection in autocommit mode with bounded waits (psycopg.Error when it fails)."""
    return psycopg.connect(url, **connect_kwargs(timeout_s, application_name, options))


def ensure_schema(
    conn: psycopg.Connection,
    replica: str,
    migrations: tuple[Migration, ...],
    timeout_s: float,
    what: str,
) -> None:
    """Apply the migrations the database lacks. Whether any is missing is one quick read,
    bounded like any other; applying them is not (an index built on a large table takes
    what it takes), only by the TCP settings."""
    with bounded(conn, client_deadline_s(timeout_s), what):
        current = not pending_migrations(conn, migrations)
    if not current:
        migrate(conn, replica, migrations)
