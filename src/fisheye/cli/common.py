"""What every command shares: consoles, errors, progress bars, options, loading a model."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import progress as rich_progress
from rich.console import Console
from rich.text import Text

from fisheye.bundle import BundleError
from fisheye.data.progress import Advance
from fisheye.inference.registry import AUTO, NAMES, BackendChoice, BackendUnavailableError
from fisheye.tracking.registry import PinMismatchError, is_registry_uri, resolve_reference
from fisheye.tracking.store import TrackingError, TrackingUnavailableError, default_tracking_uri

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


class _RateColumn(rich_progress.ProgressColumn):
    """Steps per second, e.g. "41.2 photos/s"."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: rich_progress.Task) -> Text:
        """The task's current rate."""
        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else f"{speed:.1f} {self.unit}/s", style="cyan")


class RichProgress:
    """Progress bars on stderr (transient; nothing is shown when it is not a terminal)."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console

    @contextmanager
    def task(self, description: str, total: int, unit: str | None = None) -> Iterator[Advance]:
        """A progress bar for one task; yields its `advance(n=1)` function.

        With a `unit` (e.g. "photos") the bar also shows the rate, e.g. "41.2 photos/s".
        """
        console = self._console or Console(stderr=True)
        columns = (
            rich_progress.TextColumn("{task.description}"),
            rich_progress.BarColumn(),
            rich_progress.MofNCompleteColumn(),
            *([_RateColumn(unit)] if unit else []),
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
ModelRefOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model bundle folder, or a registry URI models:/NAME@ALIAS or models:/NAME/VERSION "
        "(default: $FISHEYE_MODEL, else models/default).",
    ),
]
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
) -> tuple[Path | None, str | None]:
    """A `--model` value (else $FISHEYE_MODEL) as (bundle folder, sha256 to pin it to).

    A registry URI (`models:/NAME@ALIAS`) is resolved through MLflow to a verified local
    copy of the registered bundle, pinned to its registered hash; a folder is returned as
    it is, with `pinned`. Any failure exits with one clear line.
    """
    ref = model if model is not None else os.environ.get("FISHEYE_MODEL")
    if ref is None or not is_registry_uri(ref):
        return (Path(model) if model is not None else None), pinned
    try:
        _, _, resolved = resolve_reference(ref, pinned)
    except TrackingUnavailableError as exc:
        raise fail(err, str(exc)) from None
    except PinMismatchError as exc:
        raise fail(err, str(exc)) from None
    except (TrackingError, BundleError) as exc:
        raise fail(err, f"cannot use {ref}: {exc}") from None
    except Exception as exc:  # MLflow's own errors: an unreachable server, a bad URI
        raise fail(
            err,
            f"cannot resolve {ref} in the MLflow registry at {default_tracking_uri()} "
            f"({type(exc).__name__}: {exc})",
        ) from None
    assert resolved is not None
    version = resolved.version
    err.print(
        Text(f"{ref}: {version.name} version {version.version}, bundle {resolved.sha256[:12]}"),
        soft_wrap=True,
    )
    return resolved.path, resolved.sha256


def load_predictor_or_exit(err: Console, model: Path | str | None, **kwargs: Any):
    """The bundle's Predictor and Monitor (`fisheye.monitoring.reference.load_predictor`).

    `model` is a bundle folder or a registry URI (`resolve_model_or_exit`). A missing,
    tampered or malformed bundle exits with one clear line, no traceback.
    """
    from fisheye.monitoring.reference import load_predictor as load

    path, pinned = resolve_model_or_exit(err, model, kwargs.pop("expected_sha256", None))
    try:
        return load(path, expected_sha256=pinned, **kwargs)
    except BundleError as exc:
        raise fail(err, f"cannot load the model bundle: {exc}") from None
    except BackendUnavailableError as exc:
        raise fail(err, str(exc)) from None
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise fail(
            err, f"the model bundle {model or 'models/default'} is invalid ({exc})"
        ) from None
