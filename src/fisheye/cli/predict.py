"""`fisheye predict`: the species in photos and folders, as a table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from fisheye.cli.common import (
    AUTO_CHOICE,
    BackendOption,
    ModelRefOption,
    RichProgress,
    consoles,
    fail,
    load_predictor_or_exit,
)


class OutputFormat(StrEnum):
    """How `fisheye predict` writes its results."""

    table = "table"
    json = "json"
    csv = "csv"


def predict(
    paths: Annotated[
        list[Path], typer.Argument(help="Photos and/or folders (searched recursively).")
    ],
    model: ModelRefOption = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes to list.")] = 3,
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", "-f", help="table, json or csv (json/csv go to stdout)."),
    ] = OutputFormat.table,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Photos per model call.")
    ] = 16,
    backend: BackendOption = AUTO_CHOICE,
) -> None:
    """Predict the species in photos. Exit code 1 if any file could not be read."""
    from fisheye.data.files import InputPathError, collect_image_paths

    out, err = consoles()
    try:
        files = collect_image_paths(paths)
    except InputPathError as exc:
        raise fail(err, str(exc)) from None
    if not files:
        raise fail(err, f"no photos found in {', '.join(map(str, paths))}")
    predictor, _ = load_predictor_or_exit(err, model, top_k=top_k, backend=backend)

    with RichProgress(err).task("predicting", len(files)) as advance:
        results = list(predictor.predict_files(files, batch_size=batch_size, on_done=advance))

    failed = [r for r in results if r.prediction is None]
    if output_format is OutputFormat.json:
        records = [
            {"path": str(r.path), **r.prediction.to_dict()}
            if r.prediction is not None
            else {"path": str(r.path), "error": r.error}
            for r in results
        ]
        typer.echo(json.dumps(records, indent=2))
    elif output_format is OutputFormat.csv:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "label", "confidence", "error"])
        for r in results:
            p = r.prediction
            row = [r.path, p.label, f"{p.confidence:.6f}", ""] if p else [r.path, "", "", r.error]
            writer.writerow(row)
        typer.echo(buf.getvalue(), nl=False)
    else:
        out.print(_table(results))
    if output_format is not OutputFormat.table:
        for r in failed:
            err.print(Text(f"cannot read {r.path}: {r.error}", style="red"), soft_wrap=True)
    if failed:
        err.print(Text(f"{len(failed)} of {len(results)} files could not be read", style="yellow"))
        raise typer.Exit(1)


def _table(results: list) -> Table:
    table = Table(show_lines=False)
    table.add_column("file", overflow="fold")
    table.add_column("label")
    table.add_column("confidence", justify="right")
    table.add_column("top-k", overflow="fold")
    for r in results:
        p = r.prediction
        if p is None:
            table.add_row(Text(str(r.path), style="red"), Text(f"error: {r.error}", style="red"))
            continue
        others = ", ".join(f"{label} {prob:.1%}" for label, prob in p.top_k)
        table.add_row(Text(str(r.path)), Text(p.label), f"{p.confidence:.1%}", Text(others))
    return table
