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
from fisheye.cli.drift_fit import fit
from fisheye.inference.backends import BackendChoice

drift_app = typer.Typer(
    help="Test a folder of photos for drift against the model's training photos.",
    invoke_without_command=True,
    no_args_is_help=False,
)
drift_app.command("fit")(fit)


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
