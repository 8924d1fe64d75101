"""The prediction log: every answered photo, drift test, shadow answer and feedback.

`PredictionLog` (writer.py) queues rows on the request path and writes them, and feedback,
from one thread to a `LogStore` (store.py): SQLite for one machine (schema.py, queries.py,
rollups.py), or PostgreSQL for a fleet of replicas (postgres_store.py, pg_schema.py,
pg_queries.py); `open_store` picks from a path or a URL. With PostgreSQL the replicas also
share a sample of their photos' features for the fleet's drift test (`open_fleet_store`:
fleet_store.py, pg_fleet.py, fleet_rows.py).
"""

from fisheye.monitoring.prediction_log.db_url import is_postgres_url, redact
from fisheye.monitoring.prediction_log.fleet_rows import FeatureRow, FleetWindow
from fisheye.monitoring.prediction_log.opening import open_fleet_store, open_store
from fisheye.monitoring.prediction_log.rows import (
    FeedbackConflictError,
    FeedbackError,
    PredictionRow,
    ShadowRow,
    StoreBusyError,
    StoreError,
    StoreUnavailableError,
)
from fisheye.monitoring.prediction_log.spool import Spool
from fisheye.monitoring.prediction_log.store import LogStore, SQLiteStore
from fisheye.monitoring.prediction_log.writer import PredictionLog

__all__ = [
    "FeedbackConflictError",
    "FeatureRow",
    "FeedbackError",
    "FleetWindow",
    "LogStore",
    "PredictionLog",
    "PredictionRow",
    "SQLiteStore",
    "ShadowRow",
    "Spool",
    "StoreBusyError",
    "StoreError",
    "StoreUnavailableError",
    "is_postgres_url",
    "open_fleet_store",
    "open_store",
    "redact",
]
