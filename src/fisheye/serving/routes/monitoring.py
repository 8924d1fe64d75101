"""GET /v1/monitoring/drift and /v1/monitoring/summary: what the server has seen.

A summary flushes the log's queue and reads it: concurrent requests for one window share
one computation, and an answer is reused for `summary_cache_s` (`SharedResults`), so
dashboards and scrapers cannot slow the predictions down.
"""

from __future__ import annotations

import weakref
from typing import Annotated, Any

from fastapi import APIRouter, Query

from fisheye.monitoring.prediction_log import PredictionLog, StoreError
from fisheye.monitoring.report import MAX_WINDOW_DAYS, parse_window
from fisheye.serving.deps import ReadyState, prediction_log
from fisheye.serving.errors import APIError
from fisheye.serving.limits import LimitedRoute
from fisheye.serving.schemas import error_responses
from fisheye.serving.shared_results import SharedResults

router = APIRouter(prefix="/v1/monitoring", tags=["monitoring"], route_class=LimitedRoute)
# The shared summaries of each prediction log (one per app), by (window in seconds, replica).
_Key = tuple[float, str | None]
_summaries: weakref.WeakKeyDictionary[PredictionLog, SharedResults[_Key, dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _shared_summaries(plog: PredictionLog, ttl_s: float) -> SharedResults[_Key, dict[str, Any]]:
    shared = _summaries.get(plog)
    if shared is None:
        shared = _summaries[plog] = SharedResults(
            lambda key: plog.summary(*key), ttl_s=ttl_s, max_running=2
        )
    return shared


@router.get("/drift", responses=error_responses(503))
async def drift(state: ReadyState) -> dict[str, Any]:
    """The latest background drift test (kernel MMD on the recent-photo window)."""
    if state.live_monitor is None:
        return {"enabled": False, "detail": "monitoring is off (FISHEYE_MONITORING=false)"}
    return state.live_monitor.drift_status()


@router.get("/challenger", responses=error_responses(503))
async def challenger(state: ReadyState) -> dict[str, Any]:
    """The challenger model: mode, share, agreement with the live model, per-class
    disagreements, its latency and its own drift and OOD view."""
    if state.slots.challenger is None:
        return {"attached": False, "detail": "no challenger is attached (fisheye admin attach)"}
    view = state.slots.challenger.describe()
    # Anyone may read monitoring: where the bundle lies on the server is for admins only.
    view["model"] = {k: v for k, v in view["model"].items() if k not in ("path", "source")}
    return {"attached": True, **view}


@router.get("/summary", responses=error_responses(404, 422, 503))
async def summary(
    state: ReadyState,
    window: Annotated[
        str,
        Query(
            description=f"How far back: e.g. 30m, 24h, 7d; at most {MAX_WINDOW_DAYS}d.",
            max_length=20,
        ),
    ] = "24h",
    replica: Annotated[
        str | None,
        Query(
            description="With a PostgreSQL store shared by a fleet: one replica's figures "
            "(FISHEYE_REPLICA_ID) instead of the fleet's.",
            min_length=1,
            max_length=200,
        ),
    ] = None,
) -> dict[str, Any]:
    """Counts per class, mean confidence, OOD rate, feedback accuracy, latency, drift: of
    every replica writing to the store (per replica in `replicas`), or of one."""
    try:
        seconds = parse_window(window)
    except ValueError as exc:
        raise APIError(422, "invalid_window", str(exc)) from None
    plog = prediction_log(state)
    try:
        out = await _shared_summaries(plog, state.settings.summary_cache_s).get((seconds, replica))
    except StoreError as exc:
        raise APIError(
            503, "log_unavailable", f"the prediction log cannot be read: {exc}"
        ) from None
    except (OverflowError, ValueError) as exc:  # a window the log's arithmetic cannot hold
        raise APIError(422, "invalid_window", f"cannot use the window {window!r}: {exc}") from None
    assert state.live_monitor is not None
    return {
        "window": window,
        "window_s": seconds,
        **out,
        "drift_now": state.live_monitor.drift_status(),
        "lost_log_rows": plog.lost,
    }
