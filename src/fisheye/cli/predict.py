"""`fisheye predict`: the species in photos and folders, as a table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from enum import StrEnum
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
    load_model_or_exit,
)
from fisheye.cli.predict_file import Engine, predict_to_file
from fisheye.inference.options import PredictionOptions


class OutputFormat(StrEnum):
    """How `fisheye predict` writes its results."""

    table = "table"
    json = "json"
    csv = "csv"


def predict(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Photos and/or folders (searched recursively); s3:// or gs:// URLs of "
            "photos or prefixes."
        ),
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
    out_file: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="Stream results to this .csv, .jsonl or .parquet (a folder of parts) as they "
            "are produced; a local path or an s3:// / gs:// URL.",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue an interrupted --out: skip photos already in it."),
    ] = False,
    engine: Annotated[
        Engine,
        typer.Option("--engine", help="local (this process) or ray (Ray Data; needs --out)."),
    ] = Engine.local,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Join this Ray cluster (e.g. auto, ray://head:10001); default: start a local Ray.",
        ),
    ] = None,
    actors: Annotated[
        int, typer.Option("--actors", min=1, help="--engine ray: model replicas (actors).")
    ] = 1,
    rows_per_part: Annotated[
        int,
        typer.Option("--rows-per-part", min=1, help="Rows per part file of a folder output."),
    ] = 1000,
) -> None:
    """Predict the species in photos. Exit code 1 if any file could not be read."""
    from fisheye.data.files import InputPathError, collect_image_paths

    out, err = consoles()
    if out_file is None and (resume or engine is Engine.ray):
        raise fail(err, "--resume and --engine ray write to a file: add --out FILE")
    if out_file is not None:
        from fisheye.inference.results import ResultsError, result_format

        try:
            result_format(out_file)
        except ResultsError as exc:
            raise fail(err, str(exc)) from None
    try:
        files = collect_image_paths(paths)
    except InputPathError as exc:
        raise fail(err, str(exc)) from None
    if not files:
        raise fail(err, f"no photos found in {', '.join(map(str, paths))}")
    predictor, _ = load_model_or_exit(
        err, model, options=PredictionOptions(top_k=top_k), backend=backend
    )
    if out_file is not None:
        predict_to_file(
            err,
            predictor,
            files,
            out_file,
            resume=resume,
            engine=engine,
            top_k=top_k,
            batch_size=batch_size,
            ray_address=ray_address,
            actors=actors,
            rows_per_part=rows_per_part,
        )
        return

    with RichProgress(err).task("predicting", len(files)) as advance:
        results = list(predictor.predict_files(files, batch_size=batch_size, on_done=advance))

    from fisheye.inference.result_paths import path_text

    failed = [r for r in results if r.prediction is None]
    if output_format is OutputFormat.json:
        records = [
            {"path": path_text(r.path), **r.prediction.to_dict()}
            if r.prediction is not None
            else {"path": path_text(r.path), "error": r.error}
            for r in results
        ]
        typer.echo(json.dumps(records, indent=2))
    elif output_format is OutputFormat.csv:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "label", "confidence", "error"])
        for r in results:
            p = r.prediction
            name = path_text(r.path)
            row = [name, p.label, f"{p.confidence:.6f}", ""] if p else [name, "", "", r.error]
            writer.writerow(row)
        typer.echo(buf.getvalue(), nl=False)
    else:
        out.print(_table(results))
    if output_format is not OutputFormat.table:
        for r in failed:
            err.print(
                Text(f"cannot read {path_text(r.path)}: {r.error}", style="red"), soft_wrap=True
            )
    if failed:
        err.print(Text(f"{len(failed)} of {len(results)} files could not be read", style="yellow"))
        raise typer.Exit(1)


def _table(results: list) -> Table:
    from fisheye.inference.result_paths import path_text

    table = Table(show_lines=False)
    table.add_column("file", overflow="fold")
    table.add_column("label")
    table.add_column("confidence", justify="right")
    table.add_column("top-k", overflow="fold")
    for r in results:
        p = r.prediction
        if p is None:
            table.add_row(
                Text(path_text(r.path), style="red"), Text(f"error: {r.error}", style="red")
            )
            continue
        others = ", ".join(f"{label} {prob:.1%}" for label, prob in p.top_k)
        answer = Text(p.label) if not p.unsure else Text("not sure", style="yellow")
        table.add_row(Text(path_text(r.path)), answer, f"{p.confidence:.1%}", Text(others))
    return table
