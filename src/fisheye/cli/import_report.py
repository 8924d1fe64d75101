"""How `fisheye data import` shows what it imported: counts per class and split, groups,
duplicates and the photos it skipped."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from fisheye.cli.common import MAX_LISTED
from fisheye.data.manifest import SPLITS, groups_across_splits, manifest_hash
from fisheye.data.pipelines import ImportReport


def _counts_table(report: ImportReport) -> Table:
    counts = report.counts()
    splits = [s for s in (*SPLITS, "") if any(c[s] for c in counts.values())]
    table = Table(title=f"Photos per class ({report.layout} layout)")
    table.add_column("class")
    for split in splits:
        table.add_column(split or "unassigned", justify="right")
    table.add_column("total", justify="right", style="bold")
    for label in sorted(counts):
        c = counts[label]
        table.add_row(label, *(str(c[s]) for s in splits), str(sum(c.values())))
    totals = [sum(c[s] for c in counts.values()) for s in splits]
    table.add_row("total", *(str(t) for t in totals), str(sum(totals)), style="bold")
    return table


def print_import_report(report: ImportReport, console: Console | None = None) -> None:
    """Show an import's per-class counts, groups and problems with rich."""
    console = console or Console()
    console.print(_counts_table(report))
    console.print(f"Near-duplicate groups: [bold]{report.n_groups}[/]")
    crossing = groups_across_splits(report.rows)
    if crossing:
        console.print(
            f"[yellow]{crossing} groups span more than one split "
            "(near-duplicates leak between splits)[/]"
        )
    console.print(f"Exact duplicates (identical bytes): [bold]{report.n_duplicates}[/]")
    console.print(f"Tiny photos (shorter side < 32 px): [bold]{len(report.tiny)}[/]")
    for path in report.tiny[:MAX_LISTED]:
        console.print(f"  {path}")
    if report.unreadable:
        console.print(f"[red]Unreadable files skipped: {len(report.unreadable)}[/]")
        for path, reason in report.unreadable[:MAX_LISTED]:
            console.print(f"  {path}: {reason}")
        if len(report.unreadable) > MAX_LISTED:
            console.print(f"  ... and {len(report.unreadable) - MAX_LISTED} more")
    else:
        console.print("Unreadable files skipped: 0")
    console.print(f"Manifest: {report.manifest_path}")
    console.print(f"Dataset hash: {manifest_hash(report.rows)}")
    if report.copied:
        console.print(f"Photos copied into {report.manifest_path.parent / 'images'}")
