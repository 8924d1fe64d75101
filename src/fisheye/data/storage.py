"""Photos and results in object storage: `s3://` and `gs://` URLs through fsspec.

Local paths stay plain paths everywhere; only strings that start with one of `URL_SCHEMES`
go through here. Credentials and endpoints come from the storage libraries' own standard
configuration (AWS_* variables or ~/.aws for S3, GOOGLE_APPLICATION_CREDENTIALS for GCS).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

URL_SCHEMES = ("s3://", "gs://", "gcs://")
# The packages that open each scheme (the `scale` extra installs them).
_DRIVERS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}

PhotoRef = Path | str
"""A photo's location: a local path, or an object-storage URL kept as a string."""


class StorageError(OSError):
    """An object-storage URL cannot be used (missing driver, bad URL, no access)."""


def is_url(ref: object) -> bool:
    """Whether `ref` is an object-storage URL rather than a local path."""
    return isinstance(ref, str) and ref.lower().startswith(URL_SCHEMES)


def as_ref(item: str | os.PathLike) -> PhotoRef:
    """A URL stays a string (Path would fold its `//`); anything else becomes a Path."""
    return item if is_url(item) else Path(item)


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for a URL and the path inside it (StorageError if unavailable)."""
    scheme = url.split("://", 1)[0].lower()
    try:
        import fsspec.core
    except ImportError as exc:
        raise StorageError(
            f"reading {scheme}:// URLs needs the scale extra: pip install 'fisheye[scale]'"
        ) from exc
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise StorageError(
            f"reading {scheme}:// URLs needs {_DRIVERS.get(scheme, 'its fsspec driver')}: "
            "pip install 'fisheye[scale]'"
        ) from exc
    except ValueError as exc:
        raise StorageError(f"not a usable storage URL: {url} ({exc})") from exc


def url_of(fs: Any, path: str, like: str) -> str:
    """The URL of `path` in `fs`, spelled with the scheme of the URL `like`."""
    return f"{like.split('://', 1)[0]}://{fs._strip_protocol(path)}"


def read_url(url: str, max_bytes: int) -> bytes:
    """An object's bytes, reading at most `max_bytes` + 1 of them (OSError on failure)."""
    fs, path = filesystem(url)
    with fs.open(path, "rb") as fh:
        return fh.read(max_bytes + 1)


def list_files(url: str) -> list[str] | None:
    """Every object under a URL prefix as sorted URLs; [url] for one object; None if absent."""
    fs, path = filesystem(url)
    if fs.isfile(path):
        return [url]
    if not fs.isdir(path):
        return None
    return sorted(url_of(fs, p, url) for p in fs.find(path))
