"""What the prediction log holds, and how its reads and writes fail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class StoreError(RuntimeError):
    """The log's database cannot be read or written now (the prediction is unaffected)."""


class StoreBusyError(StoreError):
    """Another process holds the database's write lock: the same write succeeds later."""


class StoreUnavailableError(StoreBusyError):
    """The database server cannot be reached now (down, restarting, not yet started): the
    same write succeeds once it is back."""


@dataclass
class PredictionRow:
    """One logged prediction."""

    id: str
    ts: float
    model_version: str
    backend: str
    label: str
    confidence: float
    ood_score: float | None
    in_distribution: bool | None
    latency_ms: float
    sha256: str
    image_path: str | None = None  # no longer written (photos are kept in the photo archive)
    photo_sha256: str | None = None  # the photo's key in the photo archive, when it is kept


@dataclass
class ShadowRow:
    """A shadow challenger's answer for the logged prediction `id` (the live model's)."""

    id: str
    ts: float
    model_version: str
    label: str
    confidence: float
    ood_score: float | None
    in_distribution: bool | None
    latency_ms: float
    live_label: str
    agree: bool


class FeedbackError(ValueError):
    """Feedback names an unknown prediction id."""


class FeedbackConflictError(ValueError):
    """The prediction already has feedback; the new label was kept as a correction."""

    def __init__(self, message: str, recorded: dict[str, Any]) -> None:
        super().__init__(message)
        self.recorded = recorded
