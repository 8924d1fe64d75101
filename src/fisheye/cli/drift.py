"""`fisheye drift` (test photos for drift) and `fisheye drift fit` (fit the reference)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from fisheye.cli.common import (
    AUTO_CHOICE,
    ModelOption,
    RichProgress,
    consoles,
    fail,
    load_model_or_exit,
    warn,
)
from fisheye.inference.backends import AUTO, NAMES, BackendChoice
from fisheye.monitoring.fitting import FitOptions

ALL = "all"
DEFAULTS = FitOptions()
drift_app = typer.Typer(
    help="Test a folder of photos for drift against the model's training photos.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@drift_app.callback()
def drift(
    ctx: typer.Context,
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="A folder of photos (searched recursively).")
    ] = None,
    model: ModelOption = None,
    sample: Annotated[
        int, typer.Option("--sample", "-n", min=2, help="Photos drawn at random from the folder.")
    ] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the sample and the test.")] = 0,
    backend: Annotated[
        BackendChoice,
        typer.Option(
            "--backend",
            "-b",
            help="Backend that extracts the features (auto: what `fisheye serve` uses); the "
            "reference fitted on the same backend is used.",
        ),
    ] = AUTO_CHOICE,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help='Print only {"n", "score", "p_value", "drift", "ood_fraction", '
            '"estimated_accuracy"}.',
        ),
    ] = False,
) -> None:
    """Test photos against the bundle's drift reference (kernel MMD) and score each for OOD."""
    if ctx.invoked_subcommand is not None:
        return
    from fisheye.data.files import InputPathError, collect_image_paths
    from fisheye.monitoring.drift_check import DriftCheckError, check_photos

    out, err = consoles()
    if data is None:
        raise fail(err, "give the photos to test with --data DIR (or run `fisheye drift fit`)")
    try:
        paths = collect_image_paths([data])
    except InputPathError as exc:
        raise fail(err, str(exc)) from None
    if len(paths) < 2:
        raise fail(err, f"need at least 2 photos in {data}, found {len(paths)}")
    predictor, monitor = load_model_or_exit(err, model, backend=backend)
    where = predictor.bundle.path
    if monitor is None:
        raise fail(
            err,
            f"the model bundle {where} has no drift reference; create it with "
            f"`fisheye drift fit --model {where} --data <training photos>`",
        )
    if not monitor.matches_backend:
        warn(
            err,
            f"warning: no drift reference for the {predictor.backend_name} backend; using the "
            f"{monitor.backend} one, whose features differ (false alarms likely). Fit one with "
            f"`fisheye drift fit --model {where} --backend {predictor.backend_name} "
            "--data <training photos>`",
        )
    try:
        with RichProgress(err).task("extracting features", min(sample, len(paths))) as advance:
            check = check_photos(
                predictor, monitor, paths, sample_size=sample, seed=seed, on_done=advance
            )
    except DriftCheckError as exc:
        raise fail(err, f"{data}: {exc}") from None
    result = check.result
    if as_json:
        typer.echo(json.dumps(check.to_json()))
        return
    table = Table(title=f"Drift test: {data} vs the training photos of {predictor.bundle.name}")
    table.add_column("")
    table.add_column("value", overflow="fold")
    verdict = (
        Text("DRIFT: these photos differ from the training photos", style="bold red")
        if result.drift
        else Text("no drift detected", style="green")
    )
    table.add_row(
        "photos tested", f"{result.n} of {check.n_found} ({check.n_unreadable} unreadable)"
    )
    table.add_row("backend", f"{predictor.backend_name} (reference: {monitor.backend})")
    table.add_row("MMD score", f"{result.score:.4f}")
    table.add_row("p-value", f"{result.p_text()} ({result.n_permutations} permutations)")
    table.add_row("verdict", verdict)
    table.add_row(
        "out-of-distribution photos",
        f"{result.ood_fraction:.1%} (threshold {monitor.ood.threshold:.1f}, "
        f"{monitor.ood.false_alarm_rate:.0%} false alarms on val)",
    )
    if check.estimated_accuracy is not None:
        table.add_row(
            "estimated accuracy",
            f"{check.estimated_accuracy:.1%} (mean calibrated confidence; no labels needed, "
            "trustworthy only for in-distribution photos)",
        )
    out.print(table)


@drift_app.command("fit")
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
