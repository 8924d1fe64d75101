"""The CLI's logging and status lines on stderr: Rich for a person at a terminal, one plain
line per message for a file or a log collector (a container, a supervisor).

Rich is imported only for a terminal, so `fisheye serve` under a supervisor starts without
it; Rich would also wrap a long message over several lines when stderr is not a terminal.
"""

from __future__ import annotations

import logging
import sys

# The fields of Rich's log lines, on one line: "[12/08/26 03:35:29] INFO     message".
PLAIN_FORMAT = "[%(asctime)s] %(levelname)-8s %(message)s"
PLAIN_DATE_FORMAT = "%x %X"


def stderr_is_terminal() -> bool:
    """Whether a person reads stderr (a terminal), not a file, pipe or log collector."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


def configure_logging(verbose: bool) -> None:
    """Log INFO (DEBUG when `verbose`) and above to stderr, for every command."""
    handler: logging.Handler
    if stderr_is_terminal():
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT, PLAIN_DATE_FORMAT))
    # Logs go to stderr so stdout stays parseable (`--format json`, `evaluate --json`).
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def show(text: str) -> None:
    """One status line on stderr (Rich's highlighting on a terminal; never its markup)."""
    if stderr_is_terminal():
        from rich.console import Console

        Console(stderr=True).print(text, soft_wrap=True, markup=False)
    else:
        print(text, file=sys.stderr, flush=True)
