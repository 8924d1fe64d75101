"""`fisheye monitor report`: an HTML report from the server's prediction log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fisheye.cli.common import consoles, fail

monitor_app = typer.Typer(help="Reports from the server's prediction log.", no_args_is_help=True)


@monitor_app.command("report")
def report(
    db: Annotated[
        str,
        typer.Option(
            "--db",
            help="The server's prediction log: its SQLite file, or the PostgreSQL URL a fleet "
            "shares (postgresql://user@host:5432/db; the report covers every replica).",
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.html and plots.")],
    window: Annotated[
        str, typer.Option("--window", help="How far back, e.g. 24h, 7d, 30m; all: everything.")
    ] = "all",
    replica: Annotated[
        str | None,
        typer.Option("--replica", help="With PostgreSQL: one replica's rows only."),
    ] = None,
) -> None:
    """Write an HTML report with plots: class mix, confidence, OOD rate, drift, accuracy."""
    from fisheye.monitoring.report import ReportError, parse_window, write_report

    out, err = consoles()
    try:
        seconds = None if window == "all" else parse_window(window)
        page = write_report(db, out_dir, window_s=seconds, replica=replica)
    except (ReportError, ValueError) as exc:
        raise fail(err, str(exc)) from None
    out.print(Text(f"wrote {page}"), soft_wrap=True)
