"""`fisheye registry`: model bundles in the MLflow model registry (register, list, promote)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from fisheye.cli.common import JsonOption, consoles, fail

registry_app = typer.Typer(
    help="The MLflow model registry: register bundles, list versions, promote one to an alias. "
    "Serve a version with `fisheye serve --model models:/NAME@ALIAS`.",
    no_args_is_help=True,
)

TrackingUriOption = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking/registry store [default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///runs/mlflow.db].",
    ),
]
NameOption = Annotated[str, typer.Option("--name", "-n", help="Registered model name.")]


def _run(err, call):
    """Run a registry call; a missing MLflow, a bad name or a bad bundle exits with one line."""
    from fisheye.bundle import BundleError
    from fisheye.tracking.store import TrackingError

    try:
        return call()
    except (TrackingError, BundleError) as exc:
        raise fail(err, str(exc)) from None
    except Exception as exc:  # MLflow's own errors: an unreachable server, a refused name
        raise fail(err, f"the MLflow registry refused: {type(exc).__name__}: {exc}") from None


@registry_app.command("register")
def register(
    bundle: Annotated[Path, typer.Argument(help="The model bundle folder to register.")],
    name: NameOption = "fisheye",
    tracking_uri: TrackingUriOption = None,
    description: Annotated[
        str | None, typer.Option("--description", help="A note on this version.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Verify a bundle and register it as a new version (its artifact: the bundle folder)."""
    from fisheye.tracking import model_registry

    out, err = consoles()
    version, created = _run(
        err,
        lambda: model_registry.register(
            bundle, name, tracking_uri=tracking_uri, description=description
        ),
    )
    if as_json:
        typer.echo(json.dumps({**version.to_dict(), "created_now": created}, indent=2))
        return
    verb = "registered" if created else "already registered:"
    out.print(
        Text(
            f"{verb} {version.name} version {version.version} (bundle "
            f"{(version.bundle_sha256 or '')[:12]}, run {version.run_id}); promote it with "
            f"`fisheye registry promote {version.name} {version.version} --alias champion`"
        ),
        soft_wrap=True,
    )


@registry_app.command("list")
def list_versions(
    name: Annotated[
        str | None, typer.Argument(help="Only this registered model (default: all).")
    ] = None,
    tracking_uri: TrackingUriOption = None,
    as_json: JsonOption = False,
) -> None:
    """List registered versions: aliases, creation time, bundle hash and source run."""
    from fisheye.tracking import model_registry

    out, err = consoles()
    versions = _run(err, lambda: model_registry.list_versions(name, tracking_uri=tracking_uri))
    if as_json:
        typer.echo(json.dumps([v.to_dict() for v in versions], indent=2))
        return
    if not versions:
        out.print("no registered model versions" + (f" of {name}" if name else ""))
        return
    table = Table()
    for column in ("name", "version", "aliases", "created (UTC)", "bundle", "source run"):
        table.add_column(column, justify="right" if column == "version" else "left")
    for v in versions:
        table.add_row(
            Text(v.name),
            str(v.version),
            Text(", ".join(v.aliases), style="bold green"),
            v.created.strftime("%Y-%m-%d %H:%M:%S") if v.created else "",
            Text((v.bundle_sha256 or "-")[:12]),
            Text(v.run_id or ""),
        )
    out.print(table)


@registry_app.command("promote")
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[int, typer.Argument(min=1, help="Version number to promote.")],
    alias: Annotated[str, typer.Option("--alias", "-a", help="Alias to point at it.")] = (
        "champion"
    ),
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Point an alias (e.g. champion) at a version, after verifying its bundle."""
    from fisheye.tracking import model_registry

    out, err = consoles()
    promoted = _run(
        err, lambda: model_registry.promote(name, version, alias, tracking_uri=tracking_uri)
    )
    out.print(
        Text(
            f"{name}@{alias} -> version {promoted.version} (bundle "
            f"{(promoted.bundle_sha256 or '')[:12]}); serve it with "
            f"`fisheye serve --model models:/{name}@{alias}`"
        ),
        soft_wrap=True,
    )
