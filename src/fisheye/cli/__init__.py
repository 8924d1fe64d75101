"""The `fisheye` command line: each command is a thin call into the packages below it.

Commands import what they need when they run, so `fisheye --help` starts fast.
"""

from __future__ import annotations

import logging

import typer
from rich.console import Console
from rich.logging import RichHandler

from fisheye.cli import bench, evaluate, export, predict, probe, profile, serve, train
from fisheye.cli.admin import admin_app
from fisheye.cli.data import data_app
from fisheye.cli.drift import drift_app
from fisheye.cli.monitor import monitor_app
from fisheye.cli.registry import registry_app

app = typer.Typer(
    name="fisheye",
    help="FishEye: recognise fish and seafood species from photos, and run the model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")):
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        # Logs go to stderr so stdout stays parseable (`--format json`, `evaluate --json`).
        handlers=[
            RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
        ],
    )


app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)(train.train)
app.command()(predict.predict)
app.command()(probe.probe)
app.command()(evaluate.evaluate)
app.command()(serve.serve)
app.command("export")(export.export)
app.command()(bench.bench)
app.command("profile")(profile.profile)
app.add_typer(data_app, name="data")
app.add_typer(drift_app, name="drift")
app.add_typer(monitor_app, name="monitor")
app.add_typer(registry_app, name="registry")
app.add_typer(admin_app, name="admin")

__all__ = ["app"]
