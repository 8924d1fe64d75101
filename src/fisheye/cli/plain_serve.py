"""`fisheye serve` in its plain form, started without importing Typer or Rich.

A scale from zero waits for every import of the process; Typer and Rich took about a tenth
of a second of it on 2 CPUs. The plain form is `fisheye [--verbose|-v] serve` followed by
`serve`'s own options (`fisheye.cli.option_specs`), each given once as `--flag VALUE`,
`-f VALUE` or `--flag=VALUE` with a value Typer would take as it is, for a bundle folder
(not a registry URI). Anything else (`--help`, a mistake in the command line, a registry
URI) goes to the Typer app, which runs the same command and reports as it does for every
command. Settings or a bundle that `serve`'s checks refuse get the Typer command's message
and exit status.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fisheye.cli.option_specs import SERVE_OPTIONS, VERBOSE, OptionSpec

COMMAND = "serve"


def plain_serve_request(argv: Sequence[str]) -> tuple[bool, dict[str, str | int]] | None:
    """(verbose, serve's options) when `argv` is `serve` in its plain form, else None."""
    args = list(argv)
    verbose = bool(args) and args[0] in VERBOSE.flags
    if verbose:
        args.pop(0)
    if not args or args.pop(0) != COMMAND:
        return None
    by_flag: dict[str, OptionSpec] = {flag: spec for spec in SERVE_OPTIONS for flag in spec.flags}
    options: dict[str, str | int] = {}
    while args:
        flag, equals, text = args.pop(0).partition("=")
        spec = by_flag.get(flag)
        if spec is None or spec.name in options or (equals and not flag.startswith("--")):
            return None
        if not equals:
            if not args:
                return None
            text = args.pop(0)
        value = spec.plain_value(text)
        if value is None:
            return None
        options[spec.name] = value
    return verbose, options


def serve_if_plain(argv: Sequence[str]) -> None:
    """Serve and exit when `argv` is `serve` in its plain form; otherwise return."""
    request = plain_serve_request(argv)
    if request is None:
        return
    verbose, options = request
    from fisheye.cli.serve_start import ServeStartError, check_bundle, checked_settings, run_server
    from fisheye.cli.terminal import configure_logging
    from fisheye.tracking.model_registry import is_registry_uri

    configure_logging(verbose)
    try:
        settings = checked_settings(options)
        if is_registry_uri(settings.model):
            return  # resolved through MLflow by the Typer command (its output is Rich's)
        check_bundle(settings)
    except ServeStartError as exc:
        from fisheye.cli.common import consoles, fail  # Typer and Rich: on this error path only

        sys.exit(fail(consoles()[1], str(exc)).exit_code)  # as the Typer command reports it
    try:
        started = run_server(settings, settings.model)
    except KeyboardInterrupt:
        sys.exit(130)  # as Typer exits on Ctrl-C
    sys.exit(0 if started else 3)  # 3: uvicorn's exit status when the server cannot start
