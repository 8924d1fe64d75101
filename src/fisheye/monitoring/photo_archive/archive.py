"""The photo archive: photos kept for the next model, content-addressed, in a folder or in
object storage (`s3://`, `gs://`, or any fsspec URL).

A photo's key is the sha256 of its bytes; it is stored at `aa/bb/<sha256>.<ext>` (the first
two pairs of hex digits as folders, the suffix from the photo's format), so the archive is
also a plain folder of photos that `fisheye data import` and any image tool read. The same
bytes put again are found, not written twice. A write is atomic: a folder gets a temporary
file, synced, then renamed into place; an object store makes an upload visible whole or not
at all. `prune` deletes the photos older than an age and then the oldest beyond a total
size. Object storage goes through fsspec (the `archive` extra: fsspec, s3fs, gcsfs), with
the storage libraries' own credentials (AWS_* or ~/.aws, GOOGLE_APPLICATION_CREDENTIALS).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

# The packages that open each scheme (the `archive` extra installs them).
DRIVERS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
EXTRA = "archive"
TEMP_MAX_AGE_S = 3600.0  # a folder's temporary file this old was left by a crash: deleted
_NAME = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})\.([a-z]+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ArchiveError(OSError):
    """The archive cannot be used (missing driver, bad location), or a photo in it is
    missing or damaged."""


class PhotoNotFoundError(ArchiveError, KeyError):
    """No photo with this key is in the archive (never kept, or pruned since)."""


@dataclass(frozen=True)
class StoredPhoto:
    """One photo in the archive."""

    sha256: str
    path: str  # inside the archive: aa/bb/<sha256>.<ext>
    size: int
    mtime: float  # unix seconds, when it was written


@dataclass(frozen=True)
class PutResult:
    """What `put_photo` did: the photo's key, and whether its bytes were written now
    (False: the archive held them already)."""

    sha256: str
    written: bool


@dataclass(frozen=True)
class PruneResult:
    """What `prune` deleted and what the archive holds after it."""

    deleted: int
    deleted_bytes: int
    kept: int
    kept_bytes: int


def photo_suffix(data: bytes) -> str:
    """The file suffix of a photo's format, from its first bytes ("bin" when unknown)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tif"
    if data.startswith(b"BM"):
        return "bmp"
    return "bin"


def photo_path(sha256: str, suffix: str) -> str:
    """Where a photo lives inside the archive: aa/bb/<sha256>.<suffix>."""
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.{suffix}"


def _check_key(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise ValueError(f"not a photo key (64 lowercase hex digits): {sha256!r}")
    return sha256


def is_archive_url(location: str) -> bool:
    """Whether `location` is a URL (object storage) rather than a folder."""
    return "://" in location


def check_location(location: str) -> str:
    """`location` if the archive there can be opened on this machine (its storage driver is
    installed); ArchiveError naming what to install otherwise. Reaches no network."""
    if not location.strip():
        raise ArchiveError("the photo archive's location is empty")
    if not is_archive_url(location):
        return location
    scheme = location.split("://", 1)[0].lower()
    for package in ("fsspec", DRIVERS.get(scheme)):
        if package is not None and importlib.util.find_spec(package) is None:
            raise ArchiveError(
                f"a photo archive at {scheme}:// needs {package}: pip install 'fisheye[{EXTRA}]'"
            )
    return location


def open_archive(location: str | os.PathLike) -> PhotoArchive:
    """The archive at a folder, or at an object-storage URL (s3://bucket/prefix, gs://...)."""
    text = str(location)
    check_location(text)
    if not is_archive_url(text):
        return LocalArchive(Path(text))
    import fsspec.core

    try:
        fs, root = fsspec.core.url_to_fs(text)
    except ImportError as exc:
        raise ArchiveError(
            f"a photo archive at {text} needs its fsspec driver: pip install 'fisheye[{EXTRA}]'"
        ) from exc
    except ValueError as exc:
        raise ArchiveError(f"not a usable photo archive URL: {text} ({exc})") from exc
    return FsspecArchive(fs, root, location=text)


class PhotoArchive(ABC):
    """Photos by the sha256 of their bytes (`put`, `get`), listed (`photos`) and pruned."""

    location: str

    def put(self, data: bytes) -> str:
        """Keep a photo; returns its key (the sha256 of its bytes)."""
        return self.put_photo(data).sha256

    def put_photo(self, data: bytes) -> PutResult:
        """Keep a photo (once: the same bytes again are found, not written)."""
        sha256 = hashlib.sha256(data).hexdigest()
        path = photo_path(sha256, photo_suffix(data))
        # A file of the wrong size is one a crash cut short: written again.
        if self._size(path) == len(data):
            return PutResult(sha256, False)
        self._write(path, data)
        return PutResult(sha256, True)

    def get(self, sha256: str) -> bytes:
        """A kept photo's bytes (PhotoNotFoundError when absent; ArchiveError when damaged)."""
        path = self.find(sha256)
        if path is None:
            raise PhotoNotFoundError(f"no photo {sha256} in the archive {self.location}")
        data = self._read(path)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ArchiveError(f"the photo {sha256} in {self.location} is damaged")
        return data

    def find(self, sha256: str) -> str | None:
        """A kept photo's path inside the archive, or None."""
        _check_key(sha256)
        found = self._matching(f"{sha256[:2]}/{sha256[2:4]}", f"{sha256}.")
        return min(found) if found else None

    @abstractmethod
    def photos(self) -> list[StoredPhoto]:
        """Every photo in the archive."""

    def prune(self, max_bytes: int, max_age_days: float, now: float | None = None) -> PruneResult:
        """Delete the photos older than `max_age_days`, then the oldest until the rest fit in
        `max_bytes`."""
        now = time.time() if now is None else now
        cutoff = now - max_age_days * 86400
        photos = sorted(self.photos(), key=lambda p: (p.mtime, p.path))
        total = sum(p.size for p in photos)
        deleted = deleted_bytes = 0
        for photo in photos:  # oldest first
            if photo.mtime >= cutoff and total <= max_bytes:
                break
            self._delete(photo.path)
            total -= photo.size
            deleted += 1
            deleted_bytes += photo.size
        self._clean(now)
        return PruneResult(deleted, deleted_bytes, len(photos) - deleted, total)

    def url(self, path: str) -> str:
        """Where a photo of the archive is, for other tools (a file path or a URL)."""
        return f"{self.location.rstrip('/')}/{path}"

    # -- what a backend provides -------------------------------------------------------------
    @abstractmethod
    def _size(self, path: str) -> int | None:
        """The size of the file at `path`, or None when there is none."""

    @abstractmethod
    def _write(self, path: str, data: bytes) -> None:
        """Write `data` at `path`, whole or not at all."""

    @abstractmethod
    def _read(self, path: str) -> bytes: ...

    @abstractmethod
    def _matching(self, folder: str, prefix: str) -> list[str]:
        """The photo paths in `folder` whose name starts with `prefix`."""

    @abstractmethod
    def _delete(self, path: str) -> None:
        """Delete the file at `path` (already gone: nothing to do)."""

    def _clean(self, now: float) -> None:  # noqa: B027 - nothing to clean by default
        """Delete what a crash left behind."""


class LocalArchive(PhotoArchive):
    """The archive in a folder on this machine (or a volume replicas share)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def _size(self, path: str) -> int | None:
        try:
            return (self.root / path).stat().st_size
        except FileNotFoundError:
            return None

    def _write(self, path: str, data: bytes) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())  # the bytes on disk before the name points to them
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise

    def _read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def _matching(self, folder: str, prefix: str) -> list[str]:
        try:
            names = os.listdir(self.root / folder)
        except FileNotFoundError:
            return []
        return [f"{folder}/{n}" for n in names if n.startswith(prefix)]

    def _delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / path).unlink()

    def photos(self) -> list[StoredPhoto]:
        """Every photo in the folder (temporary files of writes under way excluded)."""
        found = []
        for path in self._files():
            match = _NAME.match(path)
            if match is None:
                continue
            try:
                st = (self.root / path).stat()
            except FileNotFoundError:  # deleted meanwhile (another replica's prune)
                continue
            found.append(StoredPhoto(match.group(3), path, st.st_size, st.st_mtime))
        return found

    def _files(self) -> list[str]:
        """Paths (aa/bb/name) of the files two folders deep, hidden ones included."""
        out = []
        for first in _subfolders(self.root):
            for second in _subfolders(self.root / first):
                with contextlib.suppress(FileNotFoundError):
                    out.extend(
                        f"{first}/{second}/{n}" for n in os.listdir(self.root / first / second)
                    )
        return out

    def _clean(self, now: float) -> None:
        for path in self._files():
            name = path.rsplit("/", 1)[-1]
            if not (name.startswith(".") and name.endswith(".tmp")):
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - (self.root / path).stat().st_mtime > TEMP_MAX_AGE_S:
                    (self.root / path).unlink()


def _subfolders(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and len(e.name) == 2)
    except FileNotFoundError:
        return []


class FsspecArchive(PhotoArchive):
    """The archive in object storage (or any fsspec filesystem) under `root`."""

    def __init__(self, fs: Any, root: str, location: str | None = None) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.location = location or self.root

    def _full(self, path: str) -> str:
        return f"{self.root}/{path}"

    def _size(self, path: str) -> int | None:
        try:
            return int(self.fs.size(self._full(path)))
        except FileNotFoundError:
            return None

    def _write(self, path: str, data: bytes) -> None:
        # One upload (PUT): an object store shows the object whole or not at all.
        self.fs.pipe_file(self._full(path), data)

    def _read(self, path: str) -> bytes:
        return self.fs.cat_file(self._full(path))

    def _matching(self, folder: str, prefix: str) -> list[str]:
        try:
            names = self.fs.ls(self._full(folder), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            base = str(name).rstrip("/").rsplit("/", 1)[-1]
            if base.startswith(prefix):
                found.append(f"{folder}/{base}")
        return found

    def _delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._full(path))

    def photos(self) -> list[StoredPhoto]:
        """Every photo under the root (listed afresh: other replicas write there too)."""
        with contextlib.suppress(Exception):  # a filesystem without a listing cache
            self.fs.invalidate_cache(self.root)
        try:
            listing = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return []
        found = []
        prefix = self.fs._strip_protocol(self.root).rstrip("/") + "/"
        for full, info in listing.items():
            path = self.fs._strip_protocol(full)
            if not path.startswith(prefix):
                continue
            match = _NAME.match(path[len(prefix) :])
            if match is None:
                continue
            found.append(
                StoredPhoto(
                    match.group(3), path[len(prefix) :], int(info.get("size") or 0), _mtime(info)
                )
            )
        return found


def _mtime(info: dict[str, Any]) -> float:
    """When an object was written, from a listing entry: local and GCS give `mtime`, S3
    `LastModified`, the memory filesystem `created`."""
    for key in ("mtime", "LastModified", "created", "updated"):
        value = info.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    return 0.0  # unknown: the oldest, pruned first
