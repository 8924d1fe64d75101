"""The prediction log's and the photo archive's server settings (`FISHEYE_*` variables,
read by ServeSettings, which takes these fields)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from fisheye.monitoring.photo_archive import ArchiveError, check_location
from fisheye.monitoring.prediction_log.db_url import is_postgres_url

MB = 1024 * 1024


def default_prediction_db() -> Path:
    """$XDG_STATE_HOME/fisheye/predictions.sqlite (~/.local/state when unset)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "fisheye" / "predictions.sqlite"


class PredictionLogSettings(BaseModel):
    """Where predictions, feedback and kept photos go, and for how long."""

    prediction_log: bool = Field(
        True, description="Log every prediction (SQLite, or PostgreSQL for a fleet)."
    )
    prediction_db: Path | str = Field(
        default_factory=default_prediction_db,
        description="The prediction log: a SQLite file for one machine (default: "
        "$XDG_STATE_HOME/fisheye/predictions.sqlite), or a PostgreSQL URL "
        "(postgresql://user@host:5432/db) that every replica of a fleet shares.",
    )
    replica_id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=200,
        description="This replica's name on every row it logs (default: the hostname, a pod's "
        "name on Kubernetes).",
    )
    log_retention_days: float = Field(
        30.0, gt=0, le=3660, description="Delete logged rows older than this (days)."
    )
    log_max_rows: int = Field(
        1_000_000,
        ge=1,
        description="Keep at most this many rows in each logged table (predictions, feedback, "
        "corrections, shadow answers, drift tests).",
    )
    log_spool: Path | None = Field(
        None,
        description="With a PostgreSQL log: the file that keeps rows while the store cannot "
        "be reached, replayed when it returns (default: $XDG_STATE_HOME/fisheye/"
        "spool-<replica id>.jsonl).",
    )
    log_spool_max_bytes: int = Field(
        64 * MB,
        ge=0,
        description="At most this many bytes of spooled rows (about 250 bytes a row); rows "
        "beyond are dropped and counted. 0: no spool (rows wait in memory only).",
    )
    # The photo archive (docs/monitoring.md#keeping-photos-for-the-next-model).
    archive: str | None = Field(
        None,
        description="Opt-in: keep the photos that teach the next model (out of distribution, "
        "unsure, a random sample, those that get feedback) in this folder or object-storage "
        "URL (s3://bucket/prefix, gs://bucket/prefix: the archive extra), by sha256; "
        "prediction rows name their kept photo. Unset: no photo is kept.",
    )
    archive_sample_rate: float = Field(
        0.01,
        ge=0,
        le=1,
        description="With the archive: the share of the other answered photos kept at random.",
    )
    archive_max_gb: float = Field(
        10.0, gt=0, description="With the archive: its size; the oldest photos beyond it go."
    )
    archive_max_age_days: float = Field(
        30.0, gt=0, description="With the archive: photos older than this are deleted (days)."
    )
    archive_recent_mb: float = Field(
        64.0,
        ge=0,
        description="With the archive: recent photos held in memory in case feedback names "
        "them, in MiB (the oldest go first); feedback on a photo no longer held keeps none.",
    )
    archive_feedback_window_s: float = Field(
        600.0,
        ge=0,
        description="With the archive: how long after its answer a photo is held for feedback.",
    )
    store_timeout_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="With a PostgreSQL log: the longest a write, read or feedback waits for the "
        "store (a frozen, stalled or cut-off store fails it: rows go to the spool, the log says "
        "degraded, feedback and the summary answer 503).",
    )
    store_images: bool = Field(
        False,
        description="Deprecated: FISHEYE_ARCHIVE=<folder> with FISHEYE_ARCHIVE_SAMPLE_RATE=1 "
        "(what this now means: every photo kept in FISHEYE_IMAGE_DIR, within the archive's "
        "bounds).",
    )
    image_dir: Path | None = Field(
        None,
        description="Deprecated, with FISHEYE_STORE_IMAGES: the archive's folder (default: "
        "<prediction_db>.images/; with PostgreSQL, $XDG_STATE_HOME/fisheye/images).",
    )

    @field_validator("prediction_db", mode="before")
    @classmethod
    def _file_or_postgres_url(cls, value: object) -> Path | str:
        """A PostgreSQL URL stays a string (a Path would fold its `//`); anything else a Path."""
        text = str(value)
        return text if is_postgres_url(text) else Path(text)

    @field_validator("archive", mode="before")
    @classmethod
    def _usable_archive(cls, value: object) -> object:
        """Unset when empty; a URL whose storage driver is missing is refused now, with what
        to install (no network is reached)."""
        if value is None or not str(value).strip():
            return None
        try:
            return check_location(str(value).strip())
        except ArchiveError as exc:
            raise ValueError(str(exc)) from None
