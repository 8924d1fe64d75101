"""The latest photos the server answered, held in memory for a while in case feedback names
them: the archive keeps a photo that gets feedback, which may come after its answer."""

from __future__ import annotations

import threading
from collections import OrderedDict


class RecentPhotos:
    """Photos by prediction id, oldest first, within `max_bytes` and `max_age_s`: a new photo
    pushes out the oldest, and photos older than `max_age_s` are let go (`expire`). A photo
    larger than `max_bytes` is not held. Safe from any thread."""

    def __init__(self, max_bytes: int, max_age_s: float) -> None:
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._photos: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._photos)

    @property
    def nbytes(self) -> int:
        """The bytes of the photos held now."""
        return self._bytes

    def add(self, prediction_id: str, data: bytes, ts: float) -> None:
        """Hold a photo answered at `ts` (unix seconds), letting the oldest go to make room."""
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._photos.pop(prediction_id, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._photos[prediction_id] = (ts, data)
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._photos.popitem(last=False)
                self._bytes -= len(dropped)

    def pop(self, prediction_id: str) -> bytes | None:
        """The photo of a prediction, no longer held; None when it is not (or no longer)."""
        with self._lock:
            found = self._photos.pop(prediction_id, None)
            if found is None:
                return None
            self._bytes -= len(found[1])
            return found[1]

    def expire(self, now: float) -> int:
        """Let go of the photos answered more than `max_age_s` before `now`; how many."""
        cutoff = now - self.max_age_s
        n = 0
        with self._lock:
            while self._photos:
                pid, (ts, data) = next(iter(self._photos.items()))
                if ts >= cutoff:
                    break
                del self._photos[pid]
                self._bytes -= len(data)
                n += 1
        return n

    def oldest(self) -> float | None:
        """When the oldest photo held was answered (unix seconds), or None when none is."""
        with self._lock:
            if not self._photos:
                return None
            return next(iter(self._photos.values()))[0]
