"""The `fisheye` command line: each command is a thin call into the modules."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from fisheye.data.cli import data_app
from fisheye.monitoring.cli import drift_app, monitor_app

if TYPE_CHECKING:
    from fisheye.inference.predictor import FileResult, Predictor

app = typer.Typer(
    name="fisheye",
    help="FishEye: recognise fish and seafood species from photos, and run the model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_app, name="data")
app.add_typer(drift_app, name="drift")
app.add_typer(monitor_app, name="monitor")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")):
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        # Logs go to stderr so stdout stays parseable (`--format json`, `evaluate --json`).
        handlers=[
            RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
        ],
    )


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def train(ctx: typer.Context) -> None:
    """Train a model with Hydra overrides, e.g. `fisheye train model=efficientnet_lite0`.

    Ends by writing a model bundle under the run folder. `fisheye train --help` shows
    the Hydra config groups; `--cfg job` prints the composed config.
    """
    from fisheye.train import hydra_entry

    sys.argv = ["fisheye train", *ctx.args]
    hydra_entry()


class OutputFormat(StrEnum):
    """How `fisheye predict` writes its results."""

    table = "table"
    json = "json"
    csv = "csv"


def _consoles() -> tuple[Console, Console]:
    """Fresh stdout/stderr consoles (made per call, so redirected streams are honoured)."""
    return Console(), Console(stderr=True)


def _fail(err: Console, message: str, code: int = 2) -> typer.Exit:
    err.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    return typer.Exit(code)


def _load_predictor(err: Console, model: Path | None, **kwargs: Any) -> Predictor:
    from fisheye.bundle import BundleError, default_bundle_dir
    from fisheye.inference.predictor import Predictor

    bundle_dir = model if model is not None else default_bundle_dir()
    try:
        return Predictor.from_dir(bundle_dir, **kwargs)
    except BundleError as exc:
        raise _fail(err, f"cannot load the model bundle: {exc}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise _fail(
            err, f"the model bundle {bundle_dir} is invalid ({type(exc).__name__}: {exc})"
        ) from None


def _progress(err: Console, what: str) -> Progress:
    return Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


ModelOption = Annotated[
    Path | None,
    typer.Option(
        "--model", "-m", help="Model bundle folder (default: $FISHEYE_MODEL, else models/default)."
    ),
]


class BackendChoice(StrEnum):
    """Which way to run the model (auto: fastest exported form within 0.5 points of fp32)."""

    auto = "auto"
    torch = "torch"
    onnx = "onnx"
    onnx_int8 = "onnx-int8"


BackendOption = Annotated[
    BackendChoice,
    typer.Option(
        "--backend",
        "-b",
        help="auto (fastest exported backend within 0.5 points of fp32), torch, onnx, onnx-int8.",
    ),
]


@app.command()
def predict(
    paths: Annotated[
        list[Path], typer.Argument(help="Photos and/or folders (searched recursively).")
    ],
    model: ModelOption = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes to list.")] = 3,
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", "-f", help="table, json or csv (json/csv go to stdout)."),
    ] = OutputFormat.table,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Photos per model call.")
    ] = 16,
    backend: BackendOption = BackendChoice.auto,
) -> None:
    """Predict the species in photos. Exit code 1 if any file could not be read."""
    from fisheye.inference.files import InputPathError, collect_image_paths

    out, err = _consoles()
    try:
        files = collect_image_paths(paths)
    except InputPathError as exc:
        raise _fail(err, str(exc)) from None
    if not files:
        raise _fail(err, f"no photos found in {', '.join(map(str, paths))}")
    predictor = _load_predictor(err, model, top_k=top_k, backend=backend.value)

    results: list[FileResult] = []
    with _progress(err, "predicting") as progress:
        task = progress.add_task("predict", total=len(files))
        done = partial(progress.advance, task)
        results.extend(predictor.predict_files(files, batch_size=batch_size, on_done=done))

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
        out.print(_predictions_table(results))
    if output_format is not OutputFormat.table:
        for r in failed:
            err.print(Text(f"cannot read {r.path}: {r.error}", style="red"), soft_wrap=True)
    if failed:
        err.print(Text(f"{len(failed)} of {len(results)} files could not be read", style="yellow"))
        raise typer.Exit(1)


def _predictions_table(results: list[FileResult]) -> Table:
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


@app.command()
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
    as_json: Annotated[
        bool, typer.Option("--json", help="Print metrics.json to stdout, and nothing else.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Photos per model call.")
    ] = 32,
    backend: BackendOption = BackendChoice.auto,
) -> None:
    """Evaluate a model bundle on labelled photos; write metrics, confusion matrix, errors."""
    from fisheye import evaluate as ev

    out, err = _consoles()
    try:
        loaded = ev.load_eval_data(data, split)
    except (ev.EvaluationError, ValueError, OSError) as exc:
        raise _fail(err, f"cannot read the data at {data}: {exc}") from None
    predictor = _load_predictor(err, model, backend=backend.value)
    target = out_dir if out_dir is not None else ev.default_out_dir()
    try:
        ev.check_classes(loaded.rows, predictor.classes)
        with _progress(err, "evaluating") as progress:
            task = progress.add_task("evaluate", total=len(loaded.rows))
            metrics = ev.evaluate_bundle(
                predictor,
                loaded.rows,
                target,
                batch_size=batch_size,
                info={**loaded.info(), "backend": predictor.backend_name},
                unreadable=loaded.unreadable,
                on_done=partial(progress.advance, task),
            )
    except ev.EvaluationError as exc:
        raise _fail(err, str(exc)) from None

    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        out.print(_metrics_table(metrics))
        summary = (
            f"accuracy {metrics['accuracy']:.2%}, macro F1 {metrics['macro_f1']:.3f} on "
            f"{metrics['n_images']} photos: {metrics['n_errors']} wrong, "
            f"{metrics['n_unreadable']} unreadable"
        )
        out.print(Text(summary, style="bold"), soft_wrap=True)
        written = f"wrote {target}/ (metrics.json, confusion_matrix.png, errors.csv)"
        out.print(Text(written), soft_wrap=True)
    shown = 20
    for item in metrics["unreadable"][:shown]:
        line = f"cannot read {item['path']}: {item['error']}"
        err.print(Text(line, style="yellow"), soft_wrap=True)
    if metrics["n_unreadable"]:
        more = f" ({shown} shown; all in metrics.json)" if metrics["n_unreadable"] > shown else ""
        err.print(Text(f"{metrics['n_unreadable']} photos could not be read{more}", style="yellow"))


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


@app.command()
def serve(
    model: ModelOption = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Interface [default: $FISHEYE_HOST or 127.0.0.1].")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", "-p", min=0, max=65535, help="Port [default: $FISHEYE_PORT or 8000]."
        ),
    ] = None,
    backend: Annotated[
        BackendChoice | None,
        typer.Option("--backend", "-b", help="Model backend [default: $FISHEYE_BACKEND or auto]."),
    ] = None,
) -> None:
    """Serve the model over HTTP: the web page at /, the API under /v1, docs at /docs."""
    import uvicorn
    from pydantic import ValidationError

    from fisheye.bundle import BundleError, read_meta
    from fisheye.serving import ServeSettings, create_app

    _, err = _consoles()
    options = {
        "model": model,
        "host": host,
        "port": port,
        "backend": backend.value if backend else None,
    }
    overrides = {k: v for k, v in options.items() if v is not None}
    try:
        settings = ServeSettings(**overrides)
    except ValidationError as exc:
        raise _fail(
            err, f"invalid server settings (FISHEYE_* variables or options):\n{exc}"
        ) from None
    try:
        meta = read_meta(settings.model)  # fail fast on a wrong path; weights load in the server
    except BundleError as exc:
        raise _fail(err, f"cannot serve the model bundle: {exc}") from None
    from fisheye.inference.backends import ONNX_BACKENDS, exported_entries

    if settings.backend in ONNX_BACKENDS and settings.backend not in exported_entries(meta):
        raise _fail(
            err,
            f"the bundle {settings.model} has no {settings.backend} export; run `fisheye export "
            f"--model {settings.model} --format {settings.backend}` or use --backend auto",
        )
    err.print(
        f"FishEye serving {settings.model} at http://{settings.host}:{settings.port} "
        f"(API docs at /docs)",
        soft_wrap=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,
        timeout_graceful_shutdown=10,
    )


class ExportFormat(StrEnum):
    """What `fisheye export` writes into the bundle."""

    onnx = "onnx"
    onnx_int8 = "onnx-int8"
    torchscript = "torchscript"


@app.command("export")
def export_cmd(
    export_format: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="onnx, onnx-int8 or torchscript.")
    ],
    model: ModelOption = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration", help="Training photos to calibrate int8 (default: shared train)."
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
) -> None:
    """Export the model into its bundle (checked, measured and recorded in bundle.json)."""
    from fisheye.bundle import BundleError, default_bundle_dir
    from fisheye.evaluate import EvaluationError
    from fisheye.inference.export import ExportError, export

    out, err = _consoles()
    bundle_dir = model if model is not None else default_bundle_dir()
    try:
        entry = export(
            bundle_dir,
            export_format.value,
            calibration=calibration,
            calibration_size=calibration_size,
            data=data,
            limit=limit,
            method=method,
        )
    except (BundleError, ExportError, EvaluationError, OSError) as exc:
        raise _fail(err, f"export failed: {exc}") from None
    summary = {k: entry[k] for k in ("accuracy", "reference_accuracy", "latency_ms") if k in entry}
    out.print(Text(f"exported {export_format.value} into {bundle_dir} {summary}"), soft_wrap=True)


@app.command()
def bench(
    model: ModelOption = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="Labelled photos for accuracy (default: shared val)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per batch.")] = 10,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Accuracy on a subset of DATA.")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="Intra-op threads.")
    ] = None,
    backends: Annotated[
        list[str] | None,
        typer.Option(
            "--backend",
            "-b",
            help="Only these (repeatable): torch, torch-compile, torch-pruned, onnx, onnx-int8.",
        ),
    ] = None,
) -> None:
    """Measure latency (batch 1/8/32), images/s, size and accuracy of every backend."""
    from fisheye.bundle import BundleError
    from fisheye.evaluate import EvaluationError
    from fisheye.inference.bench import run_bench

    out, err = _consoles()
    try:
        result = run_bench(
            model,
            data=data,
            limit=limit,
            repeats=repeats,
            threads=threads,
            backends=backends,
            on_backend=lambda name: err.print(f"measuring {name}..."),
        )
    except (BundleError, EvaluationError, ValueError, OSError) as exc:
        raise _fail(err, f"bench failed: {exc}") from None
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    out.print(_bench_table(result))
    pre = result["preprocessing"]
    out.print(
        Text(
            f"preprocessing of one {pre['jpeg']} JPEG: PIL decode+resize+normalise "
            f"{pre['predictor_total_ms']:.2f} ms, torchvision.io {pre['torchvision_total_ms']:.2f}"
            f" ms; load average {result['machine']['load_avg_1m']}"
        ),
        soft_wrap=True,
    )


def _bench_table(result: dict[str, Any]) -> Table:
    table = Table()
    for col in ("backend", "b1 ms", "b8 ms", "b32 ms", "images/s", "MB", "accuracy"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for name, r in result["backends"].items():
        if "error" in r:
            table.add_row(Text(name), Text(f"error: {r['error']}", style="red"))
            continue
        lat = r["latency_ms"]
        acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.2%}"
        table.add_row(
            Text(name),
            *(f"{lat[k]:.1f}" if k in lat else "-" for k in ("1", "8", "32")),
            f"{r['images_per_s']:.1f}",
            f"{r['size_mb']:.1f}",
            acc,
        )
    return table


@app.command("profile")
def profile_cmd(
    model: ModelOption = None,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the Chrome trace files.")
    ] = Path("runs/profile"),
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Photos to decode (default: shared val).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Photos.")] = 8,
) -> None:
    """Profile an inference batch and a training step; write Chrome traces, print top ops."""
    from fisheye.bundle import BundleError
    from fisheye.inference.profile import run_profile

    out, err = _consoles()
    try:
        report = run_profile(model, out_dir, data=data, batch_size=batch_size)
    except (BundleError, OSError) as exc:
        raise _fail(err, f"profile failed: {exc}") from None
    out.print(Text("inference (decode, resize, normalise, model), top ops by self CPU time"))
    out.print(Text(report.inference_table), soft_wrap=True)
    out.print(Text("training step (forward, backward, SGD), top ops by self CPU time"))
    out.print(Text(report.train_table), soft_wrap=True)
    out.print(
        Text(f"Chrome traces: {report.inference_trace}, {report.train_trace} (chrome://tracing)")
    )
