"""Where the prediction log lives: the `LogStore` interface, SQLite behind it, and the choice.

The writer thread (`writer.PredictionLog`: rows, retention and feedback) and the readers
(the monitoring summary, the report) use only `LogStore`'s methods: SQLite here for one
machine, PostgreSQL (postgres_store.py) for a fleet of replicas; `open_store` picks. Every method
raises StoreError when the database cannot be used now, StoreBusyError when another process
holds its lock.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from fisheye.monitoring.prediction_log import queries
from fisheye.monitoring.prediction_log.rows import (
    PredictionRow,
    ShadowRow,
    StoreBusyError,
    StoreError,
)
from fisheye.monitoring.prediction_log.schema import connect

READ_TIMEOUT_MS = 2000


class LogStore(Protocol):
    """The prediction log's database, as the writer and the readers use it."""

    def write(
        self,
        predictions: list[PredictionRow],
        drifts: list[dict[str, Any]],
        shadows: list[ShadowRow],
    ) -> None:
        """Write rows in one transaction (all or none)."""
        ...

    def retain(self, retention_days: float, max_rows: int) -> int:
        """Delete what is older than the retention age or beyond the row limit."""
        ...

    def find_prediction(self, prediction_id: str) -> tuple[float, str] | None:
        """(time, label) of a logged prediction, or None (the writer thread's connection)."""
        ...

    def reference_photos(self, refs: list[tuple[str, str]]) -> None:
        """Name each (prediction id, photo sha256)'s kept photo in its row (the writer's)."""
        ...

    def recent_feedback_ids(self, predicted_since: float, received_since: float) -> list[str]:
        """Ids of this replica's predictions made after `predicted_since` that got feedback
        after `received_since` (unix seconds; any thread)."""
        ...

    def add_feedback(
        self, prediction_id: str, label: str, predicted: str, prediction_ts: float
    ) -> tuple[bool, str, int, int]:
        """(added, label on record, feedback count, correct count) after recording it (the
        writer thread's connection: the log's one writer)."""
        ...

    def summary(self, since: float, replica: str | None = None) -> dict[str, Any]:
        """The monitoring summary of predictions made after `since` (unix seconds), of every
        replica writing to the store, or of `replica` only."""
        ...

    def report_rows(self, since: float, replica: str | None = None) -> dict[str, Any]:
        """The rows `fisheye monitor report` plots, and its summary."""
        ...

    def close(self) -> None:
        """Release the writer's connection."""
        ...


class SQLiteStore:
    """The log in one SQLite file (WAL): one writer connection (used by the writer thread
    only: rows, retention, feedback), one connection per read."""

    def __init__(self, path: Path, *, readonly: bool = False, replica: str | None = None) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.replica = replica  # the one replica whose rows the file holds
        self._writer: sqlite3.Connection | None = None

    def open(self) -> None:
        """Create the file's tables (or migrate them) and open the writer connection."""
        try:
            self._writer = connect(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc

    def write(
        self,
        predictions: list[PredictionRow],
        drifts: list[dict[str, Any]],
        shadows: list[ShadowRow],
    ) -> None:
        """Write rows in one transaction (all or none)."""
        with self._writing() as conn, conn:
            queries.insert_predictions(conn, predictions)
            queries.insert_drift(conn, drifts)
            queries.insert_shadow(conn, shadows)

    def retain(self, retention_days: float, max_rows: int) -> int:
        """Delete what is older than the retention age or beyond the row limit."""
        if self._writer is None:
            return 0
        with self._writing() as conn:
            return queries.apply_retention(conn, retention_days, max_rows)

    def find_prediction(self, prediction_id: str) -> tuple[float, str] | None:
        """(time, label) of a logged prediction, or None (the writer thread's connection)."""
        with self._writing() as conn:
            return queries.find_prediction(conn, prediction_id)

    def reference_photos(self, refs: list[tuple[str, str]]) -> None:
        """Name each (prediction id, photo sha256)'s kept photo in its row (the writer's)."""
        with self._writing() as conn, conn:
            queries.reference_photos(conn, refs)

    def recent_feedback_ids(self, predicted_since: float, received_since: float) -> list[str]:
        """Ids of the predictions made after `predicted_since` that got feedback after
        `received_since` (the file holds this replica's rows only)."""
        with self._reading() as conn:
            return queries.recent_feedback_ids(conn, predicted_since, received_since)

    def add_feedback(
        self, prediction_id: str, label: str, predicted: str, prediction_ts: float
    ) -> tuple[bool, str, int, int]:
        """(added, label on record, feedback count, correct count) after recording it (the
        writer thread's connection: the log's one writer)."""
        with self._writing() as conn:
            return queries.insert_feedback(conn, prediction_id, label, predicted, prediction_ts)

    def summary(self, since: float, replica: str | None = None) -> dict[str, Any]:
        """The monitoring summary of predictions made after `since` (unix seconds). The file
        holds this replica's rows only: another `replica` has none here."""
        if replica is not None and replica != self.replica:
            since = math.inf
        with self._reading() as conn:
            return queries.summarize(conn, since)

    def report_rows(self, since: float, replica: str | None = None) -> dict[str, Any]:
        """The rows `fisheye monitor report` plots, and its summary (of this one replica)."""
        if replica is not None and replica != self.replica:
            since = math.inf
        with self._reading() as conn:
            return {**queries.report_rows(conn, since), "summary": queries.summarize(conn, since)}

    def close(self) -> None:
        """Release the writer's connection."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The writer connection (opened on first use), its errors as StoreError."""
        if self._writer is None:
            self.open()
        assert self._writer is not None
        try:
            yield self._writer
        except (sqlite3.Error, OSError) as exc:
            raise _store_error(exc) from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own for one read (or feedback write), from any thread."""
        try:
            conn = connect(self.path, readonly=self.readonly, timeout_ms=READ_TIMEOUT_MS)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            yield conn
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc
        finally:
            conn.close()


def _store_error(exc: sqlite3.Error | OSError) -> StoreError:
    """StoreBusyError when another connection holds the lock (the same write works later)."""
    busy = isinstance(exc, sqlite3.OperationalError) and any(
        word in str(exc) for word in ("database is locked", "database is busy")
    )
    return (StoreBusyError if busy else StoreError)(f"{type(exc).__name__}: {exc}")
