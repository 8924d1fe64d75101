"""`fisheye serve`: the web page and the HTTP API."""

from __future__ import annotations

from typing import Annotated

import typer

from fisheye.cli.common import ModelRefOption, consoles, fail, resolve_model_or_exit
from fisheye.cli.option_specs import BACKEND, HOST, PORT
from fisheye.inference.backends import BackendChoice


def serve(
    model: ModelRefOption = None,
    host: Annotated[str | None, typer.Option(*HOST.flags, help=HOST.help)] = None,
    port: Annotated[
        int | None,
        typer.Option(*PORT.flags, min=PORT.minimum, max=PORT.maximum, help=PORT.help),
    ] = None,
    backend: Annotated[
        BackendChoice | None, typer.Option(*BACKEND.flags, help=BACKEND.help)
    ] = None,
) -> None:
    """Serve the model over HTTP: the web page at /, the API under /v1, docs at /docs."""
    from fisheye.cli.serve_start import ServeStartError, check_bundle, checked_settings, run_server
    from fisheye.tracking.model_registry import is_registry_uri

    _, err = consoles()
    try:
        settings = checked_settings(
            {"model": model, "host": host, "port": port, "backend": backend}
        )
        source = settings.model
        if is_registry_uri(source):
            # The server loads the verified local copy, pinned to the registered hash.
            resolved = resolve_model_or_exit(err, source, settings.model_sha256)
            settings = settings.model_copy(
                update={"model": resolved.path, "model_sha256": resolved.pinned}
            )
        check_bundle(settings)
    except ServeStartError as exc:
        raise fail(err, str(exc)) from None
    if not run_server(settings, source):
        raise typer.Exit(3)  # uvicorn's exit status when the server cannot start
