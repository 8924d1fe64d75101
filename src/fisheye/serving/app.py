"""The FastAPI app factory: `create_app(settings)` builds a fully wired service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from fisheye import __version__
from fisheye.serving.changes import ModelChangeError
from fisheye.serving.errors import install_error_handlers
from fisheye.serving.middleware import ServingMiddleware
from fisheye.serving.routes import ROUTERS
from fisheye.serving.schemas import ErrorBody
from fisheye.serving.settings import ServeSettings
from fisheye.serving.state import ServingState
from fisheye.tracking.loading import ModelLoadError

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
# Swagger UI's files, from the fastapi-offline package: the API docs work with no network.
SWAGGER_DIR = Path(fastapi_offline.__file__).parent / "static"


def create_app(settings: ServeSettings | None = None, state: ServingState | None = None) -> FastAPI:
    """Build the service; the model loads in the background once the app starts.

    `state` may be one whose model is already loading (`ServingState.start_loading`, as
    `fisheye serve` does before it imports this module); its settings are the app's.
    """
    if state is None:
        state = ServingState(settings or ServeSettings())
    settings = state.settings

    reloads: set[asyncio.Task] = set()

    async def reload() -> None:
        if not state.ready or state.changes is None:
            log.error("SIGHUP reload of %s refused: the server is still starting", settings.model)
            return
        try:
            await asyncio.to_thread(state.changes.reload)
        except (ModelLoadError, ModelChangeError) as exc:
            log.error("SIGHUP reload of %s refused: %s", settings.model, exc.detail)

    def on_sighup() -> None:
        task = asyncio.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start_loading()
        loop = asyncio.get_running_loop()
        # SIGHUP reloads the configured model (only where the loop may own signals: the
        # main thread of a Unix process; not, e.g., under a test client's thread).
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        try:
            yield
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
                loop.remove_signal_handler(signal.SIGHUP)
            if reloads:
                await asyncio.wait(reloads, timeout=60)
            await asyncio.to_thread(state.wait_loaded, 60)
            await asyncio.to_thread(state.close)

    app = FastAPI(
        title="FishEye",
        summary="Recognise fish and seafood species from photos.",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.api_docs else None,
    )
    app.state.serving = state
    app.openapi = lambda: _openapi_with_error_body(app)  # type: ignore[method-assign]
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    if settings.api_docs:

        @app.get("/docs", include_in_schema=False)
        async def api_docs() -> FileResponse:
            return FileResponse(STATIC_DIR / "api-docs.html")

        app.mount("/static/swagger", StaticFiles(directory=SWAGGER_DIR), name="swagger")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Authorization"],
        )
    app.add_middleware(ServingMiddleware, settings=settings, metrics=state.metrics)
    return app


def _openapi_with_error_body(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI document (built on the first request for it) with the schema of
    the error body, which the routes' error responses name by reference (`schemas`)."""
    if app.openapi_schema is None:
        document = FastAPI.openapi(app)
        components = document.setdefault("components", {})
        schemas = {**components.get("schemas", {}), "ErrorBody": ErrorBody.model_json_schema()}
        components["schemas"] = dict(sorted(schemas.items()))  # in FastAPI's order
    return app.openapi_schema  # type: ignore[return-value]


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory fisheye.serving.app:app_from_env` (FISHEYE_* settings)."""
    return create_app(ServeSettings())
