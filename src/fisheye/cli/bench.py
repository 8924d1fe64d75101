"""`fisheye bench`: latency, throughput, size and accuracy of every backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from fisheye.cli.common import JsonOption, ModelOption, consoles, fail, require_train_extra


def bench(
    model: ModelOption = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="Labelled photos for accuracy (default: shared val)."),
    ] = None,
    as_json: JsonOption = False,
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
            help="Only these (repeatable): a registry backend, torch-compile or torch-pruned.",
        ),
    ] = None,
) -> None:
    """Measure latency (batch 1/8/32), images/s, size and accuracy of every backend."""
    out, err = consoles()
    require_train_extra(err, "bench")
    from fisheye.bundle import BundleError
    from fisheye.data.labelled import LabelledDataError
    from fisheye.inference.bench import run_bench

    try:
        result = run_bench(
            model,
            data=data,
            limit=limit,
            repeats=repeats,
            threads=threads,
            only=backends,
            on_backend=lambda name: err.print(f"measuring {name}..."),
        )
    except (BundleError, LabelledDataError, ValueError, OSError) as exc:
        raise fail(err, f"bench failed: {exc}") from None
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    out.print(_table(result))
    pre = result["preprocessing"]
    out.print(
        Text(
            f"preprocessing of one {pre['jpeg']} JPEG: PIL decode+resize+normalise "
            f"{pre['predictor_total_ms']:.2f} ms, torchvision.io {pre['torchvision_total_ms']:.2f}"
            f" ms; load average {result['machine']['load_avg_1m']}"
        ),
        soft_wrap=True,
    )
    cpu = result["machine"]["cpu"]
    out.print(
        Text(
            f"CPU: {cpu['cpu'] or 'unknown'}, {cpu['machine']} {' '.join(cpu['isa'])}; "
            f"onnxruntime {cpu['onnxruntime']}"
        ),
        soft_wrap=True,
    )
    for name, r in result["backends"].items():
        check = r.get("host_check")
        if check is not None:
            style = None if check["status"] in ("same_cpu", "passed") else "yellow"
            out.print(
                Text(f"{name} host check: {check['status']}: {check['detail']}", style=style),
                soft_wrap=True,
            )


def _table(result: dict[str, Any]) -> Table:
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
