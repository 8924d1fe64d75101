"""`fisheye serve`'s checks and run, without Typer or Rich (the Typer command and the plain
form, `fisheye.cli.plain_serve`, both start the server through here)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fisheye.bundle import BundleError, read_meta
from fisheye.cli.terminal import show
from fisheye.inference.backends import BackendUnavailableError, require_installed, resolve
from fisheye.serving.settings import ServeSettings
from fisheye.serving.state import ServingState


class ServeStartError(Exception):
    """The server cannot start: the message says why and what to change."""


def checked_settings(options: Mapping[str, Any]) -> ServeSettings:
    """The settings: the options given (not None), else FISHEYE_* variables, else defaults."""
    try:
        return ServeSettings(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        raise ServeStartError(
            f"invalid server settings (FISHEYE_* variables or options):\n{exc}"
        ) from None


def check_bundle(settings: ServeSettings) -> None:
    """Fail fast on a wrong path, a bundle that is not the pinned one or a missing backend;
    the weights load in the server."""
    try:
        name = resolve(read_meta(settings.model, settings.model_sha256), settings.backend)
        require_installed(name)
    except BundleError as exc:
        raise ServeStartError(f"cannot serve the model bundle {settings.model}: {exc}") from None
    except BackendUnavailableError as exc:
        raise ServeStartError(str(exc)) from None


def run_server(settings: ServeSettings, source: Path | str) -> bool:
    """Serve until stopped (SIGTERM, SIGINT); False if the server could not start.

    `source` is what the user named (a registry URI, or the folder `settings.model`)."""
    # The model loads (verify, ONNX Runtime session, host check, warm-up) while the web
    # framework is imported and the app is built: the first answer comes that much sooner.
    state = ServingState(settings)
    state.start_loading()
    import uvicorn

    from fisheye.serving.app import create_app
    from fisheye.serving.graceful import GRACEFUL_TIMEOUT_S, GracefulServer
    from fisheye.serving.http_protocol import protocol_for

    shown = f"{source} ({settings.model})" if source != settings.model else settings.model
    show(f"FishEye serving {shown} at http://{settings.host}:{settings.port} (API docs at /docs)")
    config = uvicorn.Config(
        create_app(state=state),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=settings.access_log,
        timeout_graceful_shutdown=GRACEFUL_TIMEOUT_S,
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  (a float works)
        http=protocol_for(settings),
        ws="none",  # no WebSocket routes: skip importing a WebSocket library at start-up
        server_header=False,
    )
    # On SIGTERM, decodes still running after a grace period are ended and answered 503,
    # so every request in flight gets an answer before uvicorn's own timeout.
    server = GracefulServer(config, state)
    server.run()
    return server.started
