"""The dataset manifest: one row per photo (path, class, split, sha256, size, group)."""

from __future__ import annotations

import csv
import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fisheye.data.storage import PhotoRef, as_ref, is_url

SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.csv"
COLUMNS = ("path", "class", "split", "sha256", "width", "height", "group")
REQUIRED_COLUMNS = ("path", "class", "split", "sha256", "width", "height")


class ManifestError(ValueError):
    """A manifest file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class ManifestRow:
    """One photo of the dataset."""

    path: PhotoRef  # a local path, or an s3:// / gs:// URL
    label: str
    split: str
    sha256: str
    width: int
    height: int
    group: str = ""


def _relative_if_possible(path: PhotoRef, folder: Path) -> str:
    if is_url(path):
        return str(path)
    path = Path(path)
    if path.is_absolute():
        try:
            return path.resolve().relative_to(folder.resolve()).as_posix()
        except ValueError:
            return str(path)
    return path.as_posix()


def write_manifest(rows: list[ManifestRow], path: Path) -> None:
    """Write rows as a CSV manifest; paths under the manifest's folder are stored relative."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(
                [
                    _relative_if_possible(row.path, folder),
                    row.label,
                    row.split,
                    row.sha256,
                    row.width,
                    row.height,
                    row.group,
                ]
            )
    os.replace(tmp, path)


def read_manifest(path: Path) -> list[ManifestRow]:
    """Read a CSV manifest; relative paths are resolved against the manifest's folder.

    A path may also be an object-storage URL (s3://bucket/photo.jpg), kept as it is.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    folder = path.parent.resolve()
    rows: list[ManifestRow] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ManifestError(
                f"manifest {path} lacks column(s) {', '.join(missing)}; "
                f"expected columns: {','.join(COLUMNS)} (found: {','.join(header) or 'none'})"
            )
        reader.fieldnames = header
        for lineno, rec in enumerate(reader, start=2):
            try:
                split = (rec["split"] or "").strip()
                if split and split not in SPLITS:
                    raise ValueError(f"split must be one of {SPLITS} or empty, got {split!r}")
                p = as_ref(rec["path"])
                if isinstance(p, Path) and not p.is_absolute():
                    p = folder / p
                rows.append(
                    ManifestRow(
                        path=p,
                        label=rec["class"],
                        split=split,
                        sha256=(rec["sha256"] or "").strip(),
                        width=int(rec["width"] or 0),
                        height=int(rec["height"] or 0),
                        group=(rec.get("group") or "").strip(),
                    )
                )
            except (TypeError, ValueError) as exc:
                raise ManifestError(f"{path}, line {lineno}: {exc}") from exc
    return rows


def manifest_hash(rows: Iterable[ManifestRow]) -> str:
    """The dataset identity: sha256 over sorted 'class,split,sha256' lines (paths ignored)."""
    lines = sorted(f"{r.label},{r.split},{r.sha256}" for r in rows)
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def groups_across_splits(rows: Iterable[ManifestRow]) -> int:
    """How many near-duplicate groups have photos in more than one split (leakage)."""
    splits: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        splits[row.group].add(row.split)
    return sum(1 for s in splits.values() if len(s) > 1)


TRAINING_MANIFEST_NAME = "training_manifest.csv"
TRAINING_COLUMNS = ("path", "sha256", "class", "split", "group")


@dataclass(frozen=True)
class RecordedPhoto:
    """One photo a model was trained, selected or tested on, as its bundle records it."""

    path: str  # relative to the data root, POSIX separators
    sha256: str
    label: str
    split: str
    group: str


def data_root_of(root: Path) -> Path:
    """The folder photo paths are recorded against: a manifest's folder, else the root itself."""
    root = Path(root)
    return root.parent if root.is_file() else root


def write_training_manifest(rows: Iterable[ManifestRow], path: Path, data_root: Path) -> None:
    """Write the photos a model saw (path relative to `data_root`, sha256, class, split, group)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    order = {split: i for i, split in enumerate(SPLITS)}
    ordered = sorted(rows, key=lambda r: (order.get(r.split, len(order)), str(r.path)))
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(TRAINING_COLUMNS)
        for row in ordered:
            rel = _relative_if_possible(row.path, Path(data_root))
            writer.writerow([rel, row.sha256, row.label, row.split, row.group])
    os.replace(tmp, path)


def read_training_manifest(text: str) -> list[RecordedPhoto]:
    """Parse a training manifest's text (ManifestError if its columns are wrong)."""
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [c for c in TRAINING_COLUMNS if c not in header]
    if missing:
        raise ManifestError(
            f"training manifest lacks column(s) {', '.join(missing)}; "
            f"expected {','.join(TRAINING_COLUMNS)}"
        )
    return [
        RecordedPhoto(rec["path"], rec["sha256"], rec["class"], rec["split"], rec["group"])
        for rec in reader
    ]
