"""The prediction log in PostgreSQL: one store for a fleet of replicas.

Each replica's writer thread has one connection (rows, retention, feedback); reads (the
monitoring summary, the report) borrow one from a small pool. Every row is tagged with the
replica that wrote it. The schema comes from numbered, additive migrations (pg_schema.py),
applied when the writer first connects. psycopg is imported only here, so a server with a
SQLite log never loads it.

Every wait on the server is bounded (pg_connect.py): a write, a read or a feedback that the
store does not finish within `timeout_s` (FISHEYE_STORE_TIMEOUT_S) fails, whether the server
cancels it (a statement waiting for a lock) or this side cuts the connection (a server that
does not answer at all: frozen, its host or disk stalled, the network cut).

Errors: a lock conflict or deadlock is StoreBusyError, a server that cannot be reached, a
lost connection or a wait past the timeout StoreUnavailableError (for both the writer keeps
the batch, in its spool or its queue, and tries again, reconnecting, until the store
answers); anything else StoreError.
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
from fisheye.monitoring.prediction_log.pg_connect import (
    client_deadline_s,
    connect,
    connect_kwargs,
    ensure_schema,
)
from fisheye.monitoring.prediction_log.pg_deadline import STORE_TIMEOUT_S, bounded
from fisheye.monitoring.prediction_log.pg_schema import MIGRATIONS, RETENTION_LOCK, Migration
from fisheye.monitoring.prediction_log.rows import (
    PredictionRow,
    ShadowRow,
    StoreBusyError,
    StoreError,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)
# Retention deletes a minute's rows, or at its first run a backlog: it may take longer than a
# write, and the writer's rows wait in its queue meanwhile.
RETENTION_TIMEOUT_S = 60.0
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
        timeout_s: float = STORE_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.replica = replica
        self.migrations = migrations
        self.pool_size = pool_size
        self.timeout_s = timeout_s
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
            conn = connect(self.url, self.timeout_s, f"fisheye {self.replica}")
        except psycopg.Error as exc:
            raise store_error(exc, self.url) from exc
        try:
            ensure_schema(conn, self.replica, self.migrations, self.timeout_s, self._what)
        except psycopg.Error as exc:
            conn.close()
            raise store_error(exc, self.url) from exc
        except StoreError:
            conn.close()
            raise
        self._writer = conn
        return conn

    @property
    def _what(self) -> str:
        return f"the prediction store {redact(self.url)}"

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
        bound = max(RETENTION_TIMEOUT_S, self.timeout_s)
        with self._writing(bound) as conn, conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = {int(bound * 1000)}")
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
    def _writing(self, timeout_s: float | None = None) -> Iterator[psycopg.Connection]:
        """The writer connection (reconnected after a loss) for one operation of at most
        `timeout_s` (default: the store's), its errors as StoreError."""
        conn = self._writer
        if conn is None or conn.closed or conn.broken:
            self._writer = None
            conn = self._connect_writer()
        deadline = client_deadline_s(self.timeout_s if timeout_s is None else timeout_s)
        try:
            with bounded(conn, deadline, self._what):
                yield conn
        except psycopg.Error as exc:
            raise store_error(exc, self.url) from exc
        finally:
            if conn.broken or conn.closed:
                self._writer = None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[psycopg.Connection]:
        """A pooled connection for one read, from any thread (without a pool: a connection of
        its own, for one-off readers such as the report)."""
        deadline = client_deadline_s(self.timeout_s)
        name = f"fisheye {self.replica} read"
        if self.pool_size == 0:
            try:
                with (
                    connect(self.url, self.timeout_s, name) as conn,
                    bounded(conn, deadline, self._what),
                ):
                    yield conn
            except psycopg.Error as exc:
                raise store_error(exc, self.url) from exc
            return
        if self._pool is None:
            self._pool = ConnectionPool(
                self.url,
                min_size=0,
                max_size=self.pool_size,
                kwargs=connect_kwargs(self.timeout_s, name),
                open=True,
                name="fisheye-log-read",
            )
        try:
            # A connection cut or lost is not taken back into the pool.
            with (
                self._pool.connection(timeout=self.timeout_s) as conn,
                bounded(conn, deadline, self._what),
            ):
                yield conn
        except PoolTimeout as exc:
            raise StoreUnavailableError(
                f"cannot reach {self._what} within {self.timeout_s:g} s"
            ) from exc
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
