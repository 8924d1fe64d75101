"""Feedback through the prediction log's one writer: callers on any thread (or the event
loop) queue a request and wait for it; the writer thread answers it after the rows queued
before it (`PredictionLog` mixes this in)."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fisheye.monitoring.prediction_log.rows import (
    FeedbackConflictError,
    FeedbackError,
    StoreError,
)
from fisheye.monitoring.prediction_log.store import LogStore

T = TypeVar("T")
UNKNOWN_POLL_S = 0.1  # how often feedback on an id not yet found looks again


@dataclass
class FeedbackRequest:
    """A feedback write, answered by the writer thread through `result`."""

    prediction_id: str
    label: str
    result: Future = field(default_factory=Future)


class FeedbackWrites:
    """The feedback half of the prediction log (its writer thread calls `_answer`)."""

    store: LogStore
    unknown_grace_s: float
    feedback_timeout_s: float
    _queue: queue.Queue

    @property
    def running(self) -> bool:  # overridden by the log
        raise NotImplementedError

    def _until_unlocked(self, write: Callable[[], T]) -> T:  # overridden by the log
        raise NotImplementedError

    def add_feedback(self, prediction_id: str, label: str) -> dict[str, Any]:
        """Record the true label of a logged prediction; returns whether it was right.

        The first feedback on a prediction counts. A later, different label raises
        FeedbackConflictError after keeping it in `feedback_corrections` (audit); the same
        label again is answered like the first. FeedbackError for an unknown prediction;
        StoreError when the log cannot be written now. The writer thread writes it, after
        the predictions queued before it; this call waits for it (`feedback_timeout_s`).
        """
        give_up = time.monotonic() + self.unknown_grace_s
        while True:
            try:
                return self._queue_feedback(prediction_id, label).result(self.feedback_timeout_s)
            except FutureTimeout:
                raise self._feedback_timed_out() from None
            except FeedbackError:
                if time.monotonic() >= give_up:
                    raise
            time.sleep(UNKNOWN_POLL_S)

    async def add_feedback_async(self, prediction_id: str, label: str) -> dict[str, Any]:
        """`add_feedback` for the event loop: awaits the writer without holding a thread."""
        give_up = time.monotonic() + self.unknown_grace_s
        while True:
            waiting = asyncio.wrap_future(self._queue_feedback(prediction_id, label))
            try:
                return await asyncio.wait_for(waiting, self.feedback_timeout_s)
            except TimeoutError:
                raise self._feedback_timed_out() from None
            except FeedbackError:
                if time.monotonic() >= give_up:
                    raise
            await asyncio.sleep(UNKNOWN_POLL_S)

    def _queue_feedback(self, prediction_id: str, label: str) -> Future:
        if not self.running:
            raise StoreError("the prediction log is not running")
        request = FeedbackRequest(prediction_id, label)
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise StoreError("the prediction log's queue is full; retry shortly") from None
        return request.result

    def _feedback_timed_out(self) -> StoreError:
        return StoreError(
            f"the prediction log did not write the feedback within {self.feedback_timeout_s:g} s"
            " (it is kept and written later); retry"
        )

    def _answer(self, refused: StoreError | None, request: FeedbackRequest) -> None:
        """Write `request` and hand its caller the result, or `refused` (the store cannot
        take it now) without trying."""
        try:
            if refused is not None:
                raise refused
            result = self._until_unlocked(
                lambda: self._feedback(request.prediction_id, request.label)
            )
        except Exception as exc:  # the caller gets it (FeedbackError, StoreError, ...)
            if request.result.set_running_or_notify_cancel():
                request.result.set_exception(exc)
        else:
            if request.result.set_running_or_notify_cancel():
                request.result.set_result(result)

    def _feedback(self, prediction_id: str, label: str) -> dict[str, Any]:
        found = self.store.find_prediction(prediction_id)
        if found is None:
            raise FeedbackError(f"no logged prediction has id {prediction_id!r}")
        prediction_ts, predicted = found
        added, recorded, n, correct = self.store.add_feedback(
            prediction_id, label, predicted, prediction_ts
        )
        result = {
            "id": prediction_id,
            "label": recorded,
            "predicted": predicted,
            "correct": predicted == recorded,
            "accuracy": correct / n if n else None,
            "feedback_count": n,
            "new": added,
        }
        if not added and recorded != label:
            raise FeedbackConflictError(
                f"prediction {prediction_id!r} already has feedback {recorded!r}; "
                f"{label!r} was kept as a correction for review",
                result,
            )
        return result
