"""FastAPI dependencies: the app's shared state, and the same once the model is ready.

They are `async` so FastAPI calls them on the event loop (a plain `def` dependency would
cost every request a hop to the thread pool and back).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fisheye.monitoring.prediction_log import PredictionLog
from fisheye.serving.changes import ModelChanges
from fisheye.serving.errors import APIError
from fisheye.serving.state import ServingState


async def get_state(request: Request) -> ServingState:
    """The app's ServingState."""
    return request.app.state.serving


async def require_ready(request: Request) -> ServingState:
    """The ServingState, or 503 while the model is still loading (or failed to load)."""
    return ready_state(request)


def ready_state(request: Request) -> ServingState:
    """`require_ready` as a plain call, for the prediction routes' hot path."""
    state: ServingState = request.app.state.serving
    if not state.ready or state.predictor is None or state.batcher is None or state.decoder is None:
        detail = (
            f"the model failed to load: {state.load_error}"
            if state.load_error
            else "the model is still loading; retry in a moment"
        )
        raise APIError(503, "model_not_ready", detail, headers={"Retry-After": "1"})
    return state


def prediction_log(state: ServingState) -> PredictionLog:
    """The prediction log, or 404 when it is off."""
    if state.prediction_log is None:
        raise APIError(
            404,
            "prediction_log_disabled",
            "the prediction log is off (FISHEYE_MONITORING / FISHEYE_PREDICTION_LOG)",
        )
    return state.prediction_log


async def require_changes(request: Request) -> ModelChanges:
    """The model changes of a ready server (503 while the model is loading)."""
    state = ready_state(request)
    assert state.changes is not None
    return state.changes


State = Annotated[ServingState, Depends(get_state)]
ReadyState = Annotated[ServingState, Depends(require_ready)]
Changes = Annotated[ModelChanges, Depends(require_changes)]
