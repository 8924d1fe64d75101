"""`fisheye drift` and `fisheye monitor`: drift tests, drift-reference fitting and reports."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

drift_app = typer.Typer(
    help="Test a folder of photos for drift against the model's training photos.",
    invoke_without_command=True,
    no_args_is_help=False,
)
monitor_app = typer.Typer(help="Reports from the server's prediction log.", no_args_is_help=True)

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")

ModelOption = Annotated[
    Path | None,
    typer.Option(
        "--model", "-m", help="Model bundle folder (default: $FISHEYE_MODEL, else models/default)."
    ),
]


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
        str,
        typer.Option(
            "--backend",
            "-b",
            help="Backend that extracts the features (auto: what `fisheye serve` uses); the "
            "reference fitted on the same backend is used.",
        ),
    ] = "auto",
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help='Print only {"n", "score", "p_value", "drift", "ood_fraction"}.'
        ),
    ] = False,
) -> None:
    """Test photos against the bundle's drift reference (kernel MMD) and score each for OOD."""
    if ctx.invoked_subcommand is not None:
        return
    from fisheye.cli import _consoles, _fail, _load_predictor, _progress
    from fisheye.inference.files import InputPathError, collect_image_paths
    from fisheye.monitoring.reference import extract_features
    from fisheye.monitoring.reference import sample as draw

    out, err = _consoles()
    if data is None:
        raise _fail(err, "give the photos to test with --data DIR (or run `fisheye drift fit`)")
    try:
        paths = collect_image_paths([data])
    except InputPathError as exc:
        raise _fail(err, str(exc)) from None
    if len(paths) < 2:
        raise _fail(err, f"need at least 2 photos in {data}, found {len(paths)}")
    if backend not in BACKENDS:
        raise _fail(err, f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    predictor = _load_predictor(err, model, backend=backend)
    monitor = predictor.monitor
    if monitor is None:
        raise _fail(
            err,
            f"the model bundle {predictor.bundle.path} has no drift reference; create it with "
            f"`fisheye drift fit --model {predictor.bundle.path} --data <training photos>`",
        )
    if not monitor.matches_backend:
        err.print(
            Text(
                f"warning: no drift reference for the {predictor.backend_name} backend; using "
                f"the {monitor.backend} one, whose features differ (false alarms likely). Fit "
                f"one with `fisheye drift fit --model {predictor.bundle.path} --backend "
                f"{predictor.backend_name} --data <training photos>`",
                style="yellow",
            ),
            soft_wrap=True,
        )
    chosen = draw([(p, None) for p in paths], sample, seed)
    with _progress(err, "extracting features") as progress:
        task = progress.add_task("features", total=len(chosen))
        feats = extract_features(predictor, chosen, on_done=partial(progress.advance, task))
    if len(feats.paths) < 2:
        raise _fail(err, f"fewer than 2 readable photos in {data}")
    scores, in_dist = monitor.score(feats.features)
    result = monitor.drift.test(feats.features, seed=seed, ood_fraction=float((~in_dist).mean()))
    if as_json:
        typer.echo(json.dumps(result.to_json()))
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
        "photos tested", f"{result.n} of {len(paths)} ({len(feats.unreadable)} unreadable)"
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
    out.print(table)


@drift_app.command("fit")
def drift_fit(
    data: Annotated[
        Path,
        typer.Option(
            "--data", "-d", help="Training photos: data/train (+ data/val) or a class-folder tree."
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
    ] = 1500,
    reference_size: Annotated[
        int, typer.Option("--reference-size", min=2, help="Photos kept as the MMD reference.")
    ] = 500,
    false_alarm_rate: Annotated[
        float,
        typer.Option("--false-alarm-rate", min=0.001, max=0.5, help="OOD false alarms on val."),
    ] = 0.05,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the sample.")] = 0,
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            "-b",
            help="Backend whose features the reference is fitted on; all: torch (shared by "
            "onnx) and every quantised export (int8 features differ from fp32).",
        ),
    ] = "all",
) -> None:
    """Fit the drift reference and OOD threshold of a bundle and store them in it."""
    from fisheye.bundle import BundleError, default_bundle_dir, read_meta
    from fisheye.cli import _consoles, _fail
    from fisheye.inference.backends import exported_entries, select_backend
    from fisheye.monitoring.reference import reference_family

    out, err = _consoles()
    if not data.is_dir():
        raise _fail(err, f"no such folder: {data}")
    if backend not in (*BACKENDS, "all"):
        raise _fail(err, f"unknown backend {backend!r}; one of all, {', '.join(BACKENDS)}")
    bundle_dir = model if model is not None else default_bundle_dir()
    try:
        meta = read_meta(bundle_dir)
    except (BundleError, OSError, ValueError) as exc:
        raise _fail(err, f"cannot load the model bundle: {exc}") from None
    if backend == "all":
        # One reference per distinct feature space: fp32 (torch, shared by onnx) and each
        # quantised export, so whichever backend serves finds its own.
        backends = ["torch"] + sorted(
            b for b in exported_entries(meta) if reference_family(b) != "torch"
        )
    else:
        backends = [select_backend(meta) if backend == "auto" else backend]
    for name in backends:
        _fit_one(
            err, out, bundle_dir, name, data, val, sample, reference_size, false_alarm_rate, seed
        )


def _fit_one(
    err: Console,
    out: Console,
    model: Path,
    backend: str,
    data: Path,
    val: Path | None,
    sample: int,
    reference_size: int,
    false_alarm_rate: float,
    seed: int,
) -> None:
    """Fit and store the drift reference of one backend."""
    from fisheye.cli import _fail, _load_predictor, _progress
    from fisheye.inference.files import InputPathError
    from fisheye.monitoring.reference import fit_bundle, labelled_paths, resolve_val_dir

    train_dir, val_dir = resolve_val_dir(data, val)
    predictor = _load_predictor(err, model, backend=backend)
    try:
        train_items = labelled_paths(train_dir, predictor.classes)
        val_items = labelled_paths(val_dir, predictor.classes) if val_dir else None
    except InputPathError as exc:
        raise _fail(err, str(exc)) from None
    if len(train_items) < 4:
        raise _fail(err, f"need at least 4 training photos in {train_dir}")
    total = min(sample, len(train_items)) + len(val_items or [])
    with _progress(err, f"extracting {backend} features") as progress:
        task = progress.add_task("features", total=total)
        try:
            monitor = fit_bundle(
                predictor,
                train_items,
                val_items,
                fit_size=sample,
                reference_size=reference_size,
                false_alarm_rate=false_alarm_rate,
                seed=seed,
                data=str(data),
                on_done=partial(progress.advance, task),
            )
        except ValueError as exc:
            raise _fail(err, str(exc)) from None
    info = monitor.info
    out.print(
        Text(
            f"{backend} drift reference written to {predictor.bundle.path}: "
            f"{info['n_reference']} reference "
            f"photos, OOD scorer fitted on {info['n_fit']}, threshold "
            f"{monitor.ood.threshold:.1f} ({info['calibration_false_alarm_rate']:.1%} false "
            f"alarms on {info['n_calibration']} {info['calibration']} photos)"
        ),
        soft_wrap=True,
    )


@monitor_app.command("report")
def monitor_report(
    db: Annotated[Path, typer.Option("--db", help="The server's prediction log (SQLite).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.html and plots.")],
    window: Annotated[
        str, typer.Option("--window", help="How far back, e.g. 24h, 7d, 30m; all: everything.")
    ] = "all",
) -> None:
    """Write an HTML report with plots: class mix, confidence, OOD rate, drift, accuracy."""
    from fisheye.cli import _consoles, _fail
    from fisheye.monitoring.report import ReportError, parse_window, write_report

    out, err = _consoles()
    try:
        seconds = None if window == "all" else parse_window(window)
        page = write_report(db, out_dir, window_s=seconds)
    except (ReportError, ValueError) as exc:
        raise _fail(err, str(exc)) from None
    out.print(Text(f"wrote {page}"), soft_wrap=True)
