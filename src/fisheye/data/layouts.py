"""Photo-tree layouts (Kaggle download, pre-split, class folders): detect and enumerate."""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

from fisheye.data.files import walk_image_files
from fisheye.data.images import IMAGE_SUFFIXES, is_image_path
from fisheye.data.manifest import SPLITS
from fisheye.data.storage import list_files

log = logging.getLogger(__name__)

LAYOUTS = ("kaggle", "presplit", "class_folders")


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


def enumerate_photos(src: Path, layout: str) -> list[tuple[Path, str, str]]:
    """(path, class, split) for every candidate photo file of a tree of the given layout."""
    src = Path(src)
    items: list[tuple[Path, str, str]] = []
    if layout == "presplit":
        for split_dir in _visible_dirs(src):
            split = split_dir.name.lower()
            if split not in SPLITS:
                log.warning("ignoring %s: not a split folder (train/val/test)", split_dir)
                continue
            for cls in _visible_dirs(split_dir):
                photos = walk_image_files(cls, IMAGE_SUFFIXES, recursive=False)
                items += [(p, cls.name, split) for p in photos]
    elif layout == "kaggle":
        for label, folder in _kaggle_class_dirs(src):
            photos = walk_image_files(folder, IMAGE_SUFFIXES, recursive=False)
            items += [(p, label, "") for p in photos]
    elif layout == "class_folders":
        for cls in _visible_dirs(src):
            photos = walk_image_files(cls, IMAGE_SUFFIXES, recursive=True)
            items += [(p, cls.name, "") for p in photos]
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    return items


def enumerate_url_photos(prefix: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The layout and (url, class, split) items of photos under an object-storage prefix.

    Class folders (`<prefix>/<Class>/...`) or pre-split (`<prefix>/train|val|test/<Class>/...`);
    hidden names are skipped and photos are picked by suffix, as for local folders.
    """
    root = prefix.rstrip("/") + "/"
    found = list_files(prefix.rstrip("/"))
    if found is None:
        raise ValueError(f"no such object-storage prefix: {prefix}")
    parts = []
    for url in found:
        rel = url[len(root) :].split("/") if url.startswith(root) else []
        if (
            len(rel) >= 2
            and not any(p.startswith(".") for p in rel)
            and is_image_path(PurePosixPath(url))
        ):
            parts.append((url, rel))
    presplit = bool(parts) and all(r[0].lower() in SPLITS and len(r) >= 3 for _, r in parts)
    if presplit:
        return "presplit", [(url, r[1], r[0].lower()) for url, r in parts]
    if not parts:
        raise ValueError(
            f"no photos in class folders under {prefix}: expected <prefix>/<Class>/*.jpg "
            "or <prefix>/train|val|test/<Class>/*.jpg"
        )
    return "class_folders", [(url, r[0], "") for url, r in parts]
