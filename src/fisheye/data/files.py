"""Find photo files: the one folder walker, and the paths named on a command line."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterable
from pathlib import Path

from fisheye.data.images import IMAGE_SUFFIXES
from fisheye.data.storage import PhotoRef, is_url, list_files

log = logging.getLogger(__name__)

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


def walk_image_files(
    root: Path,
    suffixes: Collection[str] = IMAGE_LIKE_SUFFIXES,
    *,
    recursive: bool = True,
) -> list[Path]:
    """Files under a folder whose name ends in one of `suffixes`, sorted, hidden ones skipped.

    Files and folders whose name starts with '.' are skipped; symlinks are listed (even
    broken ones, so that they are reported rather than silently dropped); the order is by
    path parts below `root`. `suffixes` are lower case and matched case-insensitively.
    """
    root = Path(root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune hidden folders (.git, .ipynb_checkpoints, ...) in place so walk skips them.
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d)) if recursive else []
        for name in filenames:
            if _is_hidden(name):
                continue
            path = Path(dirpath) / name
            if path.suffix.lower() not in suffixes:
                log.debug("ignoring non-photo file %s", path)
                continue
            if path.is_file() or path.is_symlink():
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _url_photos(url: str) -> list[str]:
    """The photos under an object-storage prefix (by name, hidden ones skipped), or the object."""
    try:
        found = list_files(url)
    except OSError as exc:
        raise InputPathError(f"cannot list {url}: {exc}") from exc
    if found is None:
        raise InputPathError(f"no such object or prefix: {url}")
    if found == [url]:
        return found
    prefix = url.rstrip("/") + "/"
    return [
        u
        for u in found
        if not any(_is_hidden(part) for part in u[len(prefix) :].split("/"))
        and is_image_like(Path(u))
    ]


def collect_image_paths(inputs: Iterable[str | Path]) -> list[PhotoRef]:
    """Photo paths from files (taken as given) and folders (recursive, sorted, no hidden files).

    Files named explicitly are always attempted, whatever their suffix. Duplicates keep
    their first position. `s3://` and `gs://` URLs name an object or a prefix (a "folder").
    Raises InputPathError for a path that does not exist.
    """
    out: list[PhotoRef] = []
    seen: set[PhotoRef] = set()
    for item in inputs:
        if is_url(item):
            for url in _url_photos(item):
                if url not in seen:
                    seen.add(url)
                    out.append(url)
            continue
        path = Path(item)
        if path.is_dir():
            candidates = walk_image_files(path, IMAGE_LIKE_SUFFIXES, recursive=True)
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
