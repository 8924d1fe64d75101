"""Giving memory back to the system after bursts of large photos (glibc; no-ops elsewhere).

Two things kept memory resident after a burst of big uploads: glibc raises its mmap
threshold after the first large buffer is freed, so later large buffers (decoded photos)
come from the heap; and request bodies arrive in many 64 KiB pieces that fragment the
heaps of several threads. The first is fixed once at start-up, the second by trimming the
heaps when the decode pool goes idle.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MIN_TRIM_INTERVAL_S = 1.0


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()
_last_trim = 0.0


def return_large_buffers_to_the_os(threshold: int = 2 * 1024 * 1024) -> None:
    """Allocations over `threshold` bytes come straight from the OS and go back when freed."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, threshold)


def trim_freed_memory() -> None:
    """Return the free parts of every heap to the OS (at most once a second)."""
    global _last_trim
    now = time.monotonic()
    if _LIBC is None or now - _last_trim < MIN_TRIM_INTERVAL_S:
        return
    _last_trim = now
    _LIBC.malloc_trim(0)
