"""POST /v1/feedback: the true species of an earlier prediction (the feedback token, when
set, is checked before the body is read)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter

from fisheye.monitoring.prediction_log import FeedbackConflictError, FeedbackError, StoreError
from fisheye.serving.auth import authenticated_route, require_feedback_token
from fisheye.serving.deps import ReadyState, prediction_log
from fisheye.serving.errors import APIError
from fisheye.serving.limits import limits
from fisheye.serving.schemas import OTHER_LABEL, FeedbackIn, FeedbackOut, error_responses

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/v1", tags=["monitoring"], route_class=authenticated_route(require_feedback_token)
)


@router.post(
    "/feedback",
    response_model=FeedbackOut,
    responses=error_responses(
        401,
        403,
        404,
        409,
        503,
        e409="The prediction already has other feedback (kept for review).",
    ),
)
@limits(content_types=("application/json",))
async def feedback(body: FeedbackIn, state: ReadyState) -> dict[str, Any]:
    """Record the true species of an earlier prediction (by its `id`)."""
    assert state.predictor is not None
    classes = state.predictor.classes
    if body.label not in classes and body.label != OTHER_LABEL:
        raise APIError(
            422,
            "unknown_label",
            f"{body.label!r} is not one of the model's classes ({', '.join(classes)}) "
            f"nor {OTHER_LABEL!r}",
        )
    plog = prediction_log(state)
    try:
        # The log's writer thread writes it (the one writer: no lock contention with the
        # prediction rows); waiting for it holds no thread.
        result = await plog.add_feedback_async(body.id, body.label)
    except FeedbackError as exc:
        raise APIError(404, "unknown_prediction", str(exc)) from None
    except FeedbackConflictError as exc:
        state.metrics.feedback_corrections.inc()
        raise APIError(409, "feedback_exists", str(exc)) from None
    except StoreError as exc:
        log.warning("could not record feedback: %s", exc)
        raise APIError(
            503, "log_unavailable", f"the prediction log cannot be written: {exc}"
        ) from None
    m = state.metrics
    if result["new"]:  # the counters count rows of the feedback table, nothing else
        m.feedback.labels(str(result["correct"]).lower()).inc()
    if result["accuracy"] is not None:
        m.feedback_accuracy.set(result["accuracy"])
    return result
