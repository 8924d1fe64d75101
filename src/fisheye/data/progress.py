"""Progress reporting for long-running data work, without tying it to a terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class Advance(Protocol):
    """Moves a progress task forward by `n` steps."""

    def __call__(self, n: int = 1) -> None:
        """Advance the task by `n` steps."""


class Progress(Protocol):
    """Something that shows how far long-running tasks have got."""

    def task(self, description: str, total: int) -> AbstractContextManager[Advance]:
        """A context for one task of `total` steps; yields its `advance(n=1)` function."""
        ...


def _ignore(n: int = 1) -> None:
    """Advance nothing."""


class _NoProgress:
    """A Progress that shows nothing."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        """A task that shows nothing; yields an `advance` that does nothing."""
        yield _ignore


NO_PROGRESS: Progress = _NoProgress()
