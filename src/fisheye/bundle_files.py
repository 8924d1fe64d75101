"""Reading a bundle's files safely: regular files only, never past a size cap, hashed as read.

A bundle folder may come from anywhere (a swap target, a registry download), so a file
in it may be a FIFO that blocks, a link to /dev/zero, or far larger than recorded. Every
read goes through here and fails with `BundleError` instead.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

_CHUNK = 1 << 20


class BundleError(RuntimeError):
    """A bundle is missing, malformed, or fails its integrity check."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _open_regular(path: Path, max_bytes: int, what: str) -> int:
    """A descriptor on `path` once it is known to be a regular file of at most `max_bytes`.

    The type is checked before opening (a FIFO is never opened for reading, a device never
    touched) and again on the open descriptor (opened non-blocking, so a file swapped for a
    FIFO in between cannot block).
    """
    try:
        st = os.stat(path)  # follows a link: what counts is what it points to
    except FileNotFoundError:
        raise BundleError(f"{what} {path} is missing") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {what} {path}: {exc}") from None
    _check_regular(path, st, max_bytes, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {what} {path}: {exc}") from None
    try:
        _check_regular(path, os.fstat(fd), max_bytes, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_regular(path: Path, st: os.stat_result, max_bytes: int, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(
            f"{what} {path} is {_file_kind(st.st_mode)}: a bundle holds only regular files"
        )
    if st.st_size > max_bytes:
        raise BundleError(
            f"{what} {path} is {st.st_size} bytes, more than the {max_bytes} it may be: "
            "it was replaced or corrupted"
        )


def _read_chunks(path: Path, max_bytes: int, what: str) -> Iterator[bytes]:
    """The bytes of a regular file of at most `max_bytes`, in chunks (BundleError if not)."""
    fd = _open_regular(path, max_bytes, what)
    total = 0
    try:
        while True:
            try:
                chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
            except OSError as exc:
                raise BundleError(f"cannot read {what} {path}: {exc}") from None
            if not chunk:
                return
            total += len(chunk)
            if total > max_bytes:  # it grew while being read
                raise BundleError(f"{what} {path} is larger than the {max_bytes} bytes it may be")
            yield chunk
    finally:
        os.close(fd)


def read_bounded(path: Path, max_bytes: int, what: str) -> bytes:
    return b"".join(_read_chunks(path, max_bytes, what))


def hash_bounded(path: Path, max_bytes: int, what: str) -> str:
    h = hashlib.sha256()
    for chunk in _read_chunks(path, max_bytes, what):
        h.update(chunk)
    return h.hexdigest()
