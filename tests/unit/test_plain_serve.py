"""`fisheye serve` in its plain form: recognised without Typer, parsed as Typer parses it,
and anything else (help, mistakes, refused bundles) answered by the Typer app as before."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fisheye.cli import app, commands, serve_start, typer_app
from fisheye.cli.option_specs import SERVE_OPTIONS, VERBOSE
from fisheye.cli.plain_serve import plain_serve_request
from fisheye.cli.terminal import PLAIN_FORMAT, configure_logging

ROOT = Path(__file__).resolve().parents[2]

# Plain forms, and what `serve` receives from each.
PLAIN = [
    (["serve"], (False, {})),
    (["-v", "serve", "--port", "8080"], (True, {"port": 8080})),
    (["--verbose", "serve", "-p", "0", "-m", "models/x"], (True, {"port": 0, "model": "models/x"})),
    (["serve", "--port=65535", "--host", "0.0.0.0"], (False, {"port": 65535, "host": "0.0.0.0"})),
    (
        ["serve", "-b", "onnx-int8", "--model=/a=b"],
        (False, {"backend": "onnx-int8", "model": "/a=b"}),
    ),
    (["serve", "--backend", "auto", "--port", "0080"], (False, {"backend": "auto", "port": 80})),
]
# Not plain: Typer parses these (some are fine for Typer, most are mistakes it reports).
NOT_PLAIN = [
    [],
    ["--help"],
    ["serve", "--help"],
    ["predict", "x.jpg"],
    ["serve", "-v"],
    ["serve", "serve"],
    ["-v", "-v", "serve"],
    ["serve", "--port"],
    ["serve", "--port", "65536"],
    ["serve", "--port", "-1"],
    ["serve", "--port", "80x"],
    ["serve", "--port", "+80"],
    ["serve", "--port", "٨٠"],  # Arabic-Indic digits: str.isdigit, not an ASCII number
    ["serve", "-p80"],
    ["serve", "-p=80"],
    ["serve", "--port", "80", "--port", "81"],
    ["serve", "--backend", "ONNX"],
    ["serve", "--backend", "tensorrt"],
    ["serve", "--host", ""],
    ["serve", "--host", "-x"],
    ["serve", "--hos", "x"],
    ["serve", "--", "--port", "80"],
    ["serve", "extra"],
]


@pytest.mark.parametrize(("argv", "expected"), PLAIN)
def test_the_plain_form_is_recognised(argv: list[str], expected: tuple) -> None:
    assert plain_serve_request(argv) == expected


@pytest.mark.parametrize("argv", NOT_PLAIN)
def test_anything_else_is_left_to_typer(argv: list[str]) -> None:
    assert plain_serve_request(argv) is None


class _ParsedError(Exception):
    """Stops `serve` once Typer has parsed its options."""


def _typer_parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[bool, dict] | None:
    """What the Typer app passes on for `argv` (verbose, serve's options), or None when it
    refuses it."""
    seen: dict = {}

    def record(options: dict) -> None:
        seen["options"] = {k: getattr(v, "value", v) for k, v in options.items() if v is not None}
        raise _ParsedError

    monkeypatch.setattr(serve_start, "checked_settings", record)
    monkeypatch.setattr(commands, "configure_logging", lambda verbose: seen.update(verbose=verbose))
    CliRunner().invoke(typer_app(), argv)
    return (seen["verbose"], seen["options"]) if "options" in seen else None


@pytest.mark.parametrize(
    "argv", [argv for argv, _ in PLAIN] + [a for a in NOT_PLAIN if a[:1] == ["serve"]]
)
def test_what_is_recognised_is_what_typer_parses(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = plain_serve_request(argv)
    typer_parse = _typer_parse(argv, monkeypatch)
    if plain is not None:
        assert typer_parse == plain
    if typer_parse is None:  # a mistake: Typer must see it, to report it
        assert plain is None


def test_the_typer_command_is_built_from_the_same_declarations() -> None:
    group = typer.main.get_command(typer_app())
    serve = group.commands["serve"]
    params = {p.name: p for p in serve.params if p.name != "help"}
    assert set(params) == {spec.name for spec in SERVE_OPTIONS}
    for spec in SERVE_OPTIONS:
        param = params[spec.name]
        assert set(param.opts + param.secondary_opts) == set(spec.flags)
        assert param.help == spec.help
    verbose = next(p for p in group.params if p.name == VERBOSE.name)
    assert set(verbose.opts) == set(VERBOSE.flags)


def _plain_and_typer(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[tuple]:
    """(exit status, stderr) of `argv` through `fisheye.cli:app` and through the Typer app."""
    with pytest.raises(SystemExit) as exc:
        app(argv, prog_name="fisheye")
    plain = (exc.value.code, " ".join(capsys.readouterr().err.split()))
    result = CliRunner().invoke(typer_app(), argv, prog_name="fisheye")
    return [plain, (result.exit_code, " ".join(result.stderr.split()))]


def test_a_refused_bundle_is_reported_as_the_typer_command_reports_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--model", str(tmp_path / "no-such-bundle"), "--port", "0"]
    plain, typer_said = _plain_and_typer(argv, capsys)
    assert plain == typer_said
    assert plain[0] == 2 and "error: cannot serve the model bundle" in plain[1], plain
    assert "FishEye serving" not in plain[1]


def test_invalid_settings_from_the_environment_are_reported_as_the_typer_command_does(
    tiny_bundle: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FISHEYE_MAX_QUEUE", "1")
    plain, typer_said = _plain_and_typer(["serve", "--model", str(tiny_bundle)], capsys)
    assert plain == typer_said
    assert plain[0] == 2, plain
    assert "invalid server settings" in plain[1] and "max_queue (1) must be at least" in plain[1]


def test_an_option_typer_refuses_gets_its_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        app(["serve", "--port", "70000"], prog_name="fisheye")
    assert exc.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Invalid value for '--port'" in err and "65535" in err, err


def test_logs_are_one_plain_line_each_when_stderr_is_not_a_terminal() -> None:
    code = (
        "import logging; from fisheye.cli.terminal import configure_logging, show; "
        "configure_logging(False); logging.getLogger('x').info('a message ' * 20); "
        "show('FishEye serving [models/x] at http://h:1'); "
        "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=True,
    )
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    assert lines[0].endswith("INFO     " + "a message " * 20), lines[0]
    assert lines[1] == "FishEye serving [models/x] at http://h:1"
    assert done.stdout.strip() == "[]"  # Rich was not even imported


def test_configure_logging_sets_the_level(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    configure_logging(True)
    assert root.level == logging.DEBUG
    assert root.handlers[0].formatter._fmt == PLAIN_FORMAT
