"""The prediction log in PostgreSQL: one store for a fleet of replicas.

Each replica's writer thread has one connection (rows, retention, feedback); reads (the
monitoring summary, the report) borrow one from a small pool. Every row is tagged with the
replica that wrote it. The schema comes from numbered, additive migrations (pg_schema.py),
applied when the writer first connects. psycopg is imported only here, so a server with a
SQLite log never loads it.

Errors: a lock conflict or deadlock is StoreBusyError, a server that cannot be reached or a
lost connection StoreUnavailableError (for both the writer keeps the batch and tries again,
reconnecting, until the store answers); anything else StoreError.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from fisheye.monitoring.prediction_log import pg_queries
from fisheye.monitoring.prediction_log.db_url import redact
from fisheye.monitoring.prediction_log.pg_schema import (
    MIGRATIONS,
    RETENTION_LOCK,
    Migration,
    migrate,
)
from fisheye.monitoring.prediction_log.rows import (
    PredictionRow,
    ShadowRow,
    StoreBusyError,
    StoreError,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 5.0  # how long a read waits for a pooled connection
_CONFLICTS = (
    pg_errors.DeadlockDetected,
    pg_errors.SerializationFailure,
    pg_errors.LockNotAvailable,
)


class PostgresStore:
    """The log in a PostgreSQL database shared by every replica."""

    shared = True  # other replicas write to it too

    def __init__(
        self,
        url: str,
        *,
        replica: str,
        migrations: tuple[Migration, ...] = MIGRATIONS,
        pool_size: int = 2,
    ) -> None:
        self.url = url
        self.replica = replica
        self.migrations = migrations
        self.pool_size = pool_size
        self._writer: psycopg.Connection | None = None
        self._pool: ConnectionPool | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r}, replica={self.replica!r})"

    def open(self) -> None:
        """Connect the writer and apply the migrations the database lacks. A store that
        cannot be reached yet is not an error here: the writer connects on its next write."""
        try:
            self._connect_writer()
        except StoreUnavailableError as exc:
            log.warning("prediction store not reachable yet (%s); rows wait in the queue", exc)

    def _connect_writer(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=f"fisheye {self.replica}"[:63],
            )
        except psycopg.Error as exc:
            raise store_error(exc, self.url) from exc
        try:
            migrate(conn, self.replica, self.migrations)
        except psycopg.Error as exc:
            conn.close()
            raise store_error(exc, self.url) from exc
        self._writer = conn
        return conn

    def write(
        self,
        predictions: list[PredictionRow],
        drifts: list[dict[str, Any]],
        shadows: list[ShadowRow],
    ) -> None:
        """Write rows in one transaction (all or none); rows already logged are skipped."""
        with self._writing() as conn, conn.transaction():
            pg_queries.insert_predictions(conn, self.replica, predictions)
            pg_queries.insert_drift(conn, self.replica, drifts)
            pg_queries.insert_shadow(conn, self.replica, shadows)

    def retain(self, retention_days: float, max_rows: int) -> int:
        """Delete what is older than the retention age or beyond the row limit; one replica
        at a time does it (the others skip this round)."""
        with self._writing() as conn, conn.transaction():
            locked = conn.execute(
                "SELECT pg_try_advisory_xact_lock(%s)", (RETENTION_LOCK,)
            ).fetchone()[0]
            if not locked:
                return 0
            return pg_queries.apply_retention(conn, retention_days, max_rows)

    def find_prediction(self, prediction_id: str) -> tuple[float, str] | None:
        """(time, label) of a prediction any replica logged, or None."""
        with self._writing() as conn:
            return pg_queries.find_prediction(conn, prediction_id)

    def reference_photos(self, refs: list[tuple[str, str]]) -> None:
        """Name each (prediction id, photo sha256)'s kept photo in its row."""
        with self._writing() as conn, conn.transaction():
            pg_queries.reference_photos(conn, refs)

    def recent_feedback_ids(self, predicted_since: float, received_since: float) -> list[str]:
        """Ids of this replica's predictions made after `predicted_since` that got feedback,
        through any replica, after `received_since`."""
        with self._reading() as conn:
            return pg_queries.recent_feedback_ids(
                conn, self.replica, predicted_since, received_since
            )

    def add_feedback(
        self, prediction_id: str, label: str, predicted: str, prediction_ts: float
    ) -> tuple[bool, str, int, int]:
        """(added, label on record, feedback count, correct count) after recording it."""
        with self._writing() as conn, conn.transaction():
            return pg_queries.insert_feedback(
                conn, self.replica, prediction_id, label, predicted, prediction_ts
            )

    def summary(self, since: float, replica: str | None = None) -> dict[str, Any]:
        """The monitoring summary of the fleet (or of one replica) after `since`."""
        with self._reading() as conn:
            return pg_queries.summarize(conn, since, replica)

    def report_rows(self, since: float, replica: str | None = None) -> dict[str, Any]:
        """The rows `fisheye monitor report` plots, and its summary."""
        with self._reading() as conn:
            return {
                **pg_queries.report_rows(conn, since, replica),
                "summary": pg_queries.summarize(conn, since, replica),
            }

    def close(self) -> None:
        """Close the writer's connection and the read pool."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @contextlib.contextmanager
    def _writing(self) -> Iterator[psycopg.Connection]:
        """The writer connection (reconnected after a loss), its errors as StoreError."""
        conn = self._writer
        if conn is None or conn.closed or conn.broken:
            self._writer = None
            conn = self._connect_writer()
        try:
            yield conn
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                self._writer = None
            raise store_error(exc, self.url) from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[psycopg.Connection]:
        """A pooled connection for one read, from any thread (without a pool: a connection of
        its own, for one-off readers such as the report)."""
        if self.pool_size == 0:
            try:
                with psycopg.connect(
                    self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                ) as conn:
                    yield conn
            except psycopg.Error as exc:
                raise store_error(exc, self.url) from exc
            return
        if self._pool is None:
            self._pool = ConnectionPool(
                self.url,
                min_size=0,
                max_size=self.pool_size,
                kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
                open=True,
                name="fisheye-log-read",
            )
        try:
            with self._pool.connection(timeout=READ_TIMEOUT_S) as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreError(f"cannot reach the prediction store {redact(self.url)}") from exc
        except psycopg.Error as exc:
            raise store_error(exc, self.url) from exc


def store_error(exc: psycopg.Error, url: str) -> StoreError:
    """StoreBusyError for a lock conflict, StoreUnavailableError when the server cannot be
    reached or the connection was lost (both: the same write succeeds later)."""
    kind: type[StoreError] = StoreError
    if isinstance(exc, _CONFLICTS):
        kind = StoreBusyError
    elif isinstance(exc, psycopg.OperationalError):  # refused, shut down, connection lost
        kind = StoreUnavailableError
    return kind(f"{type(exc).__name__}: {redact(str(exc).strip())} ({redact(url)})")
