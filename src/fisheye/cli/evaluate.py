"""`fisheye evaluate`: accuracy, per-class metrics, confusion matrix and errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from fisheye.cli.common import (
    AUTO_CHOICE,
    MAX_LISTED,
    BackendOption,
    JsonOption,
    ModelOption,
    RichProgress,
    consoles,
    fail,
    load_model_or_exit,
    warn,
)


def evaluate(
    data: Annotated[
        Path, typer.Option("--data", "-d", help="A class-per-folder tree, or a manifest CSV.")
    ],
    model: ModelOption = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default: runs/evaluate/<date_time>)."),
    ] = None,
    split: Annotated[
        str,
        typer.Option("--split", help="Split to evaluate if the data has splits; all: every row."),
    ] = "val",
    as_json: JsonOption = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Photos per model call.")
    ] = 32,
    backend: BackendOption = AUTO_CHOICE,
    exclude_seen: Annotated[
        bool,
        typer.Option(
            "--exclude-seen",
            help="Evaluate only photos whose near-duplicate group the model never saw in "
            "training or model selection (the bundle's training_manifest.csv).",
        ),
    ] = False,
    seen_root: Annotated[
        Path | None,
        typer.Option(
            "--seen-root",
            help="For bundles without stored descriptors: the folder the recorded training "
            "photos are under (default: the data root recorded in the bundle). Without "
            "them only identical files are excluded.",
        ),
    ] = None,
) -> None:
    """Evaluate a model bundle on labelled photos; write metrics, confusion matrix, errors.

    Also writes the tables `dvc plots` draws: confusion.csv (actual,predicted per photo) and
    per_class.csv (precision, recall, F1, support per class).
    """
    from fisheye import evaluate as ev
    from fisheye.data.labelled import LabelledDataError, check_classes, load_labelled

    out, err = consoles()
    try:
        loaded = load_labelled(data, split)
    except (LabelledDataError, ValueError, OSError) as exc:
        raise fail(err, f"cannot read the data at {data}: {exc}") from None
    predictor, _ = load_model_or_exit(err, model, backend=backend)
    target = out_dir if out_dir is not None else ev.default_out_dir()
    info: dict[str, Any] = {
        **loaded.info(),
        "backend": predictor.backend_name,
        "backend_selection": predictor.backend_selection.describe(),
    }
    try:
        check_classes(loaded.rows, predictor.classes)
        if exclude_seen:
            report = ev.unseen_photos(predictor.bundle, loaded.rows, seen_root, RichProgress(err))
            info["exclude_seen"] = report.to_dict()
            for note in report.notes:
                warn(err, note)
            if not as_json:
                out.print(
                    Text(
                        f"kept {len(report.kept)} of {report.n_input} photos whose "
                        f"near-duplicate group the model never saw ({report.method})"
                    ),
                    soft_wrap=True,
                )
            if not report.kept:
                raise fail(err, "every photo is a copy of one the model saw: nothing to evaluate")
            loaded.rows = report.kept
        with RichProgress(err).task("evaluating", len(loaded.rows)) as advance:
            metrics = ev.evaluate_bundle(
                predictor,
                loaded.rows,
                target,
                batch_size=batch_size,
                info=info,
                unreadable=loaded.unreadable,
                on_done=advance,
            )
    except LabelledDataError as exc:
        raise fail(err, str(exc)) from None

    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        out.print(_metrics_table(metrics))
        summary = (
            f"accuracy {metrics['accuracy']:.2%}, macro F1 {metrics['macro_f1']:.3f} on "
            f"{metrics['n_images']} photos: {metrics['n_errors']} wrong, "
            f"{metrics['n_unreadable']} unreadable; ECE {metrics['ece']:.2%}; backend "
            f"{predictor.backend_name} ({predictor.backend_selection.status})"
        )
        out.print(Text(summary, style="bold"), soft_wrap=True)
        written = f"wrote {target}/ ({', '.join(ev.OUTPUT_FILES)})"
        out.print(Text(written), soft_wrap=True)
    for item in metrics["unreadable"][:MAX_LISTED]:
        warn(err, f"cannot read {item['path']}: {item['error']}")
    if metrics["n_unreadable"]:
        more = (
            f" ({MAX_LISTED} shown; all in metrics.json)"
            if metrics["n_unreadable"] > MAX_LISTED
            else ""
        )
        warn(err, f"{metrics['n_unreadable']} photos could not be read{more}")


def _metrics_table(metrics: dict[str, Any]) -> Table:
    table = Table()
    table.add_column("class")
    for name in ("precision", "recall", "f1", "support"):
        table.add_column(name, justify="right")
    for cls, m in metrics["per_class"].items():
        table.add_row(
            Text(cls),
            f"{m['precision']:.3f}",
            f"{m['recall']:.3f}",
            f"{m['f1']:.3f}",
            str(m["support"]),
        )
    return table
