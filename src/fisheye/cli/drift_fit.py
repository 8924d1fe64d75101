"""`fisheye drift fit`: fit a bundle's drift reference, OOD threshold, shift temperature
and abstention threshold, and store them in it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fisheye.cli.common import ModelOption, RichProgress, consoles, fail, load_model_or_exit
from fisheye.inference.backends import AUTO, NAMES
from fisheye.monitoring.fitting import FitOptions

ALL = "all"
DEFAULTS = FitOptions()


def fit(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            "-d",
            help="Training photos: data/train (+ data/val), a class-folder tree, or a "
            "manifest CSV (its train split; its val split for the OOD threshold).",
        ),
    ],
    model: ModelOption = None,
    val: Annotated[
        Path | None,
        typer.Option(
            "--val", help="Validation photos for the OOD threshold (default: sibling val/)."
        ),
    ] = None,
    sample: Annotated[
        int, typer.Option("--sample", "-n", min=4, help="Training photos to fit on.")
    ] = DEFAULTS.sample,
    reference_size: Annotated[
        int, typer.Option("--reference-size", min=2, help="Photos kept as the MMD reference.")
    ] = DEFAULTS.reference_size,
    false_alarm_rate: Annotated[
        float,
        typer.Option("--false-alarm-rate", min=0.001, max=0.5, help="OOD false alarms on val."),
    ] = DEFAULTS.false_alarm_rate,
    shifted_views: Annotated[
        int,
        typer.Option(
            "--shifted-views",
            min=0,
            help="Randomly corrupted views of each val photo that the shift temperature is "
            "fitted on (0: no shift temperature; confidences then ignore the OOD score).",
        ),
    ] = DEFAULTS.shifted_views,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the sample.")] = DEFAULTS.seed,
    real_world_val: Annotated[
        Path | None,
        typer.Option(
            "--real-world-val",
            help="Labelled photos from outside the training photos' setting (class folders, "
            "e.g. what `fisheye data download` staged under val/): the abstention threshold "
            "is chosen on them.",
        ),
    ] = None,
    abstain_target: Annotated[
        float,
        typer.Option(
            "--abstain-target",
            min=0.5,
            max=1.0,
            help="With --real-world-val: the accuracy the answered photos must reach there; "
            "below the threshold that gives it, the answer is 'not sure'.",
        ),
    ] = DEFAULTS.abstain_target,
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            "-b",
            help=f"Backend whose features the reference is fitted on: {ALL} (one reference per "
            f"feature family: fp32, and each quantised export), {AUTO}, {', '.join(NAMES)}.",
        ),
    ] = ALL,
) -> None:
    """Fit the drift reference and OOD threshold of a bundle and store them in it."""
    from fisheye.bundle import BundleError, default_bundle_dir, read_meta
    from fisheye.data.files import InputPathError
    from fisheye.data.labelled import LabelledDataError, labelled_paths, reference_photos
    from fisheye.inference.backends import reference_backends, resolve
    from fisheye.monitoring.fitting import fit_bundle

    out, err = consoles()
    if not data.exists():
        raise fail(err, f"no such file or folder: {data}")
    bundle_dir = model if model is not None else default_bundle_dir()
    try:
        meta = read_meta(bundle_dir)
        backends = reference_backends(meta) if backend == ALL else [resolve(meta, backend)]
    except (BundleError, OSError, ValueError) as exc:
        raise fail(err, f"cannot fit a drift reference for {bundle_dir}: {exc}") from None
    options = FitOptions(
        sample=sample,
        reference_size=reference_size,
        false_alarm_rate=false_alarm_rate,
        shifted_views=shifted_views,
        seed=seed,
        abstain_target=abstain_target,
    )
    if real_world_val is not None and not real_world_val.is_dir():
        raise fail(err, f"--real-world-val: no such folder: {real_world_val}")
    for name in backends:
        predictor, _ = load_model_or_exit(err, bundle_dir, backend=name, monitoring=None)
        try:
            train, val_items = reference_photos(data, val, predictor.classes)
            outside = labelled_paths(real_world_val, predictor.classes) if real_world_val else None
            if outside is not None and (not outside or any(lab is None for _, lab in outside)):
                raise LabelledDataError(
                    f"--real-world-val {real_world_val}: every photo must sit in a folder "
                    f"named after one of the model's classes ({', '.join(predictor.classes)})"
                )
            total = min(options.sample, len(train)) + len(val_items or []) * (1 + shifted_views)
            total += len(outside or [])
            with RichProgress(err).task(f"extracting {name} features", total) as advance:
                monitor = fit_bundle(
                    predictor,
                    train,
                    val_items,
                    options,
                    data=str(data),
                    real_world_items=outside,
                    on_done=advance,
                )
        except (InputPathError, LabelledDataError, ValueError) as exc:
            raise fail(err, str(exc)) from None
        written = f"{name} drift reference written to {bundle_dir}: {monitor.summary()}"
        out.print(Text(written), soft_wrap=True)
        if outside:
            abstention = read_meta(bundle_dir)["abstention"]
            out.print(
                Text(
                    f"abstention below {abstention['threshold']:.3f}: "
                    f"{abstention['coverage']:.0%} of {abstention['photos']} real-world val "
                    f"photos answered, accuracy {abstention['accuracy']} "
                    f"(target {abstention['target_accuracy']})"
                ),
                soft_wrap=True,
            )
