"""`fisheye data ...`: import, download and synthesise datasets."""

from __future__ import annotations

from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from fisheye.cli.common import RichProgress, consoles, fail, require_train_extra
from fisheye.cli.data_check import check_cmd
from fisheye.cli.import_report import print_import_report
from fisheye.data.download import DownloadError, download_dataset
from fisheye.data.grouping import DEFAULT_COSINE_THRESHOLD, group_near_duplicates
from fisheye.data.pipelines import import_dataset
from fisheye.data.synthetic import write_synthetic


class Grouping(StrEnum):
    """How `data import` finds copies of one source photo."""

    fish = "fish"
    embedding = "embedding"


data_app = typer.Typer(
    help="Bring photos in: import a photo tree, download the Kaggle set or a data card's "
    "photos, check labels, or write a synthetic set.",
    no_args_is_help=True,
)
data_app.command("check")(check_cmd)


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
    grouping: Annotated[
        Grouping,
        typer.Option(
            "--grouping",
            help="fish: rotation/flip-invariant rings in the 590x445 frame of the fish "
            "dataset; embedding: cosine distance on the backbone's ImageNet features (any "
            "other collection; needs the train extra).",
        ),
    ] = Grouping.fish,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            min=0.0,
            help="Grouping distance threshold (default: 0.08 for fish, "
            f"{DEFAULT_COSINE_THRESHOLD} cosine for embedding).",
        ),
    ] = None,
) -> None:
    """Index a photo tree into OUT/manifest.csv with near-duplicate groups and splits."""
    console, err_console = consoles()
    require_train_extra(err_console, "data import", ("sklearn",))
    grouper = None
    if grouping is Grouping.embedding:
        require_train_extra(err_console, "data import --grouping embedding")
        from fisheye.training.embedding_grouping import embedding_grouper

        grouper = embedding_grouper(threshold or DEFAULT_COSINE_THRESHOLD)
    elif threshold is not None:
        grouper = partial(group_near_duplicates, distance_threshold=threshold)
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
            grouper=grouper,
        )
    except (ValueError, OSError) as exc:
        raise fail(err_console, str(exc)) from None
    print_import_report(report, console)


@data_app.command("download")
def download_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder to download into.")],
    cards: Annotated[
        list[Path] | None,
        typer.Option(
            "--card",
            help="A data card (data/cards/*.csv, repeatable): fetch the photos it lists into "
            "OUT/<use>/<class>/ and check each sha256, instead of the Kaggle set.",
        ),
    ] = None,
    from_git: Annotated[
        Path | None,
        typer.Option(
            "--from-git",
            help="Read the cards' photos from local git mirrors (<DIR>/<owner>+<name>) instead "
            "of their URLs.",
        ),
    ] = None,
) -> None:
    """Download the Kaggle 'A Large Scale Fish Dataset', or the photos of data cards."""
    console, err_console = consoles()
    if cards:
        from fisheye.cli.data_cards import stage_cards

        stage_cards(console, err_console, cards, out, from_git)
        return
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
