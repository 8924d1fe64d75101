"""The `fisheye` Typer app: each command is a thin call into the packages below it.

Commands import what they need when they run, and a command's module is imported only when
that command runs (or help lists it): `fisheye --help` starts fast, and a command never
imports the others. (`fisheye serve` in its plain form does not even import this app:
`fisheye.cli`.)
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import typer
from typer.core import TyperGroup

from fisheye.cli.option_specs import VERBOSE
from fisheye.cli.terminal import configure_logging

# name -> (module, attribute, command settings); the attribute is a command function, or a
# Typer app of subcommands (settings None). In the order `fisheye --help` lists them.
COMMANDS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "train": (
        "fisheye.cli.train",
        "train",
        {
            "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
            "add_help_option": False,
        },
    ),
    "predict": ("fisheye.cli.predict", "predict", {}),
    "probe": ("fisheye.cli.probe", "probe", {}),
    "evaluate": ("fisheye.cli.evaluate", "evaluate", {}),
    "serve": ("fisheye.cli.serve", "serve", {}),
    "export": ("fisheye.cli.export", "export", {}),
    "bench": ("fisheye.cli.bench", "bench", {}),
    "profile": ("fisheye.cli.profile", "profile", {}),
    "data": ("fisheye.cli.data", "data_app", None),
    "drift": ("fisheye.cli.drift", "drift_app", None),
    "monitor": ("fisheye.cli.monitor", "monitor_app", None),
    "registry": ("fisheye.cli.registry", "registry_app", None),
    "admin": ("fisheye.cli.admin", "admin_app", None),
}


def load_command(name: str) -> Any:
    """Import one command's module and build its click command, as `app.command()` and
    `app.add_typer()` would (through a one-command Typer and Typer's public converter)."""
    module, attribute, settings = COMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    holder = typer.Typer(add_completion=False)
    holder.callback()(lambda: None)  # a group, so the command is built as a subcommand
    if settings is None:
        holder.add_typer(target, name=name)
    else:
        holder.command(name, **settings)(target)
    return typer.main.get_command(holder).commands[name]  # type: ignore[attr-defined]


class _Commands(MutableMapping[str, Any]):
    """Every command name; a command is built (its module imported) when it is looked up."""

    def __init__(self, built: Mapping[str, Any]) -> None:
        self._built = dict(built)

    def __getitem__(self, name: str) -> Any:
        if name not in self._built and name in COMMANDS:
            self._built[name] = load_command(name)
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __iter__(self) -> Iterator[str]:
        yield from COMMANDS
        yield from (name for name in self._built if name not in COMMANDS)

    def __len__(self) -> int:
        return len(set(COMMANDS) | set(self._built))


class LazyCommands(TyperGroup):
    """The `fisheye` group: names (help, "did you mean") need no import; running one command
    imports that command's module only."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = _Commands(self.commands)


app = typer.Typer(
    name="fisheye",
    help="FishEye: recognise fish and seafood species from photos, and run the model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=LazyCommands,
)


@app.callback()
def _main(verbose: bool = typer.Option(False, *VERBOSE.flags, help=VERBOSE.help)):
    configure_logging(verbose)


__all__ = ["app"]
