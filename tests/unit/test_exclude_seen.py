"""`--exclude-seen`: only photos whose near-duplicate group the model never saw are kept."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fisheye.bundle import add_file, load_bundle
from fisheye.cli import app
from fisheye.data.manifest import TRAINING_MANIFEST_NAME, write_training_manifest
from fisheye.data.pipelines import load_labelled_folder
from fisheye.data.seen import SEEN_DESCRIPTORS_NAME
from fisheye.evaluate import EvaluationError, unseen_photos
from fisheye.training.records import record_seen_descriptors
from tests.helpers.bundles import copy_bundle
from tests.helpers.photos import class_folders


def _source(path: Path) -> str:
    return path.name.rsplit("_v", 1)[0]  # <class>_s<source>


def _split_of(path: Path) -> str:
    # Sources 0 and 1 of each class trained, 2 selected the model, 3 was held out as test.
    return {"0": "train", "1": "train", "2": "val"}.get(_source(path)[-1], "test")


@pytest.fixture
def recorded_bundle(synthetic_bundle: Path, synthetic_dataset: Path, tmp_path: Path) -> Path:
    bundle = copy_bundle(synthetic_bundle, tmp_path / "bundle")
    rows = [
        replace(r, split=_split_of(r.path), group=_source(r.path))
        for r in load_labelled_folder(synthetic_dataset)
    ]
    write_training_manifest(rows, bundle / TRAINING_MANIFEST_NAME, synthetic_dataset)
    add_file(bundle, TRAINING_MANIFEST_NAME, kind="training_manifest")
    return bundle


def _flipped_copies(src: Path, out: Path, *, suffix: str = "_flip.png", scale: int = 1) -> Path:
    """Every photo of `src` mirrored (new bytes, same source photo), `scale` times its size,
    saved as `suffix` says (".jpg": JPEG quality 90)."""
    from PIL import Image

    for path in src.glob("*/*"):
        if path.is_file():
            target = out / path.parent.name / f"{path.stem}{suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as im:
                copy = im.convert("RGB").resize(
                    (im.width * scale, im.height * scale), Image.BICUBIC
                )
                copy.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target, quality=90)
    return out


def test_copies_of_seen_photos_are_excluded(recorded_bundle, synthetic_dataset, tmp_path):
    new = _flipped_copies(synthetic_dataset, tmp_path / "new")
    rows = load_labelled_folder(new)
    report = unseen_photos(load_bundle(recorded_bundle), rows, synthetic_dataset)
    assert report.method == "sha256+grouping"
    assert report.kept, "the held-out test sources must be kept"
    assert {_split_of(r.path) for r in report.kept} == {"test"}
    assert len(report.kept) == sum(_split_of(r.path) == "test" for r in rows)
    assert report.n_near_duplicates == len(rows) - len(report.kept)


def test_stored_descriptors_recognise_copies_without_the_training_photos(
    recorded_bundle, synthetic_dataset, tmp_path
):
    record_seen_descriptors(recorded_bundle, synthetic_dataset)
    bundle = load_bundle(recorded_bundle)
    assert bundle.meta["files"][SEEN_DESCRIPTORS_NAME]["kind"] == "seen_descriptors"
    # Twice the size, as JPEG: another copy of the data, no byte the same.
    big = _flipped_copies(synthetic_dataset, tmp_path / "new", suffix="_big.jpg", scale=2)
    rows = load_labelled_folder(big)
    report = unseen_photos(bundle, rows, tmp_path / "missing")
    assert report.method == "sha256+descriptors" and report.n_same_bytes == 0
    assert report.kept and {_split_of(r.path) for r in report.kept} == {"test"}
    assert len(report.kept) == sum(_split_of(r.path) == "test" for r in rows)
    assert report.n_near_duplicates == len(rows) - len(report.kept)


def test_without_the_training_photos_only_identical_files_are_excluded(
    recorded_bundle, synthetic_dataset, tmp_path
):
    rows = load_labelled_folder(synthetic_dataset)
    report = unseen_photos(load_bundle(recorded_bundle), rows, tmp_path / "missing")
    assert report.method == "sha256"
    assert report.n_same_bytes == sum(_split_of(r.path) != "test" for r in rows)
    assert {_split_of(r.path) for r in report.kept} == {"test"}
    assert report.notes and "not found" in report.notes[0]


def test_a_bundle_without_a_training_manifest_is_refused(synthetic_bundle, synthetic_dataset):
    with pytest.raises(EvaluationError, match="records no training photos"):
        unseen_photos(load_bundle(synthetic_bundle), load_labelled_folder(synthetic_dataset))


def test_cli_reports_how_many_photos_it_kept(recorded_bundle, synthetic_dataset, tmp_path):
    new = _flipped_copies(synthetic_dataset, tmp_path / "new")
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model", str(recorded_bundle),
            "--data", str(new),
            "--exclude-seen",
            "--seen-root", str(synthetic_dataset),
            "--backend", "torch",
            "--out", str(tmp_path / "eval"),
            "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    n_test = sum(_split_of(p) == "test" for p in new.glob("*/*"))
    assert metrics["exclude_seen"]["n_kept"] == n_test == metrics["n_images"]
    assert metrics["exclude_seen"]["n_input"] == len(list(new.glob("*/*")))
    assert len(class_folders(new)) == 3
