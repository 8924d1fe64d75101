"""`open_store`: the prediction store a path or a URL names."""

from __future__ import annotations

from pathlib import Path

from fisheye.monitoring.prediction_log.db_url import is_postgres_url
from fisheye.monitoring.prediction_log.store import LogStore, SQLiteStore


def open_store(db: Path | str, *, replica: str, readonly: bool = False) -> LogStore:
    """The store `db` names: a PostgreSQL URL (postgresql://user@host:5432/db, shared by a
    fleet) or a SQLite file (one machine). psycopg is imported only for a URL. `readonly`:
    the caller only reads, once (the report)."""
    if is_postgres_url(db):
        from fisheye.monitoring.prediction_log.postgres_store import PostgresStore

        # A read-only opener (the report) reads once: no pool.
        return PostgresStore(str(db), replica=replica, pool_size=0 if readonly else 2)
    return SQLiteStore(Path(db), readonly=readonly, replica=replica)
