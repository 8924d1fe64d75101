"""`fisheye probe`: a linear head on frozen ImageNet features, as a bundle, in minutes."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fisheye.cli.common import RichProgress, consoles, fail, require_train_extra


def probe(
    data: Annotated[
        Path,
        typer.Option(
            "--data", "-d", help="Photos: class folders, train|val|test/<class>, or a manifest."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The bundle folder to write.")],
    resplit: Annotated[
        bool,
        typer.Option(
            "--resplit",
            help="Pool a pre-split tree and split it again by near-duplicate group.",
        ),
    ] = False,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9)] = 0.15,
    test_fraction: Annotated[float, typer.Option("--test-fraction", min=0.0, max=0.9)] = 0.15,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the grouped split.")] = 42,
    arch: Annotated[str, typer.Option("--arch", help="Backbone (ImageNet weights).")] = (
        "efficientnet_lite0"
    ),
    input_size: Annotated[
        int | None,
        typer.Option(
            "--input-size", min=16, help="Model input in pixels (default: the backbone's own)."
        ),
    ] = None,
    crop_fraction: Annotated[
        float | None,
        typer.Option(
            "--crop-fraction",
            min=0.3,
            max=1.0,
            help="With --resize center_crop: the share of the shorter side kept (default "
            "0.875; smaller zooms in on the middle of the photo).",
        ),
    ] = None,
    serve_crop_fraction: Annotated[
        float | None,
        typer.Option(
            "--serve-crop-fraction",
            min=0.3,
            max=1.0,
            help="Serve the model with this centre-crop fraction instead of --crop-fraction "
            "(val and test are scored with it; training views keep --crop-fraction). One more "
            "feature pass over val and test.",
        ),
    ] = None,
    resize: Annotated[
        str,
        typer.Option(
            "--resize",
            help="squash (the whole photo, aspect ignored) or center_crop (aspect kept, the "
            "centre cropped; better on photos that are not square).",
        ),
    ] = "squash",
    backend: Annotated[
        str, typer.Option("--backend", help="Feature extraction: onnx (faster) or torch.")
    ] = "onnx",
    name: Annotated[str, typer.Option("--name", help="The bundle's name.")] = "fisheye-probe",
    cache: Annotated[
        Path | None,
        typer.Option("--cache", help="Folder to cache features in (keyed by photo hashes)."),
    ] = Path("runs/cache"),
    augment_view: Annotated[
        list[str] | None,
        typer.Option(
            "--augment-view",
            help="Also train on this view of the train photos: hflip, vflip or rot180 "
            "(repeatable; one more feature pass each).",
        ),
    ] = None,
    augment_corruptions: Annotated[
        int,
        typer.Option(
            "--augment-corruptions",
            min=0,
            help="Also train on this many randomly corrupted views of each train photo "
            "(noise, pixelation, low contrast, motion blur, colour; one more feature pass each).",
        ),
    ] = 0,
    augment_composites: Annotated[
        int,
        typer.Option(
            "--augment-composites",
            min=0,
            help="Also train on this many views of each train photo with its fish cut out and "
            "laid on a drawn background (board, planks, ice, deck, cloth; one more feature "
            "pass each).",
        ),
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Train a linear probe: frozen ImageNet backbone, logistic-regression head (C chosen on val).

    The bundle records its training photos, the temperature fitted on val and, when the
    data has a test split, accuracy and macro-F1 on it with 95% intervals over groups.
    """
    out_c, err = consoles()
    require_train_extra(err, "probe")
    from fisheye.data.pipelines import load_dataset_rows
    from fisheye.data.preprocess import RESIZE_MODES
    from fisheye.training.features import default_preprocessing
    from fisheye.training.probe import train_probe

    if backend not in ("onnx", "torch"):
        raise fail(err, f"--backend must be onnx or torch, got {backend!r}")
    if resize not in RESIZE_MODES:
        raise fail(err, f"--resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    try:
        spec = default_preprocessing(arch, resize)
    except ValueError as exc:
        raise fail(err, str(exc)) from None
    if input_size is not None:
        spec = dataclasses.replace(spec, input_size=input_size)
    if crop_fraction is not None:
        if resize != "center_crop":
            raise fail(err, "--crop-fraction needs --resize center_crop")
        spec = dataclasses.replace(spec, crop_fraction=crop_fraction)
    if serve_crop_fraction is not None and resize != "center_crop":
        raise fail(err, "--serve-crop-fraction needs --resize center_crop")
    if val_fraction + test_fraction >= 1.0:
        raise fail(err, "--val-fraction + --test-fraction must leave photos for training")
    if not data.exists():
        raise fail(err, f"no such file or folder: {data}")
    progress = RichProgress(err)
    try:
        rows = load_dataset_rows(
            data, val_fraction, test_fraction, seed, progress=progress, resplit=resplit
        )
        passes = 1 + len(augment_view or []) + augment_corruptions + augment_composites
        held_out = sum(r.split in ("val", "test") for r in rows) if serve_crop_fraction else 0
        with progress.task("extracting features", len(rows) * passes + held_out) as advance:
            metrics = train_probe(
                rows,
                data,
                out,
                arch=arch,
                backend=backend,
                name=name,
                cache_dir=cache,
                command=" ".join(["fisheye probe", *sys.argv[2:]]),
                augment_views=augment_view or [],
                augment_corruptions=augment_corruptions,
                augment_composites=augment_composites,
                preprocessing=spec,
                serve_crop_fraction=serve_crop_fraction,
                on_done=advance,
            )
    except (ValueError, OSError) as exc:
        raise fail(err, str(exc)) from None
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    table = Table(title=f"Linear probe written to {out}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    out_c.print(table)
