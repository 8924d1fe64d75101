"""The `fisheye` command line (`fisheye.cli:app`, the console script).

Every command is the Typer app's (`fisheye.cli.commands`), imported when it runs; only
`fisheye serve` in its plain form (`fisheye.cli.plain_serve`) starts the server without
importing Typer or Rich, which a cold start would wait for.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any


def typer_app() -> Any:
    """The Typer app of every command."""
    from fisheye.cli.commands import app as commands_app

    return commands_app


class FisheyeApp:
    """The `fisheye` command: called, it runs the Typer app (or `serve` in its plain form);
    any attribute is the Typer app's, so Typer's `CliRunner` and `typer.main.get_command`
    take it for the app itself."""

    def __call__(
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> Any:
        """Run `fisheye` with `args` (default: the process's arguments), as Typer's app does."""
        if not extra:  # a caller's own click settings (e.g. standalone_mode): Typer's
            from fisheye.cli.plain_serve import serve_if_plain

            serve_if_plain(sys.argv[1:] if args is None else args)
        return typer_app()(args=args, prog_name=prog_name, **extra)

    def __getattr__(self, name: str) -> Any:
        return getattr(typer_app(), name)


app = FisheyeApp()

__all__ = ["app"]
