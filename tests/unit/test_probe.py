"""Linear probes: a bundle from frozen features, and out-of-fold probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from fisheye.bundle import load_bundle
from fisheye.cli import app
from fisheye.data.manifest import TRAINING_MANIFEST_NAME, read_training_manifest
from fisheye.data.pipelines import load_dataset_rows
from fisheye.data.preprocess import Preprocessing
from fisheye.inference.predictor import Predictor
from fisheye.training.features import _cache_key, default_preprocessing
from fisheye.training.probe import (
    fit_linear_head,
    out_of_fold_probabilities,
    served_preprocessing,
    train_probe,
)
from fisheye.training.records import predict_rows


def test_head_folds_standardisation_into_raw_feature_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(loc=5.0, scale=[1.0, 10.0, 0.1], size=(300, 3))
    y = (x[:, 1] > 5).astype(int) + (x[:, 1] > 12).astype(int)
    assert set(y) == {0, 1, 2}
    head = fit_linear_head(x, y, 4, c=10.0)
    assert (head.probabilities(x).argmax(1) == y).mean() > 0.95
    assert head.probabilities(x)[:, 3].max() < 1e-6  # no photos of class 3: never predicted
    binary = fit_linear_head(x, (x[:, 1] > 5).astype(int), 2, c=10.0)
    assert (binary.probabilities(x).argmax(1) == (x[:, 1] > 5)).mean() > 0.95


def test_out_of_fold_probabilities_never_see_their_own_group():
    # Each group's photos share one feature vector and one random label: a probe that saw the
    # group would be right; one that did not can only guess.
    rng = np.random.default_rng(1)
    n_groups, copies = 60, 5
    centres = rng.normal(size=(n_groups, 100))
    group_labels = rng.integers(0, 3, n_groups)
    x = np.repeat(centres, copies, axis=0) + rng.normal(scale=0.01, size=(n_groups * copies, 100))
    y = np.repeat(group_labels, copies)
    groups = [f"g{i}" for i in range(n_groups) for _ in range(copies)]
    oof = out_of_fold_probabilities(x, y, groups, 3, c=100.0)
    assert oof.shape == (len(y), 3)
    assert (oof.argmax(1) == y).mean() < 0.6
    in_sample = fit_linear_head(x, y, 3, c=100.0).probabilities(x)
    assert (in_sample.argmax(1) == y).mean() > 0.9


def test_probe_writes_a_recorded_calibrated_bundle(tmp_path, synthetic_dataset):
    rows = load_dataset_rows(synthetic_dataset, 0.25, 0.25, seed=0)
    out = tmp_path / "probe"
    metrics = train_probe(
        rows,
        synthetic_dataset,
        out,
        backend="torch",
        name="probe-test",
        augment_views=["hflip"],
        augment_corruptions=1,
    )
    bundle = load_bundle(out)
    assert bundle.name == "probe-test"
    assert bundle.meta["training"]["recipe"] == "linear_probe"
    assert bundle.meta["training"]["augment_views"] == ["hflip"]
    assert bundle.meta["training"]["augment_corruptions"] == 1
    assert "motion_blur" in bundle.meta["training"]["corruption_families"]
    recorded = read_training_manifest(bundle.read_file(TRAINING_MANIFEST_NAME).decode())
    assert {r.split for r in recorded} == {"train", "val", "test"}
    assert bundle.temperature > 0
    assert metrics["test_photos"] == sum(r.split == "test" for r in recorded)
    # The head written into the network gives what the probe measured on its features.
    val = [r for r in rows if r.split == "val"]
    probs, labels, _ = predict_rows(Predictor(bundle, backend="torch"), val)
    assert float((probs.argmax(1) == labels).mean()) == pytest.approx(metrics["val_acc"])


def test_probe_cli_refuses_missing_data(tmp_path):
    result = CliRunner().invoke(
        app, ["probe", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]
    )
    assert result.exit_code == 2
    assert "no such file or folder" in result.output


def test_probe_refuses_an_unknown_view(tmp_path, synthetic_dataset):
    rows = load_dataset_rows(synthetic_dataset, 0.25, 0.25, seed=0)
    with pytest.raises(ValueError, match="unknown view"):
        train_probe(rows, synthetic_dataset, tmp_path / "b", augment_views=["sideways"])


def test_probe_refuses_a_negative_number_of_corrupted_views(tmp_path, synthetic_dataset):
    rows = load_dataset_rows(synthetic_dataset, 0.25, 0.25, seed=0)
    with pytest.raises(ValueError, match="augment_corruptions"):
        train_probe(rows, synthetic_dataset, tmp_path / "b", augment_corruptions=-1)


def test_probe_takes_the_backbone_size_and_a_resize_mode(tmp_path, synthetic_dataset):
    rows = load_dataset_rows(synthetic_dataset, 0.25, 0.25, seed=0)
    spec = Preprocessing(input_size=64, resize="center_crop")
    train_probe(rows, synthetic_dataset, tmp_path / "b", backend="torch", preprocessing=spec)
    assert load_bundle(tmp_path / "b").preprocessing == spec
    assert default_preprocessing("efficientnet_lite2").input_size == 260
    assert default_preprocessing("efficientnet_lite0", "center_crop").resize == "center_crop"
    with pytest.raises(ValueError, match="unknown architecture"):
        default_preprocessing("vgg99")


def test_probe_cli_refuses_an_unknown_resize_mode(tmp_path, synthetic_dataset):
    args = ["probe", "--data", str(synthetic_dataset), "--out", str(tmp_path / "b")]
    result = CliRunner().invoke(app, [*args, "--resize", "stretch"])
    assert result.exit_code == 2
    assert "--resize must be one of" in result.output


def test_feature_cache_keys_differ_by_preprocessing(synthetic_dataset):
    rows = load_dataset_rows(synthetic_dataset, 0.25, 0.25, seed=0)
    plain = _cache_key("efficientnet_lite0", "onnx", rows)
    assert _cache_key("efficientnet_lite0", "onnx", rows, spec=Preprocessing()) == plain
    cropped = Preprocessing(resize="center_crop")
    assert _cache_key("efficientnet_lite0", "onnx", rows, spec=cropped) != plain
    bigger = Preprocessing(input_size=260)
    assert _cache_key("efficientnet_lite0", "onnx", rows, spec=bigger) != plain


def test_probe_serves_a_tighter_crop_than_it_trained_on(tmp_path, synthetic_dataset):
    rows = load_dataset_rows(synthetic_dataset, 0.25, 0.25, seed=0)
    trained = Preprocessing(input_size=64, resize="center_crop", crop_fraction=0.875)
    metrics = train_probe(
        rows,
        synthetic_dataset,
        tmp_path / "b",
        backend="torch",
        preprocessing=trained,
        serve_crop_fraction=0.75,
    )
    bundle = load_bundle(tmp_path / "b")
    assert bundle.preprocessing == served_preprocessing(trained, 0.75)
    assert bundle.preprocessing.crop_fraction == 0.75
    assert bundle.meta["training"]["train_crop_fraction"] == 0.875
    # Val was scored with the served crop: the recorded figure is what the bundle gives on
    # the val photos as it serves them (and differs from the trained crop's).
    val = [r for r in rows if r.split == "val"]
    served_probs, labels, _ = predict_rows(Predictor(bundle, backend="torch"), val)
    assert float((served_probs.argmax(1) == labels).mean()) == pytest.approx(metrics["val_acc"])
    at_trained_crop = Predictor(bundle, backend="torch")
    at_trained_crop.preprocessing = trained
    trained_probs, _, _ = predict_rows(at_trained_crop, val)
    assert not np.allclose(served_probs, trained_probs)
    with pytest.raises(ValueError, match="centre-crop"):
        served_preprocessing(Preprocessing(resize="squash"), 0.75)
    with pytest.raises(ValueError, match=r"\[0.3, 1\]"):
        served_preprocessing(trained, 1.5)


def test_probe_cli_refuses_a_served_crop_without_centre_crop(tmp_path, synthetic_dataset):
    args = ["probe", "--data", str(synthetic_dataset), "--out", str(tmp_path / "b")]
    result = CliRunner().invoke(app, [*args, "--serve-crop-fraction", "0.75"])
    assert result.exit_code == 2
    assert "--serve-crop-fraction needs --resize center_crop" in result.output
