"""Where the prediction log lives: the `LogStore` interface, and SQLite behind it.

The writer thread (`writer.PredictionLog`) and the readers (feedback, the monitoring
summary, the report) use only `LogStore`'s methods, so another database (PostgreSQL for a
fleet of replicas) is one more class with the same methods. Every method raises StoreError
when the database cannot be used now.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from fisheye.monitoring.prediction_log import queries
from fisheye.monitoring.prediction_log.rows import PredictionRow, ShadowRow, StoreError
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
        """(time, label) of a logged prediction, or None."""
        ...

    def add_feedback(
        self, prediction_id: str, label: str, predicted: str, prediction_ts: float
    ) -> tuple[bool, str, int, int]:
        """(added, label on record, feedback count, correct count) after recording it."""
        ...

    def summary(self, since: float) -> dict[str, Any]:
        """The monitoring summary of predictions made after `since` (unix seconds)."""
        ...

    def report_rows(self, since: float) -> dict[str, Any]:
        """The rows `fisheye monitor report` plots, and its summary."""
        ...

    def close(self) -> None:
        """Release the writer's connection."""
        ...


class SQLiteStore:
    """The log in one SQLite file (WAL): one writer connection, one connection per read."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
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
        if self._writer is None:
            self.open()
        assert self._writer is not None
        try:
            with self._writer:
                queries.insert_predictions(self._writer, predictions)
                queries.insert_drift(self._writer, drifts)
                queries.insert_shadow(self._writer, shadows)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    def retain(self, retention_days: float, max_rows: int) -> int:
        """Delete what is older than the retention age or beyond the row limit."""
        if self._writer is None:
            return 0
        try:
            return queries.apply_retention(self._writer, retention_days, max_rows)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def find_prediction(self, prediction_id: str) -> tuple[float, str] | None:
        """(time, label) of a logged prediction, or None."""
        with self._reading() as conn:
            return queries.find_prediction(conn, prediction_id)

    def add_feedback(
        self, prediction_id: str, label: str, predicted: str, prediction_ts: float
    ) -> tuple[bool, str, int, int]:
        """(added, label on record, feedback count, correct count) after recording it."""
        with self._reading() as conn:
            return queries.insert_feedback(conn, prediction_id, label, predicted, prediction_ts)

    def summary(self, since: float) -> dict[str, Any]:
        """The monitoring summary of predictions made after `since` (unix seconds)."""
        with self._reading() as conn:
            return queries.summarize(conn, since)

    def report_rows(self, since: float) -> dict[str, Any]:
        """The rows `fisheye monitor report` plots, and its summary."""
        with self._reading() as conn:
            return {**queries.report_rows(conn, since), "summary": queries.summarize(conn, since)}

    def close(self) -> None:
        """Release the writer's connection."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

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
