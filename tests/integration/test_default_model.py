"""The committed default model on the real validation photos (skips when either is absent)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fisheye.bundle import BUNDLE_JSON
from fisheye.cli import app
from tests.helpers.paths import DEFAULT_MODEL, VAL

pytestmark = pytest.mark.integration

ACCURACY_FLOOR = 0.97  # well below what the default model reaches; real figures live in docs

if not (DEFAULT_MODEL / BUNDLE_JSON).is_file():
    pytest.skip(
        f"no default model bundle at {DEFAULT_MODEL} (models/default/bundle.json)",
        allow_module_level=True,
    )
if not VAL.is_dir():
    pytest.skip(f"real photos not available at {VAL} (../shared/data)", allow_module_level=True)

runner = CliRunner()
ENV = {"COLUMNS": "200", "NO_COLOR": "1", "FISHEYE_MODEL": str(DEFAULT_MODEL)}


def test_evaluate_val_accuracy(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["evaluate", "--data", str(VAL), "--json", "--out", str(tmp_path / "eval")], env=ENV
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n_images"] >= 800
    assert metrics["accuracy"] >= ACCURACY_FLOOR, metrics["per_class"]


def test_predict_real_photos_and_bad_files(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    expected: dict[str, str] = {}
    for cls in ("Trout", "Shrimp", "Red Mullet", "Sea Bass"):
        source = sorted((VAL / cls).glob("*.jpg"))[0]
        link = folder / f"{cls.replace(' ', '_')}_{source.name}"
        try:
            os.symlink(source, link)
        except OSError:
            link.write_bytes(source.read_bytes())  # tmp only, never into the repo
        expected[link.name] = cls
    (folder / "notes.jpg").write_text("not a photo")
    (folder / "empty.png").write_bytes(b"")

    result = runner.invoke(app, ["predict", str(folder), "--format", "json"], env=ENV)
    assert result.exit_code == 1, result.output
    records = {Path(r["path"]).name: r for r in json.loads(result.stdout)}
    assert len(records) == 6
    for name, cls in expected.items():
        assert records[name].get("label") == cls, records[name]
    assert "error" in records["notes.jpg"] and "error" in records["empty.png"]
