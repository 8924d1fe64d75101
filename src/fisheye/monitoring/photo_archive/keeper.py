"""`PhotoKeeper`: puts the photos that teach into the archive, off the response path.

On the request path `offer` only decides (`KeepPolicy`) and queues: a photo kept when it is
answered (out of distribution, unsure, sampled) goes on a queue bounded in bytes, and its
prediction row names it at once; any other photo is held in memory for a while
(`RecentPhotos`), in case feedback names it. One thread writes the queued photos, looks every
few seconds for feedback on this replica's held photos (in the prediction store, so feedback
taken by another replica of a fleet counts too), archives those and has their rows name them,
and prunes the archive by age and size now and then. Every failure (a full disk, a bucket
that cannot be reached, a store that cannot be read) is counted (`on_error`) and logged at
most every LOG_EVERY_S, and loses that photo only: answers and log rows are unaffected.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fisheye.monitoring.photo_archive.archive import PhotoArchive
from fisheye.monitoring.photo_archive.policy import FEEDBACK, KeepOptions, KeepPolicy
from fisheye.monitoring.photo_archive.recent import RecentPhotos

log = logging.getLogger(__name__)
MB = 1024 * 1024
FEEDBACK_POLL_S = 2.0  # how often the store is asked for feedback on held photos
# Feedback is looked for back to this long before the last look: the clocks of a fleet's
# replicas differ a little, and a feedback row is committed just after its time is taken.
CLOCK_SLACK_S = 60.0
PRUNE_EVERY_S = 600.0
PENDING_BYTES = 64 * MB  # photos waiting to be written; beyond it they are not kept
LOG_EVERY_S = 10.0
STOP_TIMEOUT_S = 10.0
# Error kinds, the metric's label values.
WRITE, PRUNE, FEEDBACK_LOOKUP, QUEUE_FULL = "write", "prune", "feedback_lookup", "queue_full"

FindFeedback = Callable[[float, float], list[str]]
"""(predicted since, received since) -> ids of this replica's predictions with feedback."""
Reference = Callable[[list[tuple[str, str]]], None]
"""Queue (prediction id, photo sha256) pairs: each prediction's photo is in the archive."""


@dataclass
class _Job:
    data: bytes
    reason: str


_STOP = object()


class PhotoKeeper:
    """Keeps answered photos by the policy, photos that get feedback, and the archive's bounds."""

    def __init__(
        self,
        archive: PhotoArchive,
        options: KeepOptions,
        find_feedback: FindFeedback,
        reference: Reference,
        *,
        policy: KeepPolicy | None = None,
        on_kept: Callable[[str, int], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_pruned: Callable[[int, int], None] | None = None,
        poll_s: float = FEEDBACK_POLL_S,
        prune_every_s: float = PRUNE_EVERY_S,
        max_pending_bytes: int = PENDING_BYTES,
    ) -> None:
        self.archive = archive
        self.options = options
        self.policy = policy or KeepPolicy(options.sample_rate)
        self.recent = RecentPhotos(options.recent_bytes, options.feedback_window_s)
        self.find_feedback = find_feedback
        self.reference = reference
        self.on_kept = on_kept  # (reason, bytes written: 0 when the archive had the photo)
        self.on_error = on_error  # (kind)
        self.on_pruned = on_pruned  # (photos deleted, bytes the archive holds after)
        self.poll_s = poll_s
        self.prune_every_s = prune_every_s
        self.max_pending_bytes = max_pending_bytes
        self._queue: queue.Queue[_Job | object] = queue.Queue()
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._received_since = 0.0  # feedback received before this was looked at already
        self._last_log: dict[str, float] = {}

    # -- the request path ----------------------------------------------------------------------
    def offer(
        self, prediction_id: str, data: bytes, *, in_distribution: bool | None, unsure: bool
    ) -> bool:
        """An answered photo: True when it is queued for the archive now (its prediction row
        should name it: `photo_sha256`); otherwise it is held for feedback. Never blocks."""
        if not data or not self._accepting:
            return False
        reason = self.policy.reason(in_distribution, unsure)
        if reason is not None:
            with self._lock:
                room = self._pending_bytes + len(data) <= self.max_pending_bytes
                if room:
                    self._pending_bytes += len(data)
            if room:
                self._queue.put(_Job(data, reason))
                return True
            self._failed(QUEUE_FULL, "the archive's write queue is full (the archive is slow)")
        self.recent.add(prediction_id, data, time.time())
        return False

    # -- life -------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the keeper's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the writer thread (it prunes the archive first)."""
        self._accepting = True
        self._received_since = time.time() - CLOCK_SLACK_S
        self._thread = threading.Thread(target=self._run, name="fisheye-archive", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Write the queued photos, look for feedback once more, then stop (within about
        `timeout`; what is left then is not kept)."""
        if self._thread is None:
            return
        self._accepting = False
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the photos queued so far are written and feedback was looked for once;
        False on timeout."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    # -- the keeper's thread ----------------------------------------------------------------------
    def _run(self) -> None:
        next_prune = time.monotonic()
        next_poll = time.monotonic() + self.poll_s
        while True:
            wait = max(0.0, min(next_prune, next_poll) - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if isinstance(item, _Job):
                self._write(item.data, item.reason)
                with self._lock:
                    self._pending_bytes -= len(item.data)
            now = time.monotonic()
            if item is _STOP or isinstance(item, threading.Event) or now >= next_poll:
                self._look_for_feedback()
                next_poll = now + self.poll_s
            if now >= next_prune:
                self._prune()
                next_prune = now + self.prune_every_s
            if isinstance(item, threading.Event):
                item.set()
            if item is _STOP:
                return

    def _write(self, data: bytes, reason: str) -> str | None:
        """Put a photo in the archive; its key, or None when it could not be written."""
        try:
            put = self.archive.put_photo(data)
        except Exception as exc:  # a full disk, a bucket out of reach, no permission...
            self._failed(WRITE, f"cannot write to the photo archive {self.archive.location}: {exc}")
            return None
        if self.on_kept is not None:
            self.on_kept(reason, len(data) if put.written else 0)
        return put.sha256

    def _look_for_feedback(self) -> None:
        """Archive the held photos that got feedback since the last look, and have their
        prediction rows name them."""
        now = time.time()
        self.recent.expire(now)
        oldest = self.recent.oldest()
        if oldest is None:
            self._received_since = now - CLOCK_SLACK_S
            return
        try:
            ids = self.find_feedback(oldest - CLOCK_SLACK_S, self._received_since)
        except Exception as exc:
            self._failed(
                FEEDBACK_LOOKUP, f"cannot look for feedback in the prediction store: {exc}"
            )
            return
        self._received_since = now - CLOCK_SLACK_S
        refs = []
        for prediction_id in ids:
            data = self.recent.pop(prediction_id)
            if data is None:  # not held: archived already, too old, or another replica's
                continue
            sha256 = self._write(data, FEEDBACK)
            if sha256 is not None:
                refs.append((prediction_id, sha256))
        if refs:
            self.reference(refs)

    def _prune(self) -> None:
        try:
            result = self.archive.prune(self.options.max_bytes, self.options.max_age_days)
        except Exception as exc:
            self._failed(PRUNE, f"cannot prune the photo archive {self.archive.location}: {exc}")
            return
        if result.deleted:
            log.info(
                "photo archive: deleted %d photo(s) (%.1f MB) beyond its age or size bounds",
                result.deleted,
                result.deleted_bytes / MB,
            )
        if self.on_pruned is not None:
            self.on_pruned(result.deleted, result.kept_bytes)

    def _failed(self, kind: str, message: str) -> None:
        if self.on_error is not None:
            self.on_error(kind)
        now = time.monotonic()
        if now - self._last_log.get(kind, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._last_log[kind] = now
            log.warning("%s; predictions are unaffected", message)
