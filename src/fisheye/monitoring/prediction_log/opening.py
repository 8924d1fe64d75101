"""`open_store`: the prediction store a path or a URL names; `open_fleet_store`: its
fleet-drift tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fisheye.monitoring.prediction_log.db_url import is_postgres_url
from fisheye.monitoring.prediction_log.pg_deadline import READONLY_TIMEOUT_S, STORE_TIMEOUT_S
from fisheye.monitoring.prediction_log.store import LogStore, SQLiteStore

if TYPE_CHECKING:  # psycopg is imported only when a fleet store is opened
    from fisheye.monitoring.prediction_log.fleet_store import FleetStore


def open_store(
    db: Path | str, *, replica: str, readonly: bool = False, timeout_s: float | None = None
) -> LogStore:
    """The store `db` names: a PostgreSQL URL (postgresql://user@host:5432/db, shared by a
    fleet) or a SQLite file (one machine). psycopg is imported only for a URL. `readonly`:
    the caller only reads, once (the report). `timeout_s` (PostgreSQL): how long one write
    or read may wait for the store (default: 5 s; a read-only opener, which may read every
    row, 300 s)."""
    if is_postgres_url(db):
        from fisheye.monitoring.prediction_log.postgres_store import PostgresStore

        if timeout_s is None:
            timeout_s = READONLY_TIMEOUT_S if readonly else STORE_TIMEOUT_S
        # A read-only opener (the report) reads once: no pool.
        return PostgresStore(
            str(db), replica=replica, pool_size=0 if readonly else 2, timeout_s=timeout_s
        )
    return SQLiteStore(Path(db), readonly=readonly, replica=replica)


def open_fleet_store(url: str, *, replica: str, timeout_s: float = STORE_TIMEOUT_S) -> FleetStore:
    """The fleet-drift tables of the PostgreSQL store at `url` (psycopg imported now);
    `timeout_s`: how long one use may wait for the store."""
    from fisheye.monitoring.prediction_log.fleet_store import FleetStore

    return FleetStore(url, replica=replica, timeout_s=timeout_s)
