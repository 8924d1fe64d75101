"""Monitoring routes: the latest drift test, feedback on predictions, and a summary."""

from __future__ import annotations

import logging
import sqlite3
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from fisheye.monitoring.prediction_log import FeedbackError, PredictionLog
from fisheye.monitoring.report import parse_window
from fisheye.serving.errors import APIError, ErrorBody
from fisheye.serving.state import ServingState, require_ready

log = logging.getLogger(__name__)
ReadyState = Annotated[ServingState, Depends(require_ready)]
OTHER = "other"  # feedback label for a photo of none of the model's classes


class FeedbackIn(BaseModel):
    """The true species of a photo that was predicted earlier."""

    id: str = Field(min_length=1, max_length=100, description="The prediction's `id`.")
    label: str = Field(
        min_length=1,
        max_length=200,
        description=f"The true class, one of the model's classes, or {OTHER!r}.",
    )


class FeedbackOut(BaseModel):
    """What the feedback was recorded against."""

    id: str
    label: str
    predicted: str
    correct: bool
    accuracy: float | None = Field(description="Accuracy over all feedback in the log.")
    feedback_count: int


def _log(state: ServingState) -> PredictionLog:
    if state.monitoring is None or state.monitoring.log is None:
        raise APIError(
            404,
            "prediction_log_disabled",
            "the prediction log is off (FISHEYE_MONITORING / FISHEYE_PREDICTION_LOG)",
        )
    return state.monitoring.log


_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown prediction id, or the log is off."},
    503: {"model": ErrorBody, "description": "The model is loading or the log is unavailable."},
}


def build_monitoring_router() -> APIRouter:
    """The /v1 monitoring and feedback routes."""
    router = APIRouter(prefix="/v1", tags=["monitoring"])

    @router.get("/monitoring/drift", responses={503: _RESPONSES[503]})
    async def drift(state: ReadyState) -> dict[str, Any]:
        """The latest background drift test (kernel MMD on the recent-photo window)."""
        if state.monitoring is None:
            return {"enabled": False, "detail": "monitoring is off (FISHEYE_MONITORING=false)"}
        return state.monitoring.drift_status()

    @router.post("/feedback", response_model=FeedbackOut, responses=_RESPONSES)
    async def feedback(body: FeedbackIn, state: ReadyState) -> dict[str, Any]:
        """Record the true species of an earlier prediction (by its `id`)."""
        assert state.predictor is not None
        classes = state.predictor.classes
        if body.label not in classes and body.label != OTHER:
            raise APIError(
                422,
                "unknown_label",
                f"{body.label!r} is not one of the model's classes ({', '.join(classes)}) "
                f"nor {OTHER!r}",
            )
        plog = _log(state)
        try:
            result = await run_in_threadpool(plog.add_feedback, body.id, body.label)
        except FeedbackError as exc:
            raise APIError(404, "unknown_prediction", str(exc)) from None
        except (sqlite3.Error, OSError) as exc:
            log.warning("could not record feedback: %s", exc)
            raise APIError(
                503, "log_unavailable", f"the prediction log cannot be written: {exc}"
            ) from None
        m = state.metrics
        m.feedback.labels(str(result["correct"]).lower()).inc()
        if result["accuracy"] is not None:
            m.feedback_accuracy.set(result["accuracy"])
        return result

    @router.get("/monitoring/summary", responses=_RESPONSES)
    async def summary(
        state: ReadyState,
        window: Annotated[
            str, Query(description="How far back: e.g. 30m, 24h, 7d.", max_length=20)
        ] = "24h",
    ) -> dict[str, Any]:
        """Counts per class, mean confidence, OOD rate, feedback accuracy, latency, drift."""
        try:
            seconds = parse_window(window)
        except ValueError as exc:
            raise APIError(422, "invalid_window", str(exc)) from None
        plog = _log(state)
        try:
            out = await run_in_threadpool(plog.summary, seconds)
        except (sqlite3.Error, OSError) as exc:
            raise APIError(
                503, "log_unavailable", f"the prediction log cannot be read: {exc}"
            ) from None
        assert state.monitoring is not None
        return {
            "window": window,
            "window_s": seconds,
            **out,
            "drift_now": state.monitoring.drift_status(),
            "lost_log_rows": plog.lost,
        }

    return router
