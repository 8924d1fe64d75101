"""/v1/admin: change the live model (hot swap), attach a challenger, promote, roll back.

Every endpoint needs `Authorization: Bearer $FISHEYE_ADMIN_TOKEN`, checked before the body
is read (401 without it, whatever the body); without that setting they are disabled (403).
A change loads and warms the new model in a thread while the live
one keeps answering; a model that fails leaves the live one untouched (its ModelLoadError or
ModelChangeError becomes the JSON error: `serving.errors`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from fisheye.serving.auth import authenticated_route, require_admin
from fisheye.serving.deps import Changes, State
from fisheye.serving.limits import limits
from fisheye.serving.schemas import ChallengerIn, ModelChangeIn, error_responses

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    route_class=authenticated_route(require_admin),
)
RESPONSES = error_responses(401, 403, 404, 409, 422, 503)
JSON = ("application/json",)


@router.get("/status", responses=RESPONSES)
async def status(state: State) -> dict[str, Any]:
    """The live model, the one kept for rollback, the challenger, and recent changes."""
    if state.changes is None:
        return {"live": None, "previous": None, "challenger": None, "changes": []}
    return state.changes.status()


@router.post("/model", responses=RESPONSES)
@limits(content_types=JSON)
async def swap(body: ModelChangeIn, changes: Changes) -> dict[str, Any]:
    """Hot swap: load, verify and warm a bundle folder or `models:/` URI, then make it live."""
    return await run_in_threadpool(changes.swap, body.model)


@router.post("/reload", responses=RESPONSES)
async def reload(changes: Changes) -> dict[str, Any]:
    """Load the configured model (FISHEYE_MODEL) again, as SIGHUP does."""
    return await run_in_threadpool(changes.reload)


@router.post("/challenger", responses=RESPONSES)
@limits(content_types=JSON)
async def attach(body: ChallengerIn, changes: Changes) -> dict[str, Any]:
    """Attach a challenger in shadow mode (sees a share of photos) or canary mode (answers a
    share of requests); replaces any challenger already attached."""
    return await run_in_threadpool(changes.attach, body.model, body.mode, body.share)


@router.delete("/challenger", responses=RESPONSES)
async def detach(changes: Changes) -> dict[str, Any]:
    """Drop the challenger."""
    return await run_in_threadpool(changes.detach)


@router.post("/promote", responses=RESPONSES)
async def promote(changes: Changes) -> dict[str, Any]:
    """Make the challenger live; the replaced live model is kept for a rollback."""
    return await run_in_threadpool(changes.promote)


@router.post("/rollback", responses=RESPONSES)
async def rollback(changes: Changes) -> dict[str, Any]:
    """Make the model replaced by the last swap or promotion live again (one step)."""
    return await run_in_threadpool(changes.rollback)
