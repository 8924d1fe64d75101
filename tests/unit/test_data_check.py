"""Embedding grouping (`data import --grouping embedding`) and `fisheye data check`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fisheye.cli import app
from fisheye.data.grouping import group_by_embedding
from fisheye.data.manifest import ManifestRow, read_manifest


def _row(i: int, label: str) -> ManifestRow:
    return ManifestRow(Path(f"/p/{i}.jpg"), label, "", f"h{i}", 1, 1)


def test_embedding_grouping_joins_close_photos_within_a_class_only():
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    emb = np.stack([a, a + 0.01, b, a])
    rows = [_row(0, "x"), _row(1, "x"), _row(2, "x"), _row(3, "y")]
    groups = [r.group for r in group_by_embedding(rows, emb)]
    assert groups[0] == groups[1] != groups[2]
    assert groups[3] not in groups[:3]  # the same picture in another class is another group
    with pytest.raises(ValueError, match="embeddings for"):
        group_by_embedding(rows, emb[:2])


def test_import_with_embedding_grouping_then_check(tmp_path, synthetic_dataset):
    src = Path(shutil.copytree(synthetic_dataset, tmp_path / "photos"))
    # A mislabelled photo: one of class A's photos filed under class B.
    a, b = sorted(p for p in src.iterdir() if p.is_dir())[:2]
    moved = b / f"mislabelled{next(a.glob('*_v0.*')).suffix}"
    shutil.move(next(a.glob("*_v0.*")), moved)
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "data", "import", str(src), "--out", str(tmp_path / "ds"),
            "--grouping", "embedding", "--test-fraction", "0.2",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = read_manifest(tmp_path / "ds" / "manifest.csv")
    assert all(r.group and "-e" in r.group for r in rows)
    assert {r.split for r in rows} == {"train", "val", "test"}

    report = tmp_path / "issues.csv"
    result = runner.invoke(
        app,
        [
            "data", "check", str(tmp_path / "ds" / "manifest.csv"), "--folds", "3",
            "--out", str(report), "--cache", str(tmp_path / "cache"), "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_photos"] == len(rows)
    assert 0.0 <= summary["out_of_fold_accuracy"] <= 1.0
    with report.open() as fh:
        flagged = list(csv.DictReader(fh))
    assert len(flagged) == summary["n_label_issues"] + summary["n_outliers"]
    assert all(f["issue"] in ("label", "outlier") for f in flagged)
