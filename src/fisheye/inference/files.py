"""Collect the photo files named on a command line: files as given, folders recursively."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from fisheye.data.images import IMAGE_SUFFIXES

# Inside folders, files are picked by name, never by content: a text file named `x.jpg` is
# attempted (and reported as unreadable), so nothing that looks like a photo is silently
# skipped. Besides the suffixes FishEye reads, other common photo suffixes are attempted
# too, so they get a prediction or a clear error rather than vanishing.
IMAGE_LIKE_SUFFIXES = IMAGE_SUFFIXES | frozenset(
    {".jpe", ".jfif", ".gif", ".heic", ".heif", ".avif", ".jp2", ".pgm", ".ppm"}
)


class InputPathError(ValueError):
    """A path named by the user does not exist or names nothing FishEye can read."""


def is_image_like(path: Path) -> bool:
    """Whether a file found inside a folder should be attempted as a photo (by its name)."""
    return path.suffix.lower() in IMAGE_LIKE_SUFFIXES


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_folder(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune hidden folders (.git, .ipynb_checkpoints, ...) in place so walk skips them.
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in filenames:
            if _is_hidden(name):
                continue
            path = Path(dirpath) / name
            if is_image_like(path) and (path.is_file() or path.is_symlink()):
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def collect_image_paths(inputs: Iterable[str | Path]) -> list[Path]:
    """Photo paths from files (taken as given) and folders (recursive, sorted, no hidden files).

    Files named explicitly are always attempted, whatever their suffix. Duplicates keep
    their first position. Raises InputPathError for a path that does not exist.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            candidates = _walk_folder(path)
        elif path.exists() or path.is_symlink():
            candidates = [path]
        else:
            raise InputPathError(f"no such file or folder: {path}")
        for candidate in candidates:
            key = Path(os.path.abspath(candidate))
            if key not in seen:
                seen.add(key)
                out.append(candidate)
    return out
