"""`fisheye predict`: files and folders, per-file errors, output formats, exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fisheye.cli import app
from fisheye.data.files import InputPathError, collect_image_paths
from tests.helpers.bombs import dds_named_jpg
from tests.helpers.paths import FISH_CLASSES as CLASSES
from tests.helpers.photos import write_bad_files, write_photo

runner = CliRunner()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


@pytest.fixture
def photos(tmp_path: Path) -> tuple[Path, list[Path], dict[str, Path]]:
    folder = tmp_path / "photos"
    good = [
        write_photo(folder / "a.jpg", 1),
        write_photo(folder / "b.png", 2, "PNG"),
        write_photo(folder / "nested" / "deeper" / "c.JPEG", 3),
    ]
    bad = write_bad_files(folder)
    (folder / ".hidden.jpg").write_text("hidden files are skipped")
    (folder / "README.txt").write_text("not named like a photo: skipped inside folders")
    return folder, good, bad


def _predict(*args: str):
    return runner.invoke(app, ["predict", *args], env=ENV)


def test_collect_paths(photos, tmp_path: Path) -> None:
    folder, good, bad = photos
    found = collect_image_paths([folder])
    assert set(found) == set(good) | set(bad.values())
    assert found == sorted(found, key=lambda p: p.relative_to(folder).parts)
    # Explicit files are attempted whatever their name; duplicates are dropped.
    notes = folder / "README.txt"
    assert collect_image_paths([notes, good[0], folder]) == [notes, *found]
    with pytest.raises(InputPathError, match="no such file"):
        collect_image_paths([tmp_path / "missing"])


def test_folder_with_bad_files(
    tiny_bundle: Path, photos, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, good, bad = photos
    monkeypatch.chdir(tmp_path)  # short relative paths keep each table row on one line
    result = _predict("photos", "--model", str(tiny_bundle))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    out = result.stdout
    for path in good:
        line = next(line for line in out.splitlines() if path.name in line)
        assert any(c in line for c in CLASSES), line
        assert "error" not in line
    for path in bad.values():
        lines = [line for line in out.splitlines() if path.name in line]
        assert len(lines) == 1 and "error:" in lines[0], out
    assert ".hidden" not in out and "README" not in out
    assert "3 of 6 files could not be read" in result.stderr


def test_json_output(tiny_bundle: Path, photos) -> None:
    folder, good, bad = photos
    result = _predict(str(folder), "--model", str(tiny_bundle), "--format", "json", "--top-k", "2")
    assert result.exit_code == 1
    records = json.loads(result.stdout)
    by_path = {Path(r["path"]).name: r for r in records}
    assert len(records) == 6
    for path in good:
        rec = by_path[path.name]
        assert set(rec) == {"path", "label", "status", "confidence", "top_k"}
        assert rec["label"] in CLASSES
        assert 0.0 <= rec["confidence"] <= 1.0
        assert [k["label"] for k in rec["top_k"]][0] == rec["label"]
        assert len(rec["top_k"]) == 2
    for path in bad.values():
        rec = by_path[path.name]
        assert set(rec) == {"path", "error"} and rec["error"]
    assert "Traceback" not in result.output


def test_csv_output(tiny_bundle: Path, photos) -> None:
    folder, good, bad = photos
    result = _predict(str(folder), "--model", str(tiny_bundle), "--format", "csv")
    assert result.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["path", "label", "confidence", "error"]
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(rows) == 6
    for path in good:
        assert by_name[path.name]["label"] in CLASSES
        assert by_name[path.name]["error"] == ""
        float(by_name[path.name]["confidence"])
    for path in bad.values():
        assert by_name[path.name]["label"] == "" and by_name[path.name]["error"]


def test_all_good_exits_zero(tiny_bundle: Path, photos) -> None:
    folder, good, _ = photos
    result = _predict(*map(str, good), "--model", str(tiny_bundle), "--format", "json")
    assert result.exit_code == 0, result.output
    assert [r["path"] for r in json.loads(result.stdout)] == [str(p) for p in good]


def test_explicit_text_file_is_attempted(tiny_bundle: Path, photos) -> None:
    folder, good, _ = photos
    result = _predict(str(folder / "README.txt"), str(good[0]), "--model", str(tiny_bundle))
    assert result.exit_code == 1
    assert "README.txt" in result.stdout and "not a recognised image" in result.stdout


def test_missing_path_is_usage_error(tiny_bundle: Path, tmp_path: Path) -> None:
    result = _predict(str(tmp_path / "nope.jpg"), "--model", str(tiny_bundle))
    assert result.exit_code == 2
    assert "no such file or folder" in result.stderr and "nope.jpg" in result.stderr
    assert "Traceback" not in result.output


def test_empty_folder_is_usage_error(tiny_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    result = _predict(str(tmp_path / "empty"), "--model", str(tiny_bundle))
    assert result.exit_code == 2
    assert "no photos found" in result.stderr


def test_tampered_bundle_is_usage_error(writable_tiny_bundle: Path, photos) -> None:
    folder, good, _ = photos
    bad_bundle = writable_tiny_bundle
    weights = bad_bundle / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = _predict(str(good[0]), "--model", str(bad_bundle))
    assert result.exit_code == 2
    assert "integrity check" in result.stderr
    assert "Traceback" not in result.output


def test_not_a_bundle_is_usage_error(photos, tmp_path: Path) -> None:
    _, good, _ = photos
    result = _predict(str(good[0]), "--model", str(tmp_path))
    assert result.exit_code == 2
    assert "not a FishEye model bundle" in result.stderr


def test_default_model_from_env(tiny_bundle: Path, photos) -> None:
    _, good, _ = photos
    result = runner.invoke(
        app, ["predict", str(good[0]), "-f", "json"], env={**ENV, "FISHEYE_MODEL": str(tiny_bundle)}
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["label"] in CLASSES


def test_bad_option_is_usage_error(tiny_bundle: Path, photos) -> None:
    _, good, _ = photos
    result = _predict(str(good[0]), "--model", str(tiny_bundle), "--format", "xml")
    assert result.exit_code == 2


def test_a_dds_file_named_jpg_is_one_error_row(photos, tiny_bundle: Path) -> None:
    folder, good, _ = photos
    (folder / "fish.jpg").write_bytes(dds_named_jpg())
    result = _predict(str(folder / "fish.jpg"), *map(str, good), "--model", str(tiny_bundle))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "fish.jpg" in result.stdout and "not a recognised image format" in result.stdout
    assert "1 of 4 files could not be read" in result.stderr


@pytest.mark.timeout(60)
def test_devices_and_fifos_are_reported_not_read(tmp_path: Path, tiny_bundle: Path) -> None:
    folder = tmp_path / "photos"
    good = write_photo(folder / "a.jpg", 1)
    (folder / "zero.jpg").symlink_to("/dev/zero")  # would be read until memory runs out
    fifo = tmp_path / "named.jpg"
    os.mkfifo(fifo)  # would block forever if opened for reading
    result = _predict(str(folder), str(fifo), "--model", str(tiny_bundle), "--format", "json")
    assert result.exit_code == 1 and "Traceback" not in result.output
    records = {Path(r["path"]).name: r for r in json.loads(result.stdout)}
    assert records[good.name]["label"] in CLASSES
    assert "character device" in records["zero.jpg"]["error"]
    assert "FIFO" in records["named.jpg"]["error"]
