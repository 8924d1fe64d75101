"""Which photos a model has already seen: near-duplicates of its recorded training photos.

A bundle records every photo of its training run (`training_manifest.csv`: path relative to
the data root, sha256, class, split, group). A new photo counts as seen when it has the
bytes of a recorded train or val photo (model selection saw val), or, when the recorded
photos can be found under the data root, when near-duplicate grouping puts it in one group
with one of them. Recorded test photos were never seen, so their copies count as new.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fisheye.data.grouping import group_near_duplicates
from fisheye.data.manifest import ManifestRow, RecordedPhoto
from fisheye.data.progress import NO_PROGRESS, Progress

log = logging.getLogger(__name__)

SEEN_SPLITS = ("train", "val")


@dataclass
class SeenReport:
    """What the check kept and how it decided."""

    kept: list[Any]
    n_input: int
    n_same_bytes: int = 0
    n_near_duplicates: int = 0
    method: str = "sha256"  # "sha256+grouping" when the recorded photos were found
    seen_root: str | None = None
    n_recorded_found: int = 0
    n_recorded: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for metrics.json)."""
        return {
            "n_input": self.n_input,
            "n_kept": len(self.kept),
            "n_excluded_same_bytes": self.n_same_bytes,
            "n_excluded_near_duplicates": self.n_near_duplicates,
            "method": self.method,
            "seen_root": self.seen_root,
            "recorded_photos_found": self.n_recorded_found,
            "recorded_photos_seen": self.n_recorded,
            "notes": list(self.notes),
        }


def exclude_seen(
    rows: Sequence[ManifestRow],
    recorded: Sequence[RecordedPhoto],
    seen_root: Path | None,
    progress: Progress = NO_PROGRESS,
) -> SeenReport:
    """Keep only the rows whose near-duplicate group the model never saw (see module doc).

    `rows` need `path`, `label` and `sha256`; `seen_root` is the folder the recorded paths
    are relative to (None or missing: only identical bytes can be recognised).
    """
    seen = [r for r in recorded if r.split in SEEN_SPLITS]
    seen_hashes = {r.sha256 for r in seen}
    report = SeenReport(kept=[], n_input=len(rows), n_recorded=len(seen))
    fresh = [r for r in rows if r.sha256 not in seen_hashes]
    report.n_same_bytes = len(rows) - len(fresh)

    found: list[ManifestRow] = []
    if seen_root is not None and Path(seen_root).is_dir():
        for r in seen:
            path = Path(seen_root) / r.path
            if path.is_file():
                found.append(ManifestRow(path, r.label, r.split, r.sha256, 0, 0))
    report.n_recorded_found = len(found)
    if not found:
        where = f" under {seen_root}" if seen_root is not None else ""
        report.notes.append(
            f"the recorded training photos were not found{where}: only photos with the same "
            "bytes as a training photo were excluded, not rotated or flipped copies; pass "
            "--seen-root with the folder the model was trained from"
        )
        report.kept = fresh
        return report
    if len(found) < len(seen):
        report.notes.append(f"{len(seen) - len(found)} recorded training photos were not found")

    report.method = "sha256+grouping"
    report.seen_root = str(seen_root)
    candidates = [ManifestRow(Path(r.path), r.label, "", r.sha256, 0, 0, "") for r in fresh]
    grouped = group_near_duplicates([*found, *candidates], progress=progress)
    seen_groups = {r.group for r in grouped[: len(found)]}
    for row, g in zip(fresh, grouped[len(found) :], strict=True):
        if g.group in seen_groups:
            report.n_near_duplicates += 1
        else:
            report.kept.append(row)
    return report
