"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from fisheye.serving.deps import State
from fisheye.serving.limits import LimitedRoute
from fisheye.serving.schemas import HealthOut

if TYPE_CHECKING:
    from fisheye.monitoring.prediction_log import PredictionLog

router = APIRouter(tags=["operations"], route_class=LimitedRoute)


@router.get("/healthz", response_model=HealthOut, response_model_exclude_none=True)
async def healthz() -> dict[str, str]:
    """Liveness: 200 while the process is serving HTTP."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "The model is not loaded yet."}},
)
async def readyz(state: State) -> JSONResponse:
    """Readiness: 200 once the model is loaded and warmed, else 503.

    Ready, it names the backend that serves; after a host-check fallback (a quantised
    backend that does not hold on this CPU) `backend_status` is "fallback" and `detail` says
    why. The model still answers, at fp32's speed. `monitoring` is "loading" while the drift
    reference is prepared in the background (a few tenths of a second after start-up; the
    answers carry OOD scores already), then "ready"; "off" when monitoring is off.
    `prediction_log` is "degraded" while its store cannot be reached (rows wait in the
    queue); the replica stays ready, since every replica shares that store.
    """
    if state.ready and state.predictor is not None:
        selection = state.predictor.backend_selection
        live_monitor = state.live_monitor
        body = {
            "status": "ready",
            "backend": selection.backend.name,
            "backend_status": selection.status,
            "monitoring": "off" if live_monitor is None else live_monitor.status,
            "prediction_log": _log_status(state.prediction_log),
        }
        if state.prediction_log is not None and state.prediction_log.degraded:
            # Still ready: the replica answers, and every replica shares the store.
            body["detail"] = f"the prediction log is degraded: {state.prediction_log.degraded}"
        if selection.fallback_from is not None:
            body["detail"] = (
                f"{selection.fallback_from} failed its host check on this CPU; "
                f"{selection.backend.name} serves instead (GET /v1/model)"
            )
        return JSONResponse(body)
    detail = f"model failed to load: {state.load_error}" if state.load_error else "model is loading"
    return JSONResponse(
        {"status": "not_ready", "detail": detail}, status_code=503, headers={"Retry-After": "1"}
    )


def _log_status(plog: PredictionLog | None) -> str:
    if plog is None:
        return "off"
    return "degraded" if plog.degraded else "ok"


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
)
async def metrics(state: State) -> Response:
    """Prometheus metrics in the text exposition format."""
    return Response(await state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
