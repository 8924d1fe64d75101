"""`fisheye predict --out FILE`: stream result rows to a file, locally or on Ray Data,
resumable, with a summary and an exit code at the end."""

from __future__ import annotations

from enum import StrEnum

import typer
from rich.text import Text

from fisheye.cli.common import RichProgress, fail


class Engine(StrEnum):
    """Where `fisheye predict --out` runs the model."""

    local = "local"
    ray = "ray"


def predict_to_file(
    err,
    predictor,
    files,
    out_file: str,
    *,
    resume: bool,
    engine: Engine,
    top_k: int,
    batch_size: int,
    ray_address: str | None,
    actors: int,
    rows_per_part: int,
) -> None:
    """Stream rows to `out_file` with the chosen engine; summary and exit code at the end."""
    from fisheye.inference.batch import local_batches, pending, write_rows
    from fisheye.inference.ray_engine import RayUnavailableError
    from fisheye.inference.results import ResultsError, ResultWriter

    try:
        writer = ResultWriter(out_file, resume=resume, rows_per_part=rows_per_part)
    except (ResultsError, OSError) as exc:
        raise fail(err, str(exc)) from None
    todo = pending(files, writer)
    if engine is Engine.ray:
        batches = _ray_batches(
            err,
            predictor,
            todo,
            top_k=top_k,
            batch_size=batch_size,
            address=ray_address,
            actors=actors,
        )
    else:
        batches = local_batches(predictor, todo, batch_size=batch_size, top_k=top_k)
    skipped = len(files) - len(todo)
    if skipped:
        err.print(
            f"resuming {out_file}: {skipped} of {len(files)} photos already there", soft_wrap=True
        )
    try:
        with writer, RichProgress(err).task("predicting", len(todo), unit="photos") as advance:
            summary = write_rows(
                batches, writer, total=len(files), skipped=skipped, on_done=advance
            )
    except KeyboardInterrupt:
        raise fail(
            err,
            f"interrupted: what was written to {out_file} is kept; add --resume to continue",
            code=130,
        ) from None
    except (ResultsError, OSError) as exc:
        raise fail(err, f"cannot write {out_file}: {exc}") from None
    except RayUnavailableError as exc:  # a Ray pipeline that failed on the cluster
        raise fail(
            err, f"{exc}\nwhat was written to {out_file} is kept; add --resume to continue", code=1
        ) from None
    err.print(
        Text(f"wrote {summary.written} rows to {out_file}")
        + Text(f" ({summary.skipped} already there)" if summary.skipped else ""),
        soft_wrap=True,
    )
    if summary.failed:
        err.print(
            Text(
                f"{summary.failed} of {summary.written} files could not be read "
                f"(rows with an error in {out_file})",
                style="yellow",
            ),
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _ray_batches(
    err, predictor, todo, *, top_k: int, batch_size: int, address: str | None, actors: int
):
    """The Ray Data engine's batches of rows, after joining or starting Ray."""
    import functools

    from fisheye.inference.ray_engine import RayUnavailableError, connect, ray_batches
    from fisheye.monitoring.loading import load_predictor

    try:
        connect(address)
    except RayUnavailableError as exc:
        raise fail(err, str(exc)) from None
    # The actors get a copy of the bundle this process has already verified, and the backend
    # that was asked for: `auto` checks int8 again on each actor's own CPU.
    load = functools.partial(
        load_predictor, backend=predictor.backend_selection.requested, top_k=top_k
    )
    return ray_batches(
        todo,
        bundle_dir=predictor.bundle.path,
        load=load,
        preparer=predictor.preparer,
        actors=actors,
        batch_size=batch_size,
        top_k=top_k,
    )
