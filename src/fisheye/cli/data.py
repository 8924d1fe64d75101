"""`fisheye data ...`: import, download and synthesise datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fisheye.cli.common import MAX_LISTED, RichProgress, consoles, fail, require_train_extra
from fisheye.data.download import DownloadError, download_dataset
from fisheye.data.manifest import SPLITS, groups_across_splits, manifest_hash
from fisheye.data.pipelines import ImportReport, import_dataset
from fisheye.data.synthetic import write_synthetic

data_app = typer.Typer(
    help="Bring photos in: import a photo tree, download the Kaggle set, or write a synthetic set.",
    no_args_is_help=True,
)


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


@data_app.command("import")
def import_cmd(
    src: Annotated[
        str,
        typer.Argument(
            help="Photo tree: class folders, pre-split or Kaggle; or an s3:// / gs:// prefix."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for manifest.csv (and copies).")],
    copy: Annotated[bool, typer.Option("--copy", help="Copy photos into OUT/images/.")] = False,
    val_fraction: Annotated[float, typer.Option(help="Share of each class for val.")] = 0.15,
    test_fraction: Annotated[float, typer.Option(help="Share of each class for test.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the grouped split.")] = 42,
    resplit: Annotated[
        bool, typer.Option("--resplit", help="Replace a pre-split tree's split with a grouped one.")
    ] = False,
) -> None:
    """Index a photo tree into OUT/manifest.csv with near-duplicate groups and splits."""
    console, err_console = consoles()
    require_train_extra(err_console, "data import", ("sklearn",))
    try:
        report = import_dataset(
            src,
            out,
            copy=copy,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            resplit=resplit,
            progress=RichProgress(err_console),
        )
    except (ValueError, OSError) as exc:
        raise fail(err_console, str(exc)) from None
    print_import_report(report, console)


@data_app.command("download")
def download_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder to download into.")],
) -> None:
    """Download the Kaggle 'A Large Scale Fish Dataset' (needs network and Kaggle credentials)."""
    console, err_console = consoles()
    require_train_extra(err_console, "data download", ("kagglehub",))
    try:
        path = download_dataset(out)
    except DownloadError as exc:
        raise fail(err_console, f"Download failed: {exc}") from None
    console.print(f"Downloaded to {path}")
    console.print(f"Next: fisheye data import '{path}' --out DIR")


@data_app.command("synth")
def synth_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the synthetic set into.")],
    per_class: Annotated[int, typer.Option("--per-class", help="Images per class.")] = 12,
    classes: Annotated[int, typer.Option("--classes", help="Number of classes.")] = 3,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels.")] = 64,
    variants: Annotated[int, typer.Option(help="Rotated/flipped copies per source.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Write a SYNTHETIC labelled set of drawn shapes (not fish) for tests and demos."""
    console, err_console = consoles()
    try:
        path = write_synthetic(
            out, per_class, classes=classes, size=size, variants=variants, seed=seed
        )
    except ValueError as exc:
        raise fail(err_console, str(exc)) from None
    names = sorted(p.name for p in path.iterdir() if p.is_dir())
    console.print(
        f"[bold yellow]SYNTHETIC[/] data (drawn shapes, not fish): {len(names)} classes x "
        f"{per_class} images in {path}"
    )
    console.print("Classes: " + ", ".join(names))
