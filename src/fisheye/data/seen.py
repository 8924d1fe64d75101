"""Which photos a model has already seen: near-duplicates of its recorded training photos.

A bundle records every photo of its training run (`training_manifest.csv`: path relative to
the data root, sha256, class, split, group) and the near-duplicate descriptors of its train
and val photos (`seen_descriptors.safetensors`). A new photo counts as seen when it has the
bytes of a recorded train or val photo (model selection saw val), or when near-duplicate
grouping puts it in one group with one of them: from the stored descriptors, or, for a
bundle without them, from the recorded photos found under the data root. Recorded test
photos were never seen, so their copies count as new. Descriptors are computed from a small
thumbnail, so a copy at another resolution or compression (say, the dataset's full-size
originals against a resized copy the model trained on) is recognised too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fisheye.data.grouping import compute_descriptors, group_descriptors
from fisheye.data.manifest import ManifestRow, RecordedPhoto
from fisheye.data.progress import NO_PROGRESS, Progress

log = logging.getLogger(__name__)

SEEN_SPLITS = ("train", "val")
SEEN_DESCRIPTORS_NAME = "seen_descriptors.safetensors"


@dataclass
class SeenReport:
    """What the check kept and how it decided."""

    kept: list[Any]
    n_input: int
    n_same_bytes: int = 0
    n_near_duplicates: int = 0
    # "sha256+descriptors" (stored in the bundle), "sha256+grouping" (recorded photos found)
    method: str = "sha256"
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


def seen_photos(recorded: Sequence[RecordedPhoto]) -> list[RecordedPhoto]:
    """The recorded photos training or model selection saw, in the manifest's order."""
    return [r for r in recorded if r.split in SEEN_SPLITS]


def describe_seen(
    recorded: Sequence[RecordedPhoto], data_root: Path, progress: Progress = NO_PROGRESS
) -> np.ndarray:
    """Near-duplicate descriptors of the seen photos (float16; NaN rows: unreadable)."""
    seen = seen_photos(recorded)
    with progress.task("Describing the training photos", len(seen)) as advance:
        descriptors = compute_descriptors([Path(data_root) / r.path for r in seen], on_done=advance)
    width = next((len(d) for d in descriptors if d is not None), 0)
    out = np.full((len(seen), width), np.nan, dtype=np.float16)
    for i, d in enumerate(descriptors):
        if d is not None:
            out[i] = d
    return out


def exclude_seen(
    rows: Sequence[ManifestRow],
    recorded: Sequence[RecordedPhoto],
    seen_root: Path | None,
    progress: Progress = NO_PROGRESS,
    stored: np.ndarray | None = None,
) -> SeenReport:
    """Keep only the rows whose near-duplicate group the model never saw (see module doc).

    `rows` need `path`, `label` and `sha256`; `stored` holds the descriptors `describe_seen`
    wrote into the bundle; without them, `seen_root` is the folder the recorded paths are
    relative to (None or missing: only identical bytes can be recognised).
    """
    seen = seen_photos(recorded)
    seen_hashes = {r.sha256 for r in seen}
    report = SeenReport(kept=[], n_input=len(rows), n_recorded=len(seen))
    fresh = [r for r in rows if r.sha256 not in seen_hashes]
    report.n_same_bytes = len(rows) - len(fresh)

    if stored is not None and len(stored) == len(seen):
        known = [ManifestRow(Path(r.path), r.label, r.split, r.sha256, 0, 0) for r in seen]
        known_descriptors = [None if np.isnan(d).any() else d for d in stored]
        report.method = "sha256+descriptors"
    else:
        if stored is not None:
            report.notes.append(
                f"the bundle's stored descriptors are for {len(stored)} photos, its manifest "
                f"records {len(seen)} seen ones: ignored"
            )
        known = _found(seen, seen_root, report)
        if not known:
            report.kept = fresh
            return report
        with progress.task("Describing the training photos", len(known)) as advance:
            known_descriptors = compute_descriptors([r.path for r in known], on_done=advance)

    with progress.task("Describing the new photos", len(fresh)) as advance:
        fresh_descriptors = compute_descriptors([Path(r.path) for r in fresh], on_done=advance)
    candidates = [ManifestRow(Path(r.path), r.label, "", r.sha256, 0, 0, "") for r in fresh]
    grouped = group_descriptors([*known, *candidates], [*known_descriptors, *fresh_descriptors])
    seen_groups = {r.group for r in grouped[: len(known)]}
    for row, g in zip(fresh, grouped[len(known) :], strict=True):
        if g.group in seen_groups:
            report.n_near_duplicates += 1
        else:
            report.kept.append(row)
    return report


def _found(
    seen: Sequence[RecordedPhoto], seen_root: Path | None, report: SeenReport
) -> list[ManifestRow]:
    """The recorded photos that exist under `seen_root`, as rows with their full paths."""
    found = []
    if seen_root is not None and Path(seen_root).is_dir():
        paths = [(r, Path(seen_root) / r.path) for r in seen]
        found = [ManifestRow(p, r.label, r.split, r.sha256, 0, 0) for r, p in paths if p.is_file()]
    report.n_recorded_found = len(found)
    if not found:
        where = f" under {seen_root}" if seen_root is not None else ""
        report.notes.append(
            f"the recorded training photos were not found{where}: only photos with the same "
            "bytes as a training photo were excluded, not rotated or flipped copies; pass "
            "--seen-root with the folder the model was trained from"
        )
    else:
        report.method = "sha256+grouping"
        report.seen_root = str(seen_root)
        if len(found) < len(seen):
            report.notes.append(f"{len(seen) - len(found)} recorded training photos were not found")
    return found
