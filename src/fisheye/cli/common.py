"""What every command shares: consoles, errors, progress bars, options, loading a model."""

from __future__ import annotations

import importlib.util
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


class RichProgress:
    """Progress bars on stderr (transient; nothing is shown when it is not a terminal)."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        """A progress bar for one task; yields its `advance(n=1)` function."""
        console = self._console or Console(stderr=True)
        columns = (
            rich_progress.TextColumn("{task.description}"),
            rich_progress.BarColumn(),
            rich_progress.MofNCompleteColumn(),
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


def load_predictor_or_exit(err: Console, model: Path | None, **kwargs: Any):
    """The bundle's Predictor and Monitor (`fisheye.monitoring.reference.load_predictor`).

    A missing, tampered or malformed bundle exits with one clear line, no traceback.
    """
    from fisheye.monitoring.reference import load_predictor as load

    try:
        return load(model, **kwargs)
    except BundleError as exc:
        raise fail(err, f"cannot load the model bundle: {exc}") from None
    except BackendUnavailableError as exc:
        raise fail(err, str(exc)) from None
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise fail(
            err, f"the model bundle {model or 'models/default'} is invalid ({exc})"
        ) from None
