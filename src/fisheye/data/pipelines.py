"""Bring photos in: scan a photo tree, import it as a manifest, load rows for training."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from fisheye.data.grouping import group_near_duplicates
from fisheye.data.images import ImageDecodeError, decode_image, image_size, read_photo
from fisheye.data.layouts import detect_layout, enumerate_photos, enumerate_url_photos
from fisheye.data.manifest import (
    MANIFEST_NAME,
    ManifestRow,
    groups_across_splits,
    read_manifest,
    write_manifest,
)
from fisheye.data.progress import NO_PROGRESS, Progress
from fisheye.data.splits import grouped_split
from fisheye.data.storage import PhotoRef, is_url, list_files

log = logging.getLogger(__name__)

TINY_SIDE = 32

# Sets `group` on every row: photos that are copies of one source photo share a group.
Grouper = Callable[..., list[ManifestRow]]


@dataclass
class ScanResult:
    """What a scan of a photo tree found."""

    root: Path
    layout: str
    rows: list[ManifestRow]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: list[list[Path]] = field(default_factory=list)  # files with identical bytes
    tiny: list[Path] = field(default_factory=list)  # shorter side below TINY_SIDE pixels

    @property
    def n_duplicates(self) -> int:
        """Number of files that repeat an earlier file byte for byte."""
        return sum(len(paths) - 1 for paths in self.duplicates)


@dataclass
class ImportReport:
    """The outcome of `import_dataset`."""

    manifest_path: Path
    layout: str
    rows: list[ManifestRow]
    unreadable: list[tuple[Path, str]]
    duplicates: list[list[Path]]
    tiny: list[Path]
    n_groups: int
    copied: bool

    @property
    def n_duplicates(self) -> int:
        """Number of files that repeat an earlier file byte for byte."""
        return sum(len(paths) - 1 for paths in self.duplicates)

    def counts(self) -> dict[str, Counter[str]]:
        """Photo counts per class, per split ('' for unassigned)."""
        out: dict[str, Counter[str]] = defaultdict(Counter)
        for row in self.rows:
            out[row.label][row.split] += 1
        return dict(out)


# --------------------------------------------------------------------------- scanning


def _inspect(path: PhotoRef) -> tuple[str, int, int] | str:
    """(sha256, width, height) of a photo, or the reason it cannot be read."""
    try:
        data = read_photo(path)
        decode_image(data)  # a photo that cannot be decoded is reported, not indexed
        width, height = image_size(data)  # its own size, even if it was decoded smaller
    except ImageDecodeError as exc:
        return str(exc)
    return hashlib.sha256(data).hexdigest(), width, height


def _map_threaded(fn: Callable, items: Iterable, on_done: Callable[[], None]) -> list:
    workers = max(1, min(8, os.cpu_count() or 1))
    out = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(fn, items):
            out.append(result)
            on_done()
    return out


def scan_source(src: PhotoRef, progress: Progress = NO_PROGRESS) -> ScanResult:
    """Hash and decode every photo of a tree; report unreadable, duplicate and tiny photos.

    `src` is a local folder or an s3:// / gs:// prefix (class folders or pre-split).
    """
    if is_url(src):
        layout, items = enumerate_url_photos(str(src))
    else:
        src = Path(src).resolve()
        layout = detect_layout(src)
        items = enumerate_photos(src, layout)
    with progress.task("Hashing and decoding photos", len(items)) as advance:
        results = _map_threaded(_inspect, [p for p, _, _ in items], advance)
    rows: list[ManifestRow] = []
    unreadable: list[tuple[Path, str]] = []
    tiny: list[Path] = []
    by_hash: dict[str, list[Path]] = defaultdict(list)
    for (path, label, split), result in zip(items, results, strict=True):
        if isinstance(result, str):
            log.warning("skipping unreadable %s: %s", path, result)
            unreadable.append((path, result))
            continue
        digest, width, height = result
        rows.append(ManifestRow(path, label, split, digest, width, height, ""))
        by_hash[digest].append(path)
        if min(width, height) < TINY_SIDE:
            tiny.append(path)
    duplicates = [paths for paths in by_hash.values() if len(paths) > 1]
    return ScanResult(src, layout, rows, unreadable, duplicates, tiny)


# --------------------------------------------------------------------------- import


def _copy_photos(rows: list[ManifestRow], images_dir: Path) -> list[ManifestRow]:
    out = []
    taken: set[Path] = set()
    for row in rows:
        folder = images_dir / row.label
        name = PurePosixPath(str(row.path))
        target = folder / name.name
        if target in taken:
            target = folder / f"{name.stem}-{row.sha256[:12]}{name.suffix}"
        taken.add(target)
        folder.mkdir(parents=True, exist_ok=True)
        if is_url(row.path):
            target.write_bytes(read_photo(row.path))
        else:
            shutil.copy2(row.path, target)
        out.append(replace(row, path=target))
    return out


def import_dataset(
    src: PhotoRef,
    out: Path,
    *,
    copy: bool = False,
    val_fraction: float = 0.15,
    test_fraction: float = 0.0,
    seed: int = 42,
    resplit: bool = False,
    progress: Progress = NO_PROGRESS,
    grouper: Grouper | None = None,
) -> ImportReport:
    """Scan a photo tree, group near-duplicates, split, and write `out/manifest.csv`.

    A pre-split tree keeps its split unless `resplit`, which replaces it with the grouped one.
    `src` may be an s3:// or gs:// prefix: the manifest then lists the photos' URLs (or,
    with `copy`, the local copies).
    `grouper` replaces the fish-frame near-duplicate grouping (e.g. an embedding grouping).
    """
    src = src if is_url(src) else Path(src).resolve()
    out = Path(out).resolve()
    if isinstance(src, Path) and (out == src or src in out.parents):
        raise ValueError(f"the output folder {out} must not be inside the source folder {src}")
    scan = scan_source(src, progress=progress)
    if not scan.rows:
        raise ValueError(f"no readable photos found in {src}")
    rows = (grouper or group_near_duplicates)(scan.rows, progress=progress)
    if scan.layout != "presplit" or resplit:
        rows = grouped_split(rows, val_fraction, test_fraction, seed)
    else:
        crossing = groups_across_splits(rows)
        if crossing:
            log.warning(
                "%d near-duplicate groups span more than one split of the pre-split tree "
                "(its splits are kept as they are; --resplit replaces them with a grouped split)",
                crossing,
            )
    out.mkdir(parents=True, exist_ok=True)
    if copy:
        rows = _copy_photos(rows, out / "images")
    manifest_path = out / MANIFEST_NAME
    write_manifest(rows, manifest_path)
    return ImportReport(
        manifest_path=manifest_path,
        layout=scan.layout,
        rows=rows,
        unreadable=scan.unreadable,
        duplicates=scan.duplicates,
        tiny=scan.tiny,
        n_groups=len({r.group for r in rows}),
        copied=copy,
    )


# --------------------------------------------------------------------------- loading


def _listed_urls(rows: list[ManifestRow]) -> set[str]:
    """The objects that exist among the rows' URLs (one listing per folder, not per photo)."""
    folders = {str(r.path).rsplit("/", 1)[0] for r in rows if is_url(r.path)}
    found: set[str] = set()
    for folder in sorted(folders):
        try:
            found.update(list_files(folder) or [])
        except OSError as exc:
            log.warning("cannot list %s: %s", folder, exc)
    return found


def _existing(rows: list[ManifestRow]) -> list[ManifestRow]:
    urls = _listed_urls(rows)
    kept = []
    for row in rows:
        if (row.path in urls) if is_url(row.path) else row.path.is_file():
            kept.append(row)
        else:
            log.warning("skipping %s: listed in the manifest but not found", row.path)
    return kept


def load_labelled_folder(root: Path, progress: Progress = NO_PROGRESS) -> list[ManifestRow]:
    """Every readable photo under a folder of labelled photos, with split '' and no groups."""
    result = scan_source(Path(root), progress=progress)
    for path, reason in result.unreadable:
        log.warning("skipping unreadable %s: %s", path, reason)
    return [replace(r, split="", group="") for r in result.rows]


def load_dataset_rows(
    root: Path,
    val_fraction: float = 0.15,
    test_fraction: float = 0.0,
    seed: int = 42,
    progress: Progress = NO_PROGRESS,
    resplit: bool = False,
) -> list[ManifestRow]:
    """Rows with splits assigned from a manifest, a folder holding one, or a photo tree.

    A pre-split tree keeps its split unless `resplit`: then its photos are pooled, grouped
    and split again so that no near-duplicate group spans two splits.
    """
    root = Path(root)
    if root.is_file():
        rows = _existing(read_manifest(root))
    elif (root / MANIFEST_NAME).is_file():
        rows = _existing(read_manifest(root / MANIFEST_NAME))
    else:
        result = scan_source(root, progress=progress)
        for path, reason in result.unreadable:
            log.warning("skipping unreadable %s: %s", path, reason)
        rows = result.rows
        if result.layout == "presplit" and not resplit:
            return rows
        rows = group_near_duplicates(rows, progress=progress)
        return grouped_split(rows, val_fraction, test_fraction, seed)
    if rows and any(not r.split for r in rows):
        log.info("manifest has rows without a split; assigning a grouped split")
        if any(not r.group for r in rows):
            rows = group_near_duplicates(rows, progress=progress)
        rows = grouped_split(rows, val_fraction, test_fraction, seed)
    return rows
