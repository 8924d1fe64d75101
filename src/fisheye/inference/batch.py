"""Batch prediction into a results file: the single-process engine.

Photos are decoded, run and written batch by batch, so memory stays flat however many
photos there are; photos already in a resumed output are skipped (`ResultWriter.done`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fisheye.data.storage import PhotoRef
from fisheye.inference.predictor import Predictor
from fisheye.inference.result_paths import path_text
from fisheye.inference.results import ResultWriter, result_row

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class BatchSummary:
    """What one batch-prediction run did."""

    total: int  # photos asked for
    skipped: int  # already in the output (resume)
    written: int  # rows written by this run
    failed: int  # of those, photos that could not be read


def pending(files: Sequence[PhotoRef], writer: ResultWriter) -> list[PhotoRef]:
    """The photos not yet in the writer's output, in order."""
    return [f for f in files if path_text(f) not in writer.done]


def write_rows(
    batches: Iterable[Rows],
    writer: ResultWriter,
    *,
    total: int,
    skipped: int,
    on_done: Callable[[int], None] | None = None,
) -> BatchSummary:
    """Write batches of result rows as they come; `on_done(n)` after each batch."""
    written = failed = 0
    for rows in batches:
        writer.write(rows)
        written += len(rows)
        failed += sum(1 for r in rows if r["error"] is not None)
        if on_done:
            on_done(len(rows))
    return BatchSummary(total, skipped, written, failed)


def local_batches(
    predictor: Predictor, files: Iterable[PhotoRef], *, batch_size: int, top_k: int | None = None
) -> Iterable[Rows]:
    """Result rows of the photos, `batch_size` at a time, computed in this process."""
    rows: Rows = []
    for result in predictor.predict_files(files, batch_size=batch_size, top_k=top_k):
        rows.append(result_row(result))
        if len(rows) >= batch_size:
            yield rows
            rows = []
    if rows:
        yield rows
