"""`fisheye data ...` commands through Typer's test runner (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fisheye.cli.data import data_app
from fisheye.data.manifest import read_manifest

runner = CliRunner()


def test_synth_then_import(tmp_path: Path) -> None:
    synth = runner.invoke(
        data_app, ["synth", "--out", str(tmp_path / "syn"), "--per-class", "6", "--classes", "2"]
    )
    assert synth.exit_code == 0, synth.output
    assert "SYNTHETIC" in synth.output
    assert "synthetic-round" in synth.output
    result = runner.invoke(
        data_app,
        ["import", str(tmp_path / "syn"), "--out", str(tmp_path / "out"), "--val-fraction", "0.3"],
    )
    assert result.exit_code == 0, result.output
    assert "synthetic-round" in result.output and "train" in result.output
    assert "Near-duplicate groups: 4" in result.output
    assert "Exact duplicates (identical bytes): 0" in result.output
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    assert len(rows) == 12


def test_import_lists_unreadable_files(synthetic_dataset: Path, tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "src"
    shutil.copytree(synthetic_dataset, src)
    (src / "synthetic-long" / "broken.jpg").write_text("not a photo")
    result = runner.invoke(data_app, ["import", str(src), "--out", str(tmp_path / "o"), "--copy"])
    assert result.exit_code == 0, result.output
    assert "Unreadable files skipped: 1" in result.output
    assert "broken.jpg" in result.output
    assert (tmp_path / "o" / "images" / "synthetic-long").is_dir()


def test_import_bad_source_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(data_app, ["import", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a folder" in " ".join(result.output.split())


def test_download_without_network_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import kagglehub

    def offline(*args: object, **kwargs: object) -> str:
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    result = runner.invoke(data_app, ["download", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "Download failed" in result.output
    assert "KAGGLE_KEY" in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_import_resplit_replaces_a_leaky_presplit(tmp_path, synthetic_dataset):
    """--resplit gives a pre-split tree a grouped split: no group on two sides."""
    import shutil

    from typer.testing import CliRunner

    from fisheye.cli import app
    from fisheye.data.manifest import groups_across_splits, read_manifest

    tree = tmp_path / "presplit"
    for path in sorted(synthetic_dataset.rglob("*.png")) + sorted(synthetic_dataset.rglob("*.jpg")):
        # Alternate copies between train and val: every source group leaks across the split.
        split = "train" if int(path.stem.rsplit("_v", 1)[1]) % 2 == 0 else "val"
        dest = tree / split / path.parent.name / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    runner = CliRunner()
    kept = runner.invoke(app, ["data", "import", str(tree), "--out", str(tmp_path / "kept")])
    assert kept.exit_code == 0, kept.output
    assert groups_across_splits(read_manifest(tmp_path / "kept" / "manifest.csv")) > 0
    out = tmp_path / "resplit"
    result = runner.invoke(app, ["data", "import", str(tree), "--out", str(out), "--resplit"])
    assert result.exit_code == 0, result.output
    rows = read_manifest(out / "manifest.csv")
    assert groups_across_splits(rows) == 0
    assert {r.split for r in rows} == {"train", "val"}
