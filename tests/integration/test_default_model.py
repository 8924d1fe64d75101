"""The committed default model on the real validation photos (skips when either is absent)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fisheye.bundle import BUNDLE_JSON, load_bundle
from fisheye.cli import app
from fisheye.data.manifest import TRAINING_MANIFEST_NAME, read_training_manifest
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


def test_bundle_records_its_photos_and_grouped_test_figures() -> None:
    bundle = load_bundle(DEFAULT_MODEL)
    recorded = read_training_manifest(bundle.read_file(TRAINING_MANIFEST_NAME).decode())
    assert (
        bundle.meta["data"]["training_manifest_sha256"]
        == (bundle.meta["files"][TRAINING_MANIFEST_NAME]["sha256"])
    )
    splits: dict[str, set[str]] = {}
    for photo in recorded:
        splits.setdefault(photo.group, set()).add(photo.split)
        assert not Path(photo.path).is_absolute()
    assert all(len(s) == 1 for s in splits.values()), "a group spans two splits"
    test_groups = {g for g, s in splits.items() if s == {"test"}}
    assert len(test_groups) >= 0.15 * len(splits)
    metrics = bundle.meta["metrics"]
    assert metrics["test_groups"] == len(test_groups)
    assert metrics["test_acc_ci95_low"] <= metrics["test_acc"] <= metrics["test_acc_ci95_high"]
    assert metrics["test_acc"] >= ACCURACY_FLOOR
    assert metrics["test_ece"] < metrics["test_ece_uncalibrated"]
    assert bundle.meta["calibration"]["fitted_on"] == "val"


def test_evaluate_exclude_seen_keeps_only_never_seen_groups(tmp_path: Path) -> None:
    bundle = load_bundle(DEFAULT_MODEL)
    recorded = read_training_manifest(bundle.read_file(TRAINING_MANIFEST_NAME).decode())
    split_of = {r.sha256: r.split for r in recorded}
    result = runner.invoke(
        app,
        [
            # No training photos: the bundle's stored descriptors are enough.
            "evaluate", "--data", str(VAL), "--exclude-seen", "--seen-root", str(tmp_path / "none"),
            "--json", "--out", str(tmp_path / "eval"),
        ],
        env=ENV,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    kept = metrics["exclude_seen"]
    assert kept["method"] == "sha256+descriptors"
    assert kept["n_input"] == len(list(VAL.glob("*/*.jpg")))
    # Exactly the recorded test photos are kept: their groups were never seen.
    n_test_in_val = sum(1 for p in VAL.glob("*/*.jpg") if split_of.get(_sha256(p)) == "test")
    assert 0 < kept["n_kept"] == metrics["n_images"] == n_test_in_val < kept["n_input"]
    assert metrics["accuracy"] >= ACCURACY_FLOOR


def test_exclude_seen_recognises_resized_recompressed_copies(tmp_path: Path) -> None:
    """Another copy of the dataset (full frame, JPEG, turned over) is matched to what the
    model saw by its stored descriptors, though no byte is the same."""
    from PIL import Image

    from fisheye.data.pipelines import load_labelled_folder
    from fisheye.evaluate import unseen_photos

    bundle = load_bundle(DEFAULT_MODEL)
    recorded = read_training_manifest(bundle.read_file(TRAINING_MANIFEST_NAME).decode())
    split_of = {r.sha256: r.split for r in recorded}
    was_test = {}
    for path in sorted(VAL.glob("*/*.jpg"))[::2]:
        copy = tmp_path / "copies" / path.parent.name / f"{path.stem}_590.jpg"
        copy.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as im:
            big = im.convert("RGB").resize((590, 445), Image.Resampling.BICUBIC)
            big.rotate(180).save(copy, quality=85)
        was_test[copy.name] = split_of.get(_sha256(path)) == "test"
    report = unseen_photos(bundle, load_labelled_folder(tmp_path / "copies"), tmp_path / "none")
    assert report.method == "sha256+descriptors" and report.n_same_bytes == 0
    kept = {Path(r.path).name for r in report.kept}
    never_seen = {name for name, test in was_test.items() if test}
    assert never_seen and never_seen <= kept  # no never-seen fish is dropped
    seen_copies = len(was_test) - len(never_seen)
    # On all 895 val photos, 33 of the 740 seen copies (4.5%) slip through.
    assert len(kept - never_seen) <= 0.1 * seen_copies


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_served_confidence_follows_accuracy_on_degraded_photos() -> None:
    """On noisy or blurred photos the shift temperature keeps the mean confidence near the
    accuracy (the label-free estimate), and closer than the temperature alone where that
    overstates it."""
    import numpy as np
    from PIL import Image, ImageFilter

    from fisheye.data.labelled import labelled_paths
    from fisheye.monitoring.loading import load_model

    predictor, _ = load_model(DEFAULT_MODEL)
    assert predictor.shift_temperature is not None
    items = labelled_paths(VAL, predictor.classes)[::3]
    labels = np.array([predictor.classes.index(label) for _, label in items])
    rng = np.random.default_rng(0)

    def noisy(img: Image.Image) -> Image.Image:
        pixels = np.asarray(img, np.float32)
        pixels = pixels + rng.normal(scale=0.16 * 255, size=pixels.shape)
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    for degrade in (noisy, lambda img: img.filter(ImageFilter.GaussianBlur(2))):
        batch = np.stack([predictor.prepare(degrade(predictor.decode(p))) for p, _ in items])
        served = np.concatenate(
            [predictor.infer(batch[i : i + 32]).probabilities for i in range(0, len(batch), 32)]
        )
        plain = np.concatenate(
            [
                predictor.backend.run(batch[i : i + 32]).probabilities
                for i in range(0, len(batch), 32)
            ]
        )
        accuracy = float((served.argmax(1) == labels).mean())
        served_gap = float(served.max(1).mean()) - accuracy
        plain_gap = float(plain.max(1).mean()) - accuracy
        assert accuracy < 0.97  # the degradation is real
        assert abs(served_gap) < 0.05, (accuracy, served_gap, plain_gap)
        if plain_gap > 0.05:  # where the temperature alone overstates it: closer
            assert abs(served_gap) < plain_gap, (accuracy, served_gap, plain_gap)
