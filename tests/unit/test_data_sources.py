"""Layouts, scanning, import, download and the synthetic set."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from fisheye.data.download import KAGGLE_HANDLE, DownloadError, download_dataset
from fisheye.data.layouts import detect_layout
from fisheye.data.manifest import groups_across_splits, read_manifest
from fisheye.data.pipelines import import_dataset, load_dataset_rows, scan_source
from fisheye.data.synthetic import write_synthetic


def _photos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*_s*") if p.is_file())


def _kaggle_tree(synthetic: Path, base: Path) -> Path:
    """Fish_Dataset/Fish_Dataset/<Class>/<Class>/*.png with '<Class> GT' masks, like Kaggle."""
    inner = base / "Fish_Dataset" / "Fish_Dataset"
    for cls in sorted(p for p in synthetic.iterdir() if p.is_dir()):
        shutil.copytree(cls, inner / cls.name / cls.name)
        gt = inner / cls.name / f"{cls.name} GT"
        gt.mkdir()
        for p in sorted(cls.iterdir())[:2]:
            Image.new("L", (64, 64), 255).save(gt / f"{p.stem}.png")
    (inner / "README.txt").write_text("readme")
    na = base / "NA_Fish_Dataset" / "Other"
    na.mkdir(parents=True)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(na / "x.jpg")
    return base


def _presplit_tree(synthetic: Path, base: Path) -> Path:
    for cls in sorted(p for p in synthetic.iterdir() if p.is_dir()):
        for p in sorted(cls.iterdir()):
            split = "val" if "_s000_" in p.name else "train"
            (base / split / cls.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, base / split / cls.name / p.name)
    return base


def test_detect_layouts(synthetic_dataset: Path, tmp_path: Path) -> None:
    assert detect_layout(synthetic_dataset) == "class_folders"
    assert detect_layout(_presplit_tree(synthetic_dataset, tmp_path / "pre")) == "presplit"
    kaggle = _kaggle_tree(synthetic_dataset, tmp_path / "kaggle")
    assert detect_layout(kaggle) == "kaggle"
    assert detect_layout(kaggle / "Fish_Dataset") == "kaggle"
    assert detect_layout(kaggle / "Fish_Dataset" / "Fish_Dataset") == "kaggle"


def test_detect_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a folder"):
        detect_layout(tmp_path / "missing")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="cannot recognise the layout"):
        detect_layout(tmp_path / "empty")


def test_kaggle_scan_ignores_masks_and_na_set(synthetic_dataset: Path, tmp_path: Path) -> None:
    kaggle = _kaggle_tree(synthetic_dataset, tmp_path / "kaggle")
    result = scan_source(kaggle)
    assert result.layout == "kaggle"
    assert len(result.rows) == len(_photos(synthetic_dataset))
    assert not any("GT" in str(r.path) or "NA_Fish" in str(r.path) for r in result.rows)
    assert {r.label for r in result.rows} == {
        p.name for p in synthetic_dataset.iterdir() if p.is_dir()
    }


def test_presplit_scan_keeps_splits(synthetic_dataset: Path, tmp_path: Path) -> None:
    result = scan_source(_presplit_tree(synthetic_dataset, tmp_path / "pre"))
    assert {r.split for r in result.rows} == {"train", "val"}
    assert all((r.split == "val") == ("_s000_" in r.path.name) for r in result.rows)


def test_presplit_tree_resplit_pools_and_groups(synthetic_dataset: Path, tmp_path: Path) -> None:
    tree = _presplit_tree(synthetic_dataset, tmp_path / "pre")
    kept = load_dataset_rows(tree, 0.25, 0.25, seed=0)
    assert {r.split for r in kept} == {"train", "val"} and not any(r.group for r in kept)
    rows = load_dataset_rows(tree, 0.25, 0.25, seed=0, resplit=True)
    assert len(rows) == len(kept)
    assert {r.split for r in rows} == {"train", "val", "test"}
    assert groups_across_splits(rows) == 0


@pytest.fixture
def messy_tree(synthetic_dataset: Path, tmp_path: Path) -> Path:
    root = tmp_path / "messy"
    shutil.copytree(synthetic_dataset, root)
    cls = root / "synthetic-round"
    (cls / "notes.jpg").write_text("this is not a photo")
    (cls / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, format="JPEG")
    (cls / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    first = sorted(cls.glob("*_s000_v0.png"))[0]
    shutil.copy(first, cls / "copy-of-first.png")
    Image.new("RGB", (20, 48), (9, 9, 9)).save(cls / "tiny.png")
    (cls / "labels.txt").write_text("ignored: not a photo suffix")
    return root


def test_scan_reports_unreadable_duplicates_and_tiny(messy_tree: Path) -> None:
    result = scan_source(messy_tree)
    bad = {p.name: reason for p, reason in result.unreadable}
    assert set(bad) == {"notes.jpg", "empty.png", "truncated.jpg"}
    assert "empty" in bad["empty.png"]
    assert all(reason for reason in bad.values())
    names = {r.path.name for r in result.rows}
    assert not names & set(bad)
    assert "labels.txt" not in names
    assert result.n_duplicates == 1
    assert {p.name for p in result.duplicates[0]} == {
        "copy-of-first.png",
        "synthetic-round_s000_v0.png",
    }
    assert [p.name for p in result.tiny] == ["tiny.png"]
    row = next(r for r in result.rows if r.path.name == "tiny.png")
    assert (row.width, row.height) == (20, 48)


def test_import_without_copy_writes_manifest_only(messy_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = import_dataset(messy_tree, out)
    assert report.manifest_path == out / "manifest.csv"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv"]
    rows = read_manifest(report.manifest_path)
    assert len(rows) == len(report.rows) == 36 + 2
    assert all(r.path.is_file() and r.group and r.split in ("train", "val") for r in rows)
    assert len(report.unreadable) == 3 and report.n_duplicates == 1 and len(report.tiny) == 1
    assert report.n_groups == len({r.group for r in rows})


def test_import_with_copy(synthetic_dataset: Path, tmp_path: Path) -> None:
    pre = _presplit_tree(synthetic_dataset, tmp_path / "pre")
    out = tmp_path / "out"
    report = import_dataset(pre, out, copy=True)
    assert report.layout == "presplit"
    rows = read_manifest(out / "manifest.csv")
    assert all(out / "images" in r.path.parents for r in rows)
    assert all(r.path.is_file() for r in rows)
    assert len(list((out / "images").rglob("*.*"))) == len(rows) == 36
    assert "images/" in (out / "manifest.csv").read_text()  # stored relative
    # pre-split trees keep their split
    assert all((r.split == "val") == ("_s000_" in r.path.name) for r in rows)


def test_import_refuses_output_inside_source(synthetic_dataset: Path) -> None:
    with pytest.raises(ValueError, match="must not be inside"):
        import_dataset(synthetic_dataset, synthetic_dataset / "out")


def test_download_failure_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import kagglehub

    def offline(*args: object, **kwargs: object) -> str:
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(DownloadError) as info:
        download_dataset(tmp_path)
    msg = str(info.value)
    assert "KAGGLE_USERNAME" in msg and "kaggle.json" in msg and "fisheye data import" in msg
    assert KAGGLE_HANDLE in msg


def test_synthetic_is_labelled_deterministic_and_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    a = write_synthetic(tmp_path / "a", per_class=12, classes=3, seed=7)
    assert time.perf_counter() - start < 2.0
    b = write_synthetic(tmp_path / "b", per_class=12, classes=3, seed=7)
    c = write_synthetic(tmp_path / "c", per_class=12, classes=3, seed=8)
    classes = sorted(p.name for p in a.iterdir() if p.is_dir())
    assert classes == ["synthetic-long", "synthetic-round", "synthetic-striped"]
    assert "SYNTHETIC" in (a / "README.txt").read_text()
    files_a, files_b = _photos(a), _photos(b)
    assert len(files_a) == 36
    assert {p.suffix for p in files_a} == {".png", ".jpg"}
    assert [p.read_bytes() for p in files_a] == [p.read_bytes() for p in files_b]
    assert [p.read_bytes() for p in files_a] != [p.read_bytes() for p in _photos(c)]
    with Image.open(files_a[0]) as img:
        assert img.size == (64, 64)


def test_synthetic_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_synthetic(tmp_path, classes=99)
    with pytest.raises(ValueError):
        write_synthetic(tmp_path, per_class=0)
