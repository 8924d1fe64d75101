"""What every command shares: consoles, errors, progress bars, options, loading a model."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from fisheye.bundle import DEFAULT_BUNDLE
from fisheye.cli.option_specs import MODEL
from fisheye.data.progress import Advance
from fisheye.inference.backends import AUTO, NAMES, BackendChoice

if TYPE_CHECKING:
    from fisheye.monitoring.loading import LoadedModel
    from fisheye.tracking.loading import ResolvedSource

MAX_LISTED = 20  # unreadable files and the like listed before "... and N more"


def consoles() -> tuple[Console, Console]:
    """Fresh stdout/stderr consoles (made per call, so redirected streams are honoured)."""
    return Console(), Console(stderr=True)


def fail(err: Console, message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` on stderr; return the Exit to raise (exit code 2: usage/input)."""
    err.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    return typer.Exit(code)


TRAIN_MODULES = ("torch", "lightning", "hydra", "sklearn")


def require_train_extra(err: Console, command: str, modules: tuple[str, ...] = TRAIN_MODULES):
    """Exit with one clear line when the training extra that `command` needs is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise fail(
            err,
            f"`fisheye {command}` needs the training extra ({', '.join(missing)} missing): "
            "pip install 'fisheye[train]', or `make install` in a clone",
        )


def warn(err: Console, message: str) -> None:
    """Print a warning line on stderr."""
    err.print(Text(message, style="yellow"), soft_wrap=True)


def _rate_column(unit: str) -> Any:
    """A progress column with the steps per second, e.g. "41.2 photos/s"."""
    from rich import progress as rich_progress

    class RateColumn(rich_progress.ProgressColumn):
        def render(self, task: rich_progress.Task) -> Text:
            """The task's current rate."""
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else f"{speed:.1f} {unit}/s", style="cyan")

    return RateColumn()


class RichProgress:
    """Progress bars on stderr (transient; nothing is shown when it is not a terminal)."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console

    @contextmanager
    def task(self, description: str, total: int, unit: str | None = None) -> Iterator[Advance]:
        """A progress bar for one task; yields its `advance(n=1)` function.

        With a `unit` (e.g. "photos") the bar also shows the rate, e.g. "41.2 photos/s".
        """
        # Imported here: `fisheye serve` imports this module and shows no progress bar.
        from rich import progress as rich_progress

        console = self._console or Console(stderr=True)
        columns = (
            rich_progress.TextColumn("{task.description}"),
            rich_progress.BarColumn(),
            rich_progress.MofNCompleteColumn(),
            *([_rate_column(unit)] if unit else []),
            rich_progress.TimeRemainingColumn(),
        )
        with rich_progress.Progress(
            *columns, console=console, transient=True, disable=not console.is_terminal
        ) as bar:
            task_id = bar.add_task(description, total=total)

            def advance(n: int = 1) -> None:
                bar.advance(task_id, n)

            yield advance


ModelOption = Annotated[
    Path | None,
    typer.Option(
        "--model", "-m", help="Model bundle folder (default: $FISHEYE_MODEL, else models/default)."
    ),
]
# Commands that only read a model (predict, serve) also take a registry URI.
ModelRefOption = Annotated[str | None, typer.Option(*MODEL.flags, help=MODEL.help)]
BackendOption = Annotated[
    BackendChoice,
    typer.Option(
        "--backend",
        "-b",
        help=f"{AUTO} (fastest exported backend within 0.5 points of fp32), {', '.join(NAMES)}.",
    ),
]
AUTO_CHOICE = BackendChoice(AUTO)
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object, nothing else.")]


def resolve_model_or_exit(
    err: Console, model: Path | str | None, pinned: str | None = None
) -> ResolvedSource:
    """A `--model` value (else $FISHEYE_MODEL, else models/default) as a local, pinned bundle.

    A registry URI (`models:/NAME@ALIAS`) is resolved through MLflow to a verified local
    copy of the registered bundle, pinned to its registered hash; a folder is taken as it
    is, with `pinned`. Any failure exits with one clear line.
    """
    from fisheye.tracking.loading import ModelLoadError, resolve_model

    ref = model if model is not None else os.environ.get("FISHEYE_MODEL") or DEFAULT_BUNDLE
    try:
        resolved = resolve_model(ref, pinned)
    except ModelLoadError as exc:
        raise fail(err, exc.detail) from None
    if resolved.registered is not None:
        version = resolved.registered.version
        err.print(
            Text(
                f"{ref}: {version.name} version {version.version}, "
                f"bundle {resolved.registered.sha256[:12]}"
            ),
            soft_wrap=True,
        )
    return resolved


def load_model_or_exit(err: Console, model: Path | str | None, **options: Any) -> LoadedModel:
    """The bundle's Predictor and Monitor (`fisheye.monitoring.loading.load_model` options).

    `model` is a bundle folder or a registry URI (`resolve_model_or_exit`). A missing,
    tampered or malformed bundle exits with one clear line, no traceback.
    """
    from fisheye.tracking.loading import ModelLoadError, open_model

    resolved = resolve_model_or_exit(err, model, options.pop("expected_sha256", None))
    try:
        return open_model(resolved, **options)
    except ModelLoadError as exc:
        raise fail(err, exc.detail) from None
