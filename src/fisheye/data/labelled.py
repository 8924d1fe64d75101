"""Labelled photos to measure a model on: a class-per-folder tree or a manifest CSV."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fisheye.data.files import collect_image_paths
from fisheye.data.manifest import read_manifest
from fisheye.data.pipelines import scan_source

ALL_SPLITS = "all"


class LabelledDataError(ValueError):
    """Labelled photos cannot be used with a model (unknown classes, no photos, no split)."""


class LabelledPhoto(Protocol):
    """What measuring needs from a data row (a ManifestRow fits)."""

    path: Path
    label: str


def select_split(rows: Sequence[Any], split: str) -> list[Any]:
    """Rows of one split; `all`, or data without any split column, keeps every row."""
    if split == ALL_SPLITS:
        return list(rows)
    splits = {getattr(r, "split", None) or "" for r in rows}
    if splits <= {""}:
        return list(rows)
    chosen = [r for r in rows if (getattr(r, "split", None) or "") == split]
    if not chosen:
        available = ", ".join(sorted(s or "(none)" for s in splits))
        raise LabelledDataError(
            f"the data has no rows in split {split!r}; available splits: {available}. "
            f"Choose one with --split, or --split {ALL_SPLITS} for every row."
        )
    return chosen


@dataclass
class LabelledData:
    """Labelled rows, plus the photos already found unreadable while listing them."""

    rows: list[Any]
    source: Path
    split: str | None = None
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """What metrics.json records about the data."""
        return {"data": {"path": str(self.source.resolve()), "split": self.split}}


def load_labelled(data: Path, split: str = "val") -> LabelledData:
    """Rows from a class-per-folder tree or a manifest CSV; split selection when it has splits."""
    data = Path(data)
    unreadable: list[tuple[Path, str]] = []
    if data.is_dir():
        result = scan_source(data)
        rows = list(result.rows)
        unreadable = [(Path(p), str(reason)) for p, reason in result.unreadable]
    elif data.is_file():
        rows = read_manifest(data)
    else:
        raise LabelledDataError(f"no such file or folder: {data}")
    has_splits = any(getattr(r, "split", None) for r in rows)
    rows = select_split(rows, split)
    if has_splits and split != ALL_SPLITS and data.is_dir():
        # Pre-split trees (train/val/<class>): keep the unreadable photos of the chosen split.
        unreadable = [(p, e) for p, e in unreadable if _first_part(p, data) == split]
    return LabelledData(rows, data, split if has_splits else None, unreadable)


def _first_part(path: Path, root: Path) -> str | None:
    try:
        return Path(path).resolve().relative_to(root.resolve()).parts[0]
    except (ValueError, IndexError):
        return None


def check_classes(rows: Sequence[LabelledPhoto], classes: Sequence[str]) -> None:
    """Raise LabelledDataError if any row's label is not one of the model's classes."""
    unknown = sorted({r.label for r in rows} - set(classes))
    if unknown:
        raise LabelledDataError(
            f"the data has classes the model does not know: {', '.join(map(repr, unknown))}. "
            f"The model's classes are: {', '.join(map(repr, classes))}. "
            "Class folder names must match the bundle's classes exactly."
        )


def labelled_paths(root: Path, classes: Sequence[str]) -> list[tuple[Path, str | None]]:
    """Photos under `root`, labelled by their first folder when it is one of `classes`."""
    known = set(classes)
    out: list[tuple[Path, str | None]] = []
    for p in collect_image_paths([root]):
        parts = p.relative_to(root).parts
        out.append((p, parts[0] if len(parts) > 1 and parts[0] in known else None))
    return out


def train_val_dirs(data: Path, val: Path | None = None) -> tuple[Path, Path | None]:
    """(train, val) folders: data/train + data/val, or data + its sibling val/, or `val`."""
    if val is not None:
        return data, val
    if (data / "train").is_dir():
        return data / "train", (data / "val") if (data / "val").is_dir() else None
    sibling = data.parent / "val"
    if data.name == "train" and sibling.is_dir():
        return data, sibling
    return data, None


def reference_photos(
    data: Path, val: Path | None, classes: Sequence[str], *, min_train: int = 4
) -> tuple[list[tuple[Path, str | None]], list[tuple[Path, str | None]] | None]:
    """(train, val) photos to fit a drift reference on, labelled by folder where known.

    `data` may be a manifest CSV: its train split is fitted on, its val split (unless `val`
    is given) sets the OOD threshold, and its test split is left alone.
    """
    if Path(data).is_file():
        rows = read_manifest(data)
        train_items = [(r.path, r.label) for r in rows if r.split == "train"]
        if len(train_items) < min_train:
            raise LabelledDataError(f"need at least {min_train} train-split photos in {data}")
        if val is not None:
            return train_items, labelled_paths(val, classes)
        val_items = [(r.path, r.label) for r in rows if r.split == "val"]
        return train_items, val_items or None
    train_dir, val_dir = train_val_dirs(data, val)
    train_items = labelled_paths(train_dir, classes)
    if len(train_items) < min_train:
        raise LabelledDataError(f"need at least {min_train} training photos in {train_dir}")
    return train_items, labelled_paths(val_dir, classes) if val_dir else None
