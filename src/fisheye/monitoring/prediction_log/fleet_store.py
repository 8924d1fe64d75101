"""One replica's connection for the fleet's drift test: feature writes, the leader lease, the
leader's reads and writes, and the latest result.

The lease is a session-level PostgreSQL advisory lock (FLEET_DRIFT_LOCK) taken on this
connection: PostgreSQL releases it when the session ends, so when the leading replica stops,
is killed, or loses its connection, another one takes it on its next try. The leader reads
the window and writes its result on the same connection, so a result is written only while
its writer still holds the lease. A peer that vanishes without closing its connection (a
host lost, a network cut) is noticed by the server's TCP keepalives after about
KEEPALIVE_LOSS_S. Each use of the connection is bounded like the prediction store's
(pg_connect.py): a store that does not answer within `timeout_s` fails it (StoreError), the
connection is closed, and the lease with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg

from fisheye.monitoring.prediction_log import pg_fleet
from fisheye.monitoring.prediction_log.db_url import redact
from fisheye.monitoring.prediction_log.fleet_rows import FeatureRow, FleetWindow
from fisheye.monitoring.prediction_log.pg_connect import (
    client_deadline_s,
    connect,
    ensure_schema,
)
from fisheye.monitoring.prediction_log.pg_deadline import STORE_TIMEOUT_S, bounded
from fisheye.monitoring.prediction_log.pg_schema import MIGRATIONS
from fisheye.monitoring.prediction_log.postgres_store import store_error
from fisheye.monitoring.prediction_log.rows import StoreError

T = TypeVar("T")
# The server's keepalives: it drops a vanished leader's session (and its lease) after
# idle + interval x count seconds. (This side's are sized by the timeout: pg_connect.py.)
KEEPALIVE = {"keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
KEEPALIVE_LOSS_S = 25
_SERVER_KEEPALIVE = " ".join(f"-c tcp_{k}={v}" for k, v in KEEPALIVE.items())


class FleetStore:
    """The fleet-drift tables of a PostgreSQL prediction store, through one connection."""

    def __init__(self, url: str, *, replica: str, timeout_s: float = STORE_TIMEOUT_S) -> None:
        self.url = url
        self.replica = replica
        self.timeout_s = timeout_s
        self._conn: psycopg.Connection | None = None
        self.leading = False  # whether this connection holds the lease

    def __repr__(self) -> str:
        return f"FleetStore({redact(self.url)!r}, replica={self.replica!r})"

    def write_features(self, rows: list[FeatureRow]) -> None:
        """Store sampled feature rows."""
        self._run(lambda conn: pg_fleet.insert_features(conn, self.replica, rows))

    def try_lead(self) -> bool:
        """Whether this replica holds the lease now (taking it if it is free)."""
        if not self.leading:
            self.leading = self._run(pg_fleet.try_lead)
        return self.leading

    def last_test(self, feature_space: str) -> pg_fleet.LastTest | None:
        """Where the previous fleet test of `feature_space` left off, or None."""
        return self._run(lambda conn: pg_fleet.last_test(conn, feature_space))

    def new_photos(self, feature_space: str, after: int) -> tuple[int, int]:
        """(photos, newest row id) of the feature rows stored after row `after`."""
        return self._run(lambda conn: pg_fleet.new_photos(conn, feature_space, after))

    def window(self, feature_space: str, size: int) -> FleetWindow:
        """The fleet's `size` most recent photos of `feature_space`."""
        return self._run(lambda conn: pg_fleet.window(conn, feature_space, size))

    def write_result(self, result: dict[str, Any]) -> int:
        """Store a fleet drift test (the leader only: StoreError once the lease is lost)."""
        if not self.leading:
            raise StoreError("this replica does not hold the fleet-drift lease")
        return self._run(lambda conn: pg_fleet.insert_result(conn, result))

    def latest_result(self) -> dict[str, Any] | None:
        """The fleet's latest drift test, or None."""
        return self._run(pg_fleet.latest_result)

    def prune(self, keep: int) -> int:
        """Delete all but the newest `keep` feature rows."""
        return self._run(lambda conn: pg_fleet.prune_features(conn, keep))

    def close(self) -> None:
        """Close the connection (which gives the lease up)."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn, self.leading = None, False

    def _run(self, query: Callable[[psycopg.Connection], T]) -> T:
        with self._connection() as conn:
            return query(conn)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """The connection (opened again after a loss, without the lease), errors as
        StoreError."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self.close()
            conn = self._conn = self._connect()
        try:
            with bounded(conn, client_deadline_s(self.timeout_s), self._what):
                yield conn
        except psycopg.Error as exc:
            raise store_error(exc, self.url) from exc
        finally:
            if conn.broken or conn.closed:
                self.close()

    @property
    def _what(self) -> str:
        return f"the prediction store {redact(self.url)}"

    def _connect(self) -> psycopg.Connection:
        try:
            conn = connect(
                self.url, self.timeout_s, f"fisheye {self.replica} fleet", _SERVER_KEEPALIVE
            )
        except psycopg.Error as exc:
            raise store_error(exc, self.url) from exc
        try:
            # A quick read once the writer has applied them.
            ensure_schema(conn, self.replica, MIGRATIONS, self.timeout_s, self._what)
        except psycopg.Error as exc:
            conn.close()
            raise store_error(exc, self.url) from exc
        except StoreError:
            conn.close()
            raise
        return conn
