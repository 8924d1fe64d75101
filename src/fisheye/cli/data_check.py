"""`fisheye data check`: likely label errors and outliers of a labelled photo set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fisheye.cli.common import RichProgress, consoles, fail, require_train_extra


def check_cmd(
    data: Annotated[
        Path, typer.Argument(help="Labelled photos: class folders, pre-split tree, or manifest.")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write every flagged photo to this CSV.")
    ] = None,
    folds: Annotated[int, typer.Option("--folds", min=2, help="Out-of-fold splits.")] = 5,
    listed: Annotated[int, typer.Option("--show", min=0, help="Photos listed per issue.")] = 10,
    cache: Annotated[
        Path | None,
        typer.Option("--cache", help="Folder to cache features in (keyed by photo hashes)."),
    ] = Path("runs/cache"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Find likely label errors and outliers with cleanlab's Datalab.

    Probabilities come from a linear probe on frozen ImageNet features, out of fold by
    near-duplicate group (copies of a photo never vouch for its label).
    """
    import csv
    import json

    console, err_console = consoles()
    require_train_extra(err_console, "data check", ("sklearn", "torch", "cleanlab"))
    from fisheye.data.pipelines import load_dataset_rows
    from fisheye.training.data_check import check_data

    if not data.exists():
        raise fail(err_console, f"no such file or folder: {data}")
    progress = RichProgress(err_console)
    try:
        rows = load_dataset_rows(data, progress=progress, resplit=True)
        with progress.task("extracting features", len(rows)) as advance:
            found = check_data(rows, folds=folds, cache_dir=cache, on_done=advance)
    except (ValueError, OSError) as exc:
        raise fail(err_console, str(exc)) from None
    flagged = [
        *({"issue": "label", **r} for r in found.label_issues),
        *({"issue": "outlier", **r} for r in found.outliers),
    ]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        fields = ["issue", "path", "given", "predicted", "group", "label_score", "outlier_score"]
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(flagged)
    if as_json:
        summary = {
            "n_photos": found.n_photos,
            "out_of_fold_accuracy": found.oof_accuracy,
            "n_label_issues": len(found.label_issues),
            "n_outliers": len(found.outliers),
            "n_unreadable": len(found.unreadable),
            "flagged": flagged,
        }
        typer.echo(json.dumps(summary, indent=2))
        return
    console.print(
        f"{found.n_photos} photos; out-of-fold probe accuracy {found.oof_accuracy:.2%}; "
        f"[bold]{len(found.label_issues)}[/] likely label errors, "
        f"[bold]{len(found.outliers)}[/] outliers"
    )
    for title, items, score in (
        ("Likely label errors (lowest label quality first)", found.label_issues, "label_score"),
        ("Outliers (most unusual first)", found.outliers, "outlier_score"),
    ):
        if not items or not listed:
            continue
        table = Table(title=title)
        for col in ("path", "given", "predicted", score):
            table.add_column(col, overflow="fold")
        for item in items[:listed]:
            table.add_row(item["path"], item["given"], item["predicted"], f"{item[score]:.4f}")
        console.print(table)
    if out is not None:
        console.print(f"Every flagged photo: {out}")
