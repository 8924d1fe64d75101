"""`fisheye data download --card`: stage the photos of data cards and check their hashes."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from fisheye.cli.common import MAX_LISTED, RichProgress, fail, warn
from fisheye.data.cards import CardError, git_fetcher, http_fetcher, read_card, stage_card


def stage_cards(
    console: Console, err: Console, cards: list[Path], out: Path, from_git: Path | None
) -> None:
    """Fetch every card's photos into out/<use>/<class>/ and print what is there."""
    try:
        rows = [row for card in cards for row in read_card(card)]
    except CardError as exc:
        raise fail(err, str(exc)) from None
    fetch = git_fetcher(from_git) if from_git is not None else http_fetcher()
    with RichProgress(err).task("fetching photos", len(rows)) as advance:
        report = stage_card(rows, out, fetch, on_done=advance)
    table = Table(title=f"Photos under {out}")
    for col in ("use", "class", "photos"):
        table.add_column(col, justify="right" if col == "photos" else "left")
    for (use, label), n in sorted(report.counts.items()):
        table.add_row(use, label, str(n))
    console.print(table)
    console.print(
        f"{report.staged} fetched, {report.present} already there, {len(report.failed)} failed"
    )
    for row, why in report.failed[:MAX_LISTED]:
        warn(err, f"{row.source} {row.path or row.url}: {why}")
    if report.failed:
        raise fail(err, f"{len(report.failed)} photos could not be fetched or did not match", 1)
