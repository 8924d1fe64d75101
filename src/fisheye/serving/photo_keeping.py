"""The server's photo keeper (fisheye.monitoring.photo_archive), built from its settings and
wired to its prediction log and metrics; None when no photo is kept (the default)."""

from __future__ import annotations

import logging

from fisheye.monitoring.photo_archive import REASONS, ArchiveError, PhotoKeeper, open_archive
from fisheye.monitoring.prediction_log import PredictionLog
from fisheye.serving.metrics import Metrics
from fisheye.serving.settings import ServeSettings

log = logging.getLogger(__name__)


def open_photo_keeper(
    settings: ServeSettings, metrics: Metrics, prediction_log: PredictionLog | None
) -> PhotoKeeper | None:
    """The keeper of the photo archive the settings name (not started), or None."""
    options = settings.keep_options()
    if options is None or prediction_log is None:
        return None
    if settings.store_images:
        log.warning(
            "FISHEYE_STORE_IMAGES is deprecated: %s; use FISHEYE_ARCHIVE "
            "(docs/monitoring.md#keeping-photos-for-the-next-model)",
            "ignored, FISHEYE_ARCHIVE is set"
            if settings.archive is not None
            else f"every photo is kept in the photo archive {options.location}",
        )
    try:
        archive = open_archive(options.location)
    except ArchiveError as exc:  # serve anyway: keeping photos is never worth an outage
        log.error("the photo archive cannot be opened (%s); no photo is kept", exc)
        metrics.archive_errors.labels("open").inc()
        return None
    for reason in REASONS:  # every series from the start, at 0
        metrics.archive_photos.labels(reason)

    def kept(reason: str, written: int) -> None:
        metrics.archive_photos.labels(reason).inc()
        metrics.archive_written_bytes.inc(written)

    def pruned(deleted: int, stored_bytes: int) -> None:
        metrics.archive_pruned.inc(deleted)
        metrics.archive_stored_bytes.set(stored_bytes)

    log.info(
        "photo archive %s: keeping out-of-distribution and unsure photos, %.3g%% of the others, "
        "and those that get feedback within %.0f s",
        archive.location,
        options.sample_rate * 100,
        options.feedback_window_s,
    )
    return PhotoKeeper(
        archive,
        options,
        prediction_log.store.recent_feedback_ids,
        prediction_log.reference_photos,
        on_kept=kept,
        on_error=lambda kind: metrics.archive_errors.labels(kind).inc(),
        on_pruned=pruned,
    )
