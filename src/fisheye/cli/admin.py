"""`fisheye admin`: change the model of a running server (hot swap, challenger, rollback)."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer
from rich.text import Text

from fisheye.cli.common import JsonOption, consoles, fail

admin_app = typer.Typer(
    help="Change the model of a running `fisheye serve` without a restart: swap, attach a "
    "shadow or canary challenger, promote it, roll back. Needs $FISHEYE_ADMIN_TOKEN (the "
    "server's token).",
    no_args_is_help=True,
)
UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="The server [default: $FISHEYE_URL, else http://127.0.0.1:8000]."),
]

ModelArgument = Annotated[
    str, typer.Argument(help="Bundle folder on the server, or models:/NAME@ALIAS.")
]


def _run(url: str | None, as_json: bool, action: str, *args: Any) -> None:
    from fisheye.serving.admin_client import DEFAULT_URL, AdminClient, AdminClientError

    out, err = consoles()
    token = os.environ.get("FISHEYE_ADMIN_TOKEN")
    if not token:
        raise fail(err, "set FISHEYE_ADMIN_TOKEN to the server's admin token")
    client = AdminClient(url or os.environ.get("FISHEYE_URL") or DEFAULT_URL, token)
    try:
        status = getattr(client, action)(*args)
    except AdminClientError as exc:
        raise fail(err, str(exc), code=1) from None
    if as_json:
        out.print_json(json.dumps(status))
        return
    for role in ("live", "challenger", "previous"):
        entry = status.get(role)
        if entry is None:
            continue
        model = entry.get("model", entry)
        extra = f" ({entry['mode']}, share {entry['share']:g})" if role == "challenger" else ""
        out.print(
            Text(f"{role:<10} {model['name']} {model['version']}  {model['source']}{extra}"),
            soft_wrap=True,
        )


@admin_app.command("status")
def status(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Show the live model, the challenger and the model kept for rollback."""
    _run(url, as_json, "status")


@admin_app.command("swap")
def swap(
    model: ModelArgument,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Hot swap: load, verify and warm MODEL beside the live one, then switch to it."""
    _run(url, as_json, "swap", model)


@admin_app.command("reload")
def reload(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Load the server's configured model again (as `kill -HUP` does)."""
    _run(url, as_json, "reload")


@admin_app.command("attach")
def attach(
    model: ModelArgument,
    mode: Annotated[
        str, typer.Option("--mode", help="shadow (sees photos, answers none) or canary.")
    ] = "shadow",
    share: Annotated[
        float, typer.Option("--share", min=0.0, max=1.0, help="Share of photos or requests.")
    ] = 0.1,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Attach MODEL as the challenger (replacing any)."""
    _run(url, as_json, "attach", model, mode, share)


@admin_app.command("detach")
def detach(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Drop the challenger."""
    _run(url, as_json, "detach")


@admin_app.command("promote")
def promote(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Make the challenger live; the old live model is kept for one rollback."""
    _run(url, as_json, "promote")


@admin_app.command("rollback")
def rollback(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Make the model replaced by the last swap or promotion live again."""
    _run(url, as_json, "rollback")
