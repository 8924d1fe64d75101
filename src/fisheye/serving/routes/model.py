"""GET /v1/model: the loaded model's description."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from fisheye.serving.deps import ReadyState
from fisheye.serving.limits import LimitedRoute
from fisheye.serving.schemas import ModelOut, error_responses

router = APIRouter(prefix="/v1", tags=["model"], route_class=LimitedRoute)


@router.get("/model", response_model=ModelOut, responses=error_responses(503))
async def model_info(state: ReadyState) -> dict[str, Any]:
    """Describe the loaded model: classes, version, metrics, preprocessing, created time."""
    assert state.predictor is not None
    bundle = state.predictor.bundle
    meta = bundle.meta
    return {
        "name": bundle.name,
        "version": bundle.version,
        "architecture": bundle.architecture,
        "backend": state.predictor.backend_name,
        "backend_selection": state.predictor.backend_selection.describe(),
        "sha256": bundle.sha256,
        "classes": list(state.predictor.classes),
        "metrics": meta.get("metrics", {}),
        "preprocessing": meta.get("preprocessing", {}),
        "created": meta.get("provenance", {}).get("created"),
        # Where the training photos were is a path on the training machine: not for clients.
        "data": {k: v for k, v in meta.get("data", {}).items() if k != "root"},
    }
