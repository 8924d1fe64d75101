"""The prediction log: every answered photo, drift test, shadow answer and feedback, on disk.

`PredictionLog` (writer.py) queues rows on the request path and writes them, and feedback,
from one thread to a `LogStore` (store.py; SQLite: schema.py, queries.py, rollups.py).
"""

from fisheye.monitoring.prediction_log.rows import (
    FeedbackConflictError,
    FeedbackError,
    PredictionRow,
    ShadowRow,
    StoreBusyError,
    StoreError,
)
from fisheye.monitoring.prediction_log.store import LogStore, SQLiteStore
from fisheye.monitoring.prediction_log.writer import PredictionLog

__all__ = [
    "FeedbackConflictError",
    "FeedbackError",
    "LogStore",
    "PredictionLog",
    "PredictionRow",
    "SQLiteStore",
    "ShadowRow",
    "StoreBusyError",
    "StoreError",
]
