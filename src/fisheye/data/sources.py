"""Where photos come from: the Kaggle download, an import of a photo tree, a synthetic set."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from fisheye.data.images import ImageDecodeError, decode_image, is_image_path
from fisheye.data.manifest import MANIFEST_NAME, SPLITS, ManifestRow, write_manifest

logger = logging.getLogger(__name__)

KAGGLE_HANDLE = "crowww/a-large-scale-fish-dataset"
LAYOUTS = ("kaggle", "presplit", "class_folders")
TINY_SIDE = 32


class DownloadError(RuntimeError):
    """The dataset could not be downloaded; the message says what is missing and what to do."""


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


# --------------------------------------------------------------------------- layouts


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and is_image_path(p) for p in folder.iterdir())


def _kaggle_class_dirs(src: Path) -> list[tuple[str, Path]]:
    """(class, photo folder) pairs of a Kaggle `Fish_Dataset/<Class>/<Class>/` tree, or []."""
    candidates = [src]
    frontier = [src]
    for _ in range(3):
        nxt = []
        for folder in frontier:
            for sub in _visible_dirs(folder):
                if sub.name.lower() == "fish_dataset" or folder == src:
                    nxt.append(sub)
        candidates.extend(nxt)
        frontier = nxt
    for base in candidates:
        if base.name.lower() == "na_fish_dataset":
            continue
        pairs = []
        for cls in _visible_dirs(base):
            inner = cls / cls.name
            if inner.is_dir() and _has_images(inner):
                pairs.append((cls.name, inner))
        if pairs:
            return pairs
    return []


def detect_layout(src: Path) -> str:
    """Which layout a photo tree has: 'kaggle', 'presplit' or 'class_folders'."""
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"{src} is not a folder of photos")
    subdirs = _visible_dirs(src)
    split_dirs = [d for d in subdirs if d.name.lower() in SPLITS]
    if split_dirs and any(_has_images(c) for d in split_dirs for c in _visible_dirs(d)):
        return "presplit"
    if _kaggle_class_dirs(src):
        return "kaggle"
    if any(_has_images(d) for d in subdirs):
        return "class_folders"
    raise ValueError(
        f"cannot recognise the layout of {src}: expected one of "
        "<root>/<Class>/*.jpg (class folders), <root>/train|val|test/<Class>/*.jpg "
        "(pre-split), or the Kaggle download Fish_Dataset/<Class>/<Class>/*.png"
    )


def _image_files(folder: Path, recursive: bool = False) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    files = []
    for p in it:
        if p.name.startswith(".") or not p.is_file():
            continue
        if is_image_path(p):
            files.append(p)
        else:
            logger.debug("ignoring non-photo file %s", p)
    return sorted(files)


def _enumerate(src: Path, layout: str) -> list[tuple[Path, str, str]]:
    """(path, class, split) for every candidate photo file of a tree."""
    items: list[tuple[Path, str, str]] = []
    if layout == "presplit":
        for split_dir in _visible_dirs(src):
            split = split_dir.name.lower()
            if split not in SPLITS:
                logger.warning("ignoring %s: not a split folder (train/val/test)", split_dir)
                continue
            for cls in _visible_dirs(split_dir):
                items += [(p, cls.name, split) for p in _image_files(cls)]
    elif layout == "kaggle":
        for label, folder in _kaggle_class_dirs(src):
            items += [(p, label, "") for p in _image_files(folder)]
    elif layout == "class_folders":
        for cls in _visible_dirs(src):
            items += [(p, cls.name, "") for p in _image_files(cls, recursive=True)]
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    return items


# --------------------------------------------------------------------------- scanning


@contextmanager
def progress_task(description: str, total: int, enabled: bool) -> Iterator[Callable[[], None]]:
    """A rich progress bar (or nothing when disabled); yields a function that advances it."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def _inspect(path: Path) -> tuple[str, int, int] | str:
    """(sha256, width, height) of a photo, or the reason it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = decode_image(data)
    except ImageDecodeError as exc:
        return str(exc)
    return digest, image.width, image.height


def _map_threaded(fn: Callable, items: Iterable, on_done: Callable[[], None]) -> list:
    workers = max(1, min(8, os.cpu_count() or 1))
    out = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(fn, items):
            out.append(result)
            on_done()
    return out


def scan_source(src: Path, progress: bool = True) -> ScanResult:
    """Hash and decode every photo of a tree; report unreadable, duplicate and tiny photos."""
    src = Path(src).resolve()
    layout = detect_layout(src)
    items = _enumerate(src, layout)
    with progress_task("Hashing and decoding photos", len(items), progress) as advance:
        results = _map_threaded(_inspect, [p for p, _, _ in items], advance)
    rows: list[ManifestRow] = []
    unreadable: list[tuple[Path, str]] = []
    tiny: list[Path] = []
    by_hash: dict[str, list[Path]] = defaultdict(list)
    for (path, label, split), result in zip(items, results, strict=True):
        if isinstance(result, str):
            logger.warning("skipping unreadable %s: %s", path, result)
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
        target = folder / row.path.name
        if target in taken:
            target = folder / f"{row.path.stem}-{row.sha256[:12]}{row.path.suffix}"
        taken.add(target)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(row.path, target)
        out.append(replace(row, path=target))
    return out


def import_dataset(
    src: Path,
    out: Path,
    *,
    copy: bool = False,
    val_fraction: float = 0.15,
    test_fraction: float = 0.0,
    seed: int = 42,
    resplit: bool = False,
    progress: bool = True,
) -> ImportReport:
    """Scan a photo tree, group near-duplicates, split, and write `out/manifest.csv`.

    A pre-split tree keeps its split unless `resplit`, which replaces it with the grouped one.
    """
    from fisheye.data.grouping import group_near_duplicates
    from fisheye.data.splits import grouped_split

    src = Path(src).resolve()
    out = Path(out).resolve()
    if out == src or src in out.parents:
        raise ValueError(f"the output folder {out} must not be inside the source folder {src}")
    scan = scan_source(src, progress=progress)
    if not scan.rows:
        raise ValueError(f"no readable photos found in {src}")
    rows = group_near_duplicates(scan.rows, progress=progress)
    if scan.layout != "presplit" or resplit:
        rows = grouped_split(rows, val_fraction, test_fraction, seed)
    else:
        crossing = _groups_across_splits(rows)
        if crossing:
            logger.warning(
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


def _groups_across_splits(rows: list[ManifestRow]) -> int:
    splits: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        splits[row.group].add(row.split)
    return sum(1 for s in splits.values() if len(s) > 1)


def groups_across_splits(rows: list[ManifestRow]) -> int:
    """How many near-duplicate groups have photos in more than one split (leakage)."""
    return _groups_across_splits(rows)


# --------------------------------------------------------------------------- download


def download_dataset(out: Path) -> Path:
    """Download the Kaggle 'A Large Scale Fish Dataset' into `out`; returns its folder."""
    out = Path(out)
    hint = (
        "Set KAGGLE_USERNAME and KAGGLE_KEY (or put kaggle.json in ~/.kaggle/), check the "
        "network, or download https://www.kaggle.com/datasets/"
        f"{KAGGLE_HANDLE} by hand, unzip it and run `fisheye data import <folder> --out DIR`."
    )
    try:
        import kagglehub
    except ImportError as exc:  # pragma: no cover - kagglehub is a dependency
        raise DownloadError(f"kagglehub is not installed ({exc}). {hint}") from exc
    out.mkdir(parents=True, exist_ok=True)
    target = out / "a-large-scale-fish-dataset"
    try:
        path = kagglehub.dataset_download(KAGGLE_HANDLE, output_dir=str(target))
    except Exception as exc:  # noqa: BLE001 - any failure becomes one clear message
        raise DownloadError(
            f"could not download {KAGGLE_HANDLE}: {type(exc).__name__}: {exc}. {hint}"
        ) from exc
    return Path(path)


# --------------------------------------------------------------------------- synthetic

SYNTHETIC_KINDS = ("round", "long", "striped", "spotted", "triangle", "ring", "cross", "checked")
# Each kind has its own body colour so that a tiny CNN separates them within an epoch.
_KIND_COLOURS = {
    "round": (235, 140, 40),
    "long": (200, 210, 220),
    "striped": (240, 220, 60),
    "spotted": (220, 60, 60),
    "triangle": (90, 200, 90),
    "ring": (200, 90, 220),
    "cross": (60, 220, 220),
    "checked": (250, 250, 250),
}
SYNTHETIC_README = """SYNTHETIC DATA - not photos of fish.

Generated by `fisheye data synth` (fisheye.data.sources.write_synthetic) for tests and demos.
Each class folder holds drawn shapes; every synthetic "source" picture is saved as several
rotated/flipped copies named <class>_s<source>_v<variant>.<ext>, so near-duplicate grouping can
be checked: files with the same <class>_s<source> prefix come from one source picture.
Settings: per_class={per_class} classes={classes} size={size} variants={variants} seed={seed}
"""


def synthetic_class_names(classes: int) -> list[str]:
    """Names of the synthetic classes, e.g. 'synthetic-round'."""
    if not 1 <= classes <= len(SYNTHETIC_KINDS):
        raise ValueError(f"classes must be between 1 and {len(SYNTHETIC_KINDS)}, got {classes}")
    return [f"synthetic-{k}" for k in SYNTHETIC_KINDS[:classes]]


def _draw_source(kind: str, rng: random.Random, width: int, height: int) -> Image.Image:
    """One synthetic source picture in a width x height frame."""
    bg = (rng.randint(10, 90), rng.randint(30, 110), rng.randint(110, 210))
    img = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(img)
    # Background clutter makes sources of one class distinct from each other.
    for _ in range(rng.randint(3, 6)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.05, 0.25) * height
        shade = tuple(max(0, min(255, c + rng.randint(-70, 70))) for c in bg)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=shade)
    colour = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in _KIND_COLOURS[kind])
    cx = width / 2 + rng.uniform(-0.12, 0.12) * height
    cy = height / 2 + rng.uniform(-0.12, 0.12) * height
    s = rng.uniform(0.22, 0.34) * height
    dark = (20, 20, 20)
    if kind == "round":
        draw.ellipse([cx - s, cy - s, cx + s, cy + s], fill=colour)
    elif kind == "long":
        draw.ellipse([cx - 1.6 * s, cy - 0.4 * s, cx + 1.6 * s, cy + 0.4 * s], fill=colour)
    elif kind == "striped":
        draw.rectangle([cx - 1.3 * s, cy - 0.7 * s, cx + 1.3 * s, cy + 0.7 * s], fill=colour)
        for k in range(-2, 3):
            x = cx + k * 0.5 * s
            draw.rectangle([x - 0.1 * s, cy - 0.7 * s, x + 0.1 * s, cy + 0.7 * s], fill=dark)
    elif kind == "spotted":
        draw.ellipse([cx - 1.2 * s, cy - 0.8 * s, cx + 1.2 * s, cy + 0.8 * s], fill=colour)
        for _ in range(6):
            x, y = cx + rng.uniform(-0.8, 0.8) * s, cy + rng.uniform(-0.5, 0.5) * s
            draw.ellipse([x - 0.12 * s, y - 0.12 * s, x + 0.12 * s, y + 0.12 * s], fill=dark)
    elif kind == "triangle":
        draw.polygon([(cx - s, cy + s), (cx + s, cy + s), (cx, cy - s)], fill=colour)
    elif kind == "ring":
        draw.ellipse([cx - s, cy - s, cx + s, cy + s], outline=colour, width=max(2, int(s / 3)))
    elif kind == "cross":
        draw.rectangle([cx - s, cy - 0.25 * s, cx + s, cy + 0.25 * s], fill=colour)
        draw.rectangle([cx - 0.25 * s, cy - s, cx + 0.25 * s, cy + s], fill=colour)
    elif kind == "checked":
        step = s / 2
        for i in range(-2, 2):
            for j in range(-2, 2):
                fill = colour if (i + j) % 2 == 0 else dark
                x0, y0 = cx + i * step, cy + j * step
                draw.rectangle([x0, y0, x0 + step, y0 + step], fill=fill)
    # Soft edges, like a photo: rotated copies then differ less by resampling noise.
    return img.filter(ImageFilter.GaussianBlur(height / 25))


def write_synthetic(
    out: Path,
    per_class: int = 12,
    *,
    classes: int = 3,
    size: int = 64,
    variants: int = 3,
    seed: int = 0,
) -> Path:
    """Write a SYNTHETIC class-per-folder set of drawn shapes (rotated/flipped copies)."""
    from fisheye.data.grouping import FISH_FRAME_ASPECT

    if per_class < 1 or variants < 1 or size < 8:
        raise ValueError("per_class and variants must be >= 1 and size >= 8")
    out = Path(out)
    names = synthetic_class_names(classes)
    rng = random.Random(seed)
    # Like the real data: rotate inside a 4:3-ish frame, then squash to size x size.
    frame_w, frame_h = round(2 * size * FISH_FRAME_ASPECT), 2 * size
    for label in names:
        kind = label.removeprefix("synthetic-")
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        n_sources = math.ceil(per_class / variants)
        written = 0
        for source in range(n_sources):
            base = _draw_source(kind, rng, frame_w, frame_h)
            ext = ".png" if source % 2 == 0 else ".jpg"
            for variant in range(variants):
                if written == per_class:
                    break
                img = base
                if variant > 0:
                    if rng.random() < 0.5:
                        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                    angle = rng.uniform(15, 345)
                    img = img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
                img = img.resize((size, size), Image.Resampling.LANCZOS)
                name = folder / f"{label}_s{source:03d}_v{variant}{ext}"
                if ext == ".jpg":
                    img.save(name, quality=92)
                else:
                    img.save(name)
                written += 1
    readme = SYNTHETIC_README.format(
        per_class=per_class, classes=classes, size=size, variants=variants, seed=seed
    )
    (out / "README.txt").write_text(readme, encoding="utf-8")
    return out
