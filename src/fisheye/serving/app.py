"""The FastAPI app factory: `create_app(settings)` builds a fully wired service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from fisheye import __version__
from fisheye.serving.errors import install_error_handlers
from fisheye.serving.metrics import MetricsMiddleware
from fisheye.serving.routes import ROUTERS
from fisheye.serving.settings import ServeSettings
from fisheye.serving.state import ServingState

STATIC_DIR = Path(__file__).parent / "static"


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """Build the service; the model loads in the background once the app starts."""
    settings = settings or ServeSettings()
    state = ServingState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(asyncio.to_thread(state.load_or_report))
        try:
            yield
        finally:
            if not loader.done():
                await asyncio.wait([loader], timeout=60)
            await asyncio.to_thread(state.close)

    app = FastAPI(
        title="FishEye",
        summary="Recognise fish and seafood species from photos.",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.serving = state
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory fisheye.serving.app:app_from_env` (FISHEYE_* settings)."""
    return create_app(ServeSettings())
