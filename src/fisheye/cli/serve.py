"""`fisheye serve`: the web page and the HTTP API."""

from __future__ import annotations

from typing import Annotated

import typer

from fisheye.cli.common import ModelRefOption, consoles, fail, resolve_model_or_exit
from fisheye.inference.backends import BackendChoice


def serve(
    model: ModelRefOption = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Interface [default: $FISHEYE_HOST or 127.0.0.1].")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", "-p", min=0, max=65535, help="Port [default: $FISHEYE_PORT or 8000]."
        ),
    ] = None,
    backend: Annotated[
        BackendChoice | None,
        typer.Option("--backend", "-b", help="Model backend [default: $FISHEYE_BACKEND or auto]."),
    ] = None,
) -> None:
    """Serve the model over HTTP: the web page at /, the API under /v1, docs at /docs."""
    from pydantic import ValidationError

    from fisheye.bundle import BundleError, read_meta
    from fisheye.inference.backends import BackendUnavailableError, require_installed, resolve
    from fisheye.serving.settings import ServeSettings
    from fisheye.serving.state import ServingState
    from fisheye.tracking.model_registry import is_registry_uri

    _, err = consoles()
    options = {"model": model, "host": host, "port": port, "backend": backend}
    try:
        settings = ServeSettings(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        raise fail(
            err, f"invalid server settings (FISHEYE_* variables or options):\n{exc}"
        ) from None
    source = settings.model
    if is_registry_uri(source):
        # The server loads the verified local copy, pinned to the registered hash.
        resolved = resolve_model_or_exit(err, source, settings.model_sha256)
        settings = settings.model_copy(
            update={"model": resolved.path, "model_sha256": resolved.pinned}
        )
    try:
        # Fail fast on a wrong path or a missing export; the weights load in the server.
        name = resolve(read_meta(settings.model, settings.model_sha256), settings.backend)
        require_installed(name)
    except BundleError as exc:
        raise fail(err, f"cannot serve the model bundle {settings.model}: {exc}") from None
    except BackendUnavailableError as exc:
        raise fail(err, str(exc)) from None
    # The model loads (verify, ONNX Runtime session, host check, warm-up) while the web
    # framework is imported and the app is built: the first answer comes that much sooner.
    state = ServingState(settings)
    state.start_loading()
    import uvicorn

    from fisheye.serving.app import create_app
    from fisheye.serving.graceful import GRACEFUL_TIMEOUT_S, GracefulServer
    from fisheye.serving.http_protocol import protocol_for

    shown = f"{source} ({settings.model})" if source != settings.model else settings.model
    err.print(
        f"FishEye serving {shown} at http://{settings.host}:{settings.port} (API docs at /docs)",
        soft_wrap=True,
    )
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
    if not server.started:
        raise typer.Exit(3)  # uvicorn's exit status when the server cannot start
