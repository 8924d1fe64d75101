"""`fisheye export`: write an exported form of the model into its bundle."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fisheye.cli.common import ModelOption, consoles, fail, require_train_extra
from fisheye.inference.backends import EXPORT_FORMATS

ExportFormat = StrEnum("ExportFormat", [(f.replace("-", "_"), f) for f in EXPORT_FORMATS])


def export(
    export_format: Annotated[
        ExportFormat, typer.Option("--format", "-f", help=f"One of: {', '.join(EXPORT_FORMATS)}.")
    ],
    model: ModelOption = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help="Training photos to calibrate int8: a folder, or a manifest CSV (its train "
            "split). Default: shared train.",
        ),
    ] = None,
    calibration_size: Annotated[
        int, typer.Option("--calibration-size", min=1, help="Calibration photos to use.")
    ] = 256,
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="Labelled photos to measure accuracy (default: val)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Measure accuracy on a subset.")
    ] = None,
    method: Annotated[
        str, typer.Option("--method", help="int8 calibration: minmax, percentile, entropy.")
    ] = "minmax",
    fp32_first_convs: Annotated[
        int,
        typer.Option(
            "--fp32-first-convs",
            min=0,
            help="int8: leave the first N convolutions in fp32 (the head always is).",
        ),
    ] = 2,
) -> None:
    """Export the model into its bundle (checked, measured and recorded in bundle.json)."""
    out, err = consoles()
    require_train_extra(err, "export")
    from fisheye.bundle import BundleError, default_bundle_dir
    from fisheye.data.labelled import LabelledDataError
    from fisheye.inference.export import ExportError
    from fisheye.inference.export import export as run_export

    bundle_dir = model if model is not None else default_bundle_dir()
    try:
        entry = run_export(
            bundle_dir,
            export_format.value,
            calibration=calibration,
            calibration_size=calibration_size,
            data=data,
            limit=limit,
            method=method,
            fp32_first_convs=fp32_first_convs,
        )
    except (BundleError, ExportError, LabelledDataError, OSError) as exc:
        raise fail(err, f"export failed: {exc}") from None
    summary = {k: entry[k] for k in ("accuracy", "reference_accuracy", "latency_ms") if k in entry}
    out.print(Text(f"exported {export_format.value} into {bundle_dir} {summary}"), soft_wrap=True)
