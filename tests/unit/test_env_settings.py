"""FISHEYE_* variables into ServeSettings: names in any case, options before variables,
JSON lists, comma-separated keys, and pydantic's own errors for bad values."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field, ValidationError, field_validator

from fisheye.cli import app
from fisheye.serving.env_settings import EnvSettings, ReadAsText
from fisheye.serving.settings import ServeSettings


@pytest.fixture(autouse=True)
def _no_fisheye_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FISHEYE_"):
            monkeypatch.delenv(name)


def test_variables_in_any_case_fill_the_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("fisheye_port", "9001")
    monkeypatch.setenv("Fisheye_Spin_Wait", "false")
    monkeypatch.setenv("FISHEYE_MAX_UPLOAD_MB", "1.5")
    s = ServeSettings()
    assert (s.port, s.spin_wait, s.max_upload_mb) == (9001, False, 1.5)


def test_options_win_over_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FISHEYE_PORT", "9001")
    monkeypatch.setenv("FISHEYE_HOST", "0.0.0.0")
    s = ServeSettings(port=9002)
    assert (s.port, s.host) == (9002, "0.0.0.0")


def test_unknown_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FISHEYE_NO_SUCH_SETTING", "1")
    assert ServeSettings().port == 8000


def test_defaults_are_validated_too() -> None:
    s = ServeSettings()
    assert isinstance(s.model, Path) and isinstance(s.prediction_db, Path)


def test_a_list_variable_is_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FISHEYE_CORS_ORIGINS", '["https://a.example", "https://b.example"]')
    assert ServeSettings().cors_origins == ["https://a.example", "https://b.example"]


@pytest.mark.parametrize("text", ["https://a.example", "[https://a.example]", '{"a": 1}'])
def test_a_list_variable_that_is_not_a_json_list_gets_the_fields_error(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv("FISHEYE_CORS_ORIGINS", text)
    with pytest.raises(ValidationError) as exc:
        ServeSettings()
    assert exc.value.errors()[0]["loc"] == ("cors_origins",)


def test_api_keys_are_comma_separated_text_not_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FISHEYE_API_KEYS", " k1, k2,,[k3]")
    keys = [k.get_secret_value() for k in ServeSettings().api_keys]
    assert keys == ["k1", "k2", "[k3]"]


def test_a_bad_value_gets_pydantics_error_with_the_text_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FISHEYE_PORT", "70000")
    with pytest.raises(ValidationError) as exc:
        ServeSettings()
    text = str(exc.value)
    assert "1 validation error for ServeSettings" in text
    assert "port\n  Input should be less than or equal to 65535" in text
    assert "input_value='70000', input_type=str" in text


def test_the_limits_check_sees_variables_and_options_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FISHEYE_MAX_QUEUE", "5")
    with pytest.raises(ValidationError, match=r"max_queue \(5\) must be at least max_files"):
        ServeSettings(port=1234, max_files=10, host="0.0.0.0")


class _Example(EnvSettings):
    env_prefix = "EXAMPLE_"
    names: list[str] | None = None
    words: Annotated[list[str], ReadAsText] = Field(default_factory=list)
    table: dict[str, int] = Field(default_factory=dict)
    level: int = 1

    @field_validator("words", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return value.split() if isinstance(value, str) else value


def test_an_optional_list_and_a_dict_are_json_and_a_marked_list_is_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXAMPLE_NAMES", '["a"]')
    monkeypatch.setenv("EXAMPLE_WORDS", '["b"] c')
    monkeypatch.setenv("EXAMPLE_TABLE", '{"x": 2}')
    monkeypatch.setenv("EXAMPLE_LEVEL", "3")
    e = _Example()
    assert (e.names, e.words, e.table, e.level) == (["a"], ['["b"]', "c"], {"x": 2}, 3)


def test_fisheye_serve_reports_a_list_variable_that_is_not_json(
    monkeypatch: pytest.MonkeyPatch, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FISHEYE_CORS_ORIGINS", "https://quality.example.com")
    with pytest.raises(SystemExit) as exc:
        app(["serve", "--model", str(tiny_bundle)])
    assert exc.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "invalid server settings" in err and "cors_origins" in err, err
    assert "Traceback" not in err
