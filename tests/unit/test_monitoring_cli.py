"""`fisheye drift fit`, `fisheye drift --json`, `predict --format json` OOD fields, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fisheye.bundle import load_bundle
from fisheye.cli import app
from fisheye.monitoring.loading import load_model
from fisheye.monitoring.storage import DRIFT_FILE, load_monitor
from tests.helpers.bundles import copy_bundle

runner = CliRunner()


@pytest.fixture(scope="module")
def fitted(
    tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path
) -> Path:
    """A copy of the tiny bundle with a drift reference from `fisheye drift fit` (read-only)."""
    bundle = copy_bundle(tiny_bundle, tmp_path_factory.mktemp("drift-cli") / "bundle")
    res = runner.invoke(
        app, ["drift", "fit", "--model", str(bundle), "--data", str(synthetic_dataset)]
    )
    assert res.exit_code == 0, res.output
    return bundle


def test_drift_fit_stores_a_hashed_reference(fitted: Path) -> None:
    meta = json.loads((fitted / "bundle.json").read_text())
    entry = meta["files"][DRIFT_FILE]
    assert entry["kind"] == "drift_reference" and entry["bandwidth"] > 0
    assert entry["ood"]["false_alarm_rate"] == 0.05
    assert (fitted / DRIFT_FILE).stat().st_size < 5_000_000
    monitor = load_monitor(load_bundle(fitted))  # verifies the hash
    assert monitor is not None and monitor.drift.reference.shape[1] > 0


def test_drift_json_prints_only_the_five_fields(fitted: Path, synthetic_dataset: Path) -> None:
    res = runner.invoke(
        app,
        ["drift", "--model", str(fitted), "--data", str(synthetic_dataset), "--json", "-n", "20"],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) == {"n", "score", "p_value", "drift", "ood_fraction", "estimated_accuracy"}
    assert 0.0 < out["estimated_accuracy"] <= 1.0
    assert out["n"] == 20 and isinstance(out["drift"], bool) and 0 < out["p_value"] <= 1
    assert out["drift"] is False  # the photos the reference was fitted on


def test_drift_table_and_errors(
    fitted: Path, tiny_bundle: Path, synthetic_dataset: Path, tmp_path: Path
) -> None:
    res = runner.invoke(app, ["drift", "--model", str(fitted), "--data", str(synthetic_dataset)])
    assert res.exit_code == 0 and "MMD score" in res.stdout and "no drift" in res.stdout
    res = runner.invoke(
        app, ["drift", "--model", str(tiny_bundle), "--data", str(synthetic_dataset)]
    )
    assert res.exit_code == 2 and "drift fit" in res.output
    res = runner.invoke(app, ["drift", "--model", str(fitted), "--data", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no such file" in res.output


def test_predict_json_adds_ood_fields(fitted: Path, synthetic_dataset: Path) -> None:
    photo = sorted(synthetic_dataset.rglob("*.jpg"))[0]
    res = runner.invoke(app, ["predict", str(photo), "--model", str(fitted), "--format", "json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)[0]
    assert isinstance(rec["ood_score"], float) and isinstance(rec["in_distribution"], bool)
    predictor, monitor = load_model(fitted)
    assert monitor is not None and predictor.ood is monitor.ood
    threshold = monitor.ood.threshold
    assert rec["in_distribution"] == (rec["ood_score"] <= threshold + 1e-3)


def test_predict_without_reference_has_no_ood_fields(tiny_bundle: Path, synthetic_dataset) -> None:
    photo = sorted(synthetic_dataset.rglob("*.jpg"))[0]
    res = runner.invoke(
        app, ["predict", str(photo), "--model", str(tiny_bundle), "--format", "json"]
    )
    assert res.exit_code == 0 and "ood_score" not in json.loads(res.stdout)[0]


def test_tampered_reference_fails_the_bundle_check(
    fitted: Path, tmp_path: Path, synthetic_dataset: Path
) -> None:
    copy = copy_bundle(fitted, tmp_path / "copy")
    with open(copy / DRIFT_FILE, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    res = runner.invoke(app, ["drift", "--model", str(copy), "--data", str(synthetic_dataset)])
    assert res.exit_code == 2 and "integrity" in res.output


def test_monitor_report_cli(tmp_path: Path) -> None:
    res = runner.invoke(app, ["monitor", "report", "--db", str(tmp_path / "x.sqlite"), "-o", "o"])
    assert res.exit_code == 2 and "no prediction log" in res.output


def test_drift_fit_stores_one_reference_per_feature_space(
    writable_exported_bundle: Path, synthetic_dataset: Path
) -> None:
    """int8 features differ from fp32: each backend is tested against its own reference."""
    copy = writable_exported_bundle
    res = runner.invoke(
        app, ["drift", "fit", "--model", str(copy), "--data", str(synthetic_dataset)]
    )
    assert res.exit_code == 0, res.output
    files = json.loads((copy / "bundle.json").read_text())["files"]
    refs = {e["features_backend"]: n for n, e in files.items() if e["kind"] == "drift_reference"}
    assert refs == {"torch": DRIFT_FILE, "onnx-int8": "drift_reference.onnx-int8.safetensors"}
    bundle = load_bundle(copy)
    for backend, expected in (("torch", "torch"), ("onnx", "torch"), ("onnx-int8", "onnx-int8")):
        monitor = load_monitor(bundle, backend=backend)
        assert monitor is not None and monitor.backend == expected and monitor.matches_backend
    predictor, monitor = load_model(copy, backend="onnx-int8")
    assert monitor is not None and monitor.backend == "onnx-int8"
    assert predictor.backend_name == "onnx-int8" and predictor.ood is monitor.ood
    res = runner.invoke(
        app,
        ["drift", "--model", str(copy), "--data", str(synthetic_dataset), "-b", "onnx-int8"],
    )
    assert res.exit_code == 0, res.output
    assert "onnx-int8 (reference: onnx-int8)" in res.stdout and "no drift" in res.stdout


def test_a_reference_of_another_backend_is_used_with_a_warning(
    fitted: Path, synthetic_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = load_monitor(load_bundle(fitted), backend="onnx-int8")  # only torch's exists
    assert monitor is not None and monitor.backend == "torch" and not monitor.matches_backend
    assert "no drift reference for the onnx-int8 backend" in caplog.text


def test_drift_fit_with_labelled_val_photos_fits_the_shift_temperature(
    tmp_path: Path, synthetic_dataset: Path
) -> None:
    import numpy as np

    from fisheye.inference.predictor import Predictor
    from tests.helpers.bundles import class_folders, make_bundle

    # A bundle of the synthetic set's own classes, so its val photos are labelled.
    bundle = make_bundle(tmp_path / "bundle", class_folders(synthetic_dataset))
    args = ["drift", "fit", "--model", str(bundle), "--data", str(synthetic_dataset)]
    res = runner.invoke(app, [*args, "--val", str(synthetic_dataset), "--shifted-views", "2"])
    assert res.exit_code == 0, res.output
    assert "shift temperature fitted on" in res.output
    entry = json.loads((bundle / "bundle.json").read_text())["files"][DRIFT_FILE]
    assert set(entry["shift_temperature"]) == {"slope", "offset", "reference"}
    assert entry["fitted"]["shift_temperature_views"] == 2
    # Served confidences are the plain calibrated ones, softened by each photo's factor.
    predictor, monitor = load_model(bundle)
    assert monitor is not None and predictor.shift_temperature == monitor.shift_temperature
    plain = Predictor(load_bundle(bundle), backend="torch")
    photos = sorted(synthetic_dataset.rglob("*.png"))[:8]
    batch = np.stack([plain.prepare(p) for p in photos])
    served = predictor.infer(batch)
    expected = monitor.shift_temperature.apply(plain.infer(batch).probabilities, served.ood_scores)
    np.testing.assert_allclose(served.probabilities, expected, atol=1e-5)

    res = runner.invoke(app, [*args, "--val", str(synthetic_dataset), "--shifted-views", "0"])
    assert res.exit_code == 0, res.output
    entry = json.loads((bundle / "bundle.json").read_text())["files"][DRIFT_FILE]
    assert entry["shift_temperature"] is None
    assert load_model(bundle)[0].shift_temperature is None


def test_drift_fit_with_real_world_val_chooses_the_abstention_threshold(
    tmp_path: Path, synthetic_dataset: Path
) -> None:
    from fisheye.data.labelled import labelled_paths
    from fisheye.inference.predictor import Predictor
    from fisheye.monitoring.fitting import FitOptions, extract_features, fit_real_world_abstention
    from tests.helpers.bundles import class_folders, make_bundle

    bundle = make_bundle(tmp_path / "bundle", class_folders(synthetic_dataset))
    args = ["drift", "fit", "--model", str(bundle), "--data", str(synthetic_dataset)]
    args += ["--val", str(synthetic_dataset), "--shifted-views", "1"]
    res = runner.invoke(app, [*args, "--real-world-val", str(synthetic_dataset)])
    assert res.exit_code == 0, res.output
    assert "real-world val photos answered" in res.output
    abstention = json.loads((bundle / "bundle.json").read_text())["abstention"]
    items = labelled_paths(synthetic_dataset, class_folders(synthetic_dataset))
    assert abstention["photos"] == len(items)
    assert abstention["target_accuracy"] == 0.97
    # The threshold is what the served confidences give on those photos, and it is served.
    predictor, monitor = load_model(bundle)
    assert predictor.abstain_below == abstention["threshold"]
    photos = extract_features(Predictor(load_bundle(bundle), backend="torch"), items)
    again = fit_real_world_abstention(monitor, photos, predictor.classes, FitOptions())
    assert again.threshold == pytest.approx(abstention["threshold"], abs=1e-5)

    # Photos outside the model's class folders are refused with a clear error.
    res = runner.invoke(app, [*args, "--real-world-val", str(synthetic_dataset.parent)])
    assert res.exit_code == 2
    assert "named after one of the model's classes" in res.output
