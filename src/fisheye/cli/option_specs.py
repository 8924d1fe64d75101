"""Options declared once, without Typer: the `fisheye` group's `--verbose` and `serve`'s.

The Typer app builds these options from the declarations (`fisheye.cli.commands`,
`fisheye.cli.serve`, `ModelRefOption`), and `fisheye.cli.plain_serve` recognises
`fisheye serve` in its plain form by them, without importing Typer.
"""

from __future__ import annotations

from dataclasses import dataclass

from fisheye.inference.backends import BackendChoice


@dataclass(frozen=True)
class OptionSpec:
    """One option: the setting it fills, its flags, its help, and what values it takes."""

    name: str  # the command's parameter (for `serve`, the ServeSettings field it sets)
    flags: tuple[str, ...]
    help: str
    minimum: int | None = None  # with maximum: an integer in [minimum, maximum]
    maximum: int | None = None
    choices: tuple[str, ...] | None = None

    def plain_value(self, text: str) -> str | int | None:
        """`text` as the command receives it, or None unless Typer would take it as it is
        (Typer parses it then, and says what is wrong)."""
        if not text or text.startswith("-"):
            return None
        if self.minimum is not None and self.maximum is not None:
            if not (text.isascii() and text.isdigit()):
                return None
            number = int(text)
            return number if self.minimum <= number <= self.maximum else None
        if self.choices is not None and text not in self.choices:
            return None
        return text


VERBOSE = OptionSpec("verbose", ("--verbose", "-v"), "Log debug messages.")

MODEL = OptionSpec(
    "model",
    ("--model", "-m"),
    "Model bundle folder, or a registry URI models:/NAME@ALIAS or models:/NAME/VERSION "
    "(default: $FISHEYE_MODEL, else models/default).",
)
HOST = OptionSpec("host", ("--host",), "Interface (default: $FISHEYE_HOST, else 127.0.0.1).")
PORT = OptionSpec(
    "port", ("--port", "-p"), "Port (default: $FISHEYE_PORT, else 8000).", minimum=0, maximum=65535
)
BACKEND = OptionSpec(
    "backend",
    ("--backend", "-b"),
    "Model backend (default: $FISHEYE_BACKEND, else auto).",
    choices=tuple(choice.value for choice in BackendChoice),
)
SERVE_OPTIONS = (MODEL, HOST, PORT, BACKEND)
