"""Manifest round trip, dataset identity and loading rows from any source."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from fisheye.data.manifest import (
    SPLITS,
    ManifestError,
    ManifestRow,
    manifest_hash,
    read_manifest,
    write_manifest,
)
from fisheye.data.pipelines import import_dataset, load_dataset_rows, load_labelled_folder


def _rows(folder: Path) -> list[ManifestRow]:
    return [
        ManifestRow(
            folder / "Trout" / "a.jpg", "Trout", "train", "aa" * 32, 256, 256, "trout-0000"
        ),
        ManifestRow(folder / "Shrimp" / "b.jpg", "Shrimp", "val", "bb" * 32, 300, 200, ""),
        ManifestRow(Path("/elsewhere/c.png"), "Sea Bass", "", "cc" * 32, 10, 20, "g"),
    ]


def test_round_trip_with_relative_paths(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    path = tmp_path / "manifest.csv"
    write_manifest(rows, path)
    text = path.read_text().splitlines()
    assert text[0] == "path,class,split,sha256,width,height,group"
    assert text[1].startswith("Trout/a.jpg,Trout,train,")
    assert "/elsewhere/c.png" in text[3]
    assert read_manifest(path) == rows


def test_hash_ignores_where_files_live(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    moved = [replace(r, path=Path("/other/place") / r.path.name) for r in rows]
    assert manifest_hash(rows) == manifest_hash(moved) == manifest_hash(list(reversed(rows)))
    assert len(manifest_hash(rows)) == 64
    assert manifest_hash(rows) != manifest_hash([replace(rows[0], split="val"), *rows[1:]])
    assert manifest_hash(rows) != manifest_hash([replace(rows[0], label="Shrimp"), *rows[1:]])
    assert manifest_hash(rows) != manifest_hash(rows[:2])


def test_hash_stable_after_round_trip_elsewhere(tmp_path: Path) -> None:
    rows = _rows(tmp_path / "a")
    write_manifest(rows, tmp_path / "a" / "manifest.csv")
    shutil.move(tmp_path / "a", tmp_path / "b")
    assert manifest_hash(read_manifest(tmp_path / "b" / "manifest.csv")) == manifest_hash(rows)


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("path,class\nx.jpg,Trout\n")
    with pytest.raises(ManifestError, match="split, sha256, width, height"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
    path.write_text("path,class,split,sha256,width,height\nx.jpg,Trout,bogus,ab,1,1\n")
    with pytest.raises(ManifestError, match="line 2"):
        read_manifest(path)


def test_group_column_is_optional(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("path,class,split,sha256,width,height\nx.jpg,Trout,train,ab,3,4\n")
    (row,) = read_manifest(path)
    assert row == ManifestRow(tmp_path / "x.jpg", "Trout", "train", "ab", 3, 4, "")


def test_load_rows_from_class_folders_is_grouped_and_split(synthetic_dataset: Path) -> None:
    rows = load_dataset_rows(synthetic_dataset, val_fraction=0.25, seed=1)
    assert len(rows) == 36
    assert {r.split for r in rows} == {"train", "val"}
    for label in {r.label for r in rows}:
        assert any(r.split == "val" and r.label == label for r in rows)
    groups: dict[str, set[str]] = {}
    for r in rows:
        groups.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in groups.values())
    assert rows == load_dataset_rows(synthetic_dataset, val_fraction=0.25, seed=1)


def test_load_rows_from_manifest_file_and_folder(synthetic_dataset: Path, tmp_path: Path) -> None:
    report = import_dataset(synthetic_dataset, tmp_path / "out")
    from_file = load_dataset_rows(tmp_path / "out" / "manifest.csv")
    from_dir = load_dataset_rows(tmp_path / "out")
    assert from_file == from_dir
    assert manifest_hash(from_file) == manifest_hash(report.rows)


def test_load_rows_skips_missing_files(tmp_path: Path, synthetic_dataset: Path, caplog) -> None:
    src = tmp_path / "src"
    shutil.copytree(synthetic_dataset, src)
    import_dataset(src, tmp_path / "out")
    victim = sorted(src.rglob("*.png"))[0]
    victim.unlink()
    rows = load_dataset_rows(tmp_path / "out")
    assert len(rows) == 35
    assert victim.name in caplog.text


def test_unassigned_manifest_rows_get_a_split(tmp_path: Path, synthetic_dataset: Path) -> None:
    rows = load_labelled_folder(synthetic_dataset)
    write_manifest(rows, tmp_path / "manifest.csv")
    loaded = load_dataset_rows(tmp_path / "manifest.csv")
    assert all(r.split in SPLITS and r.group for r in loaded)


def test_load_labelled_folder(synthetic_dataset: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(synthetic_dataset, src)
    (src / "synthetic-long" / "broken.jpg").write_text("nope")
    rows = load_labelled_folder(src)
    assert len(rows) == 36
    assert all(r.split == "" and r.group == "" and r.sha256 for r in rows)
    assert {r.label for r in rows} == {"synthetic-long", "synthetic-round", "synthetic-striped"}
