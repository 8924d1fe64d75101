"""What a training run records in its bundle: the photos it saw, its calibration, its test.

`training_manifest.csv` lists every photo of the run with its split and near-duplicate
group, so anyone can check which photos a model saw. The softmax temperature is fitted on
val; the headline figures are measured on the grouped test split (photos whose groups
neither training nor model selection saw), with 95% intervals from a bootstrap over groups.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fisheye.bundle import add_arrays, add_file, load_bundle, read_meta, update_meta
from fisheye.data.manifest import (
    TRAINING_MANIFEST_NAME,
    ManifestRow,
    data_root_of,
    read_training_manifest,
    write_training_manifest,
)
from fisheye.data.progress import NO_PROGRESS, Progress
from fisheye.data.seen import SEEN_DESCRIPTORS_NAME, describe_seen
from fisheye.inference.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    rescale,
)
from fisheye.inference.predictor import Predictor
from fisheye.inference.scoring import grouped_scores

log = logging.getLogger(__name__)


def record_training_photos(
    bundle_dir: Path, rows: list[ManifestRow], root: Path, progress: Progress = NO_PROGRESS
) -> str:
    """Store the training manifest (every photo of every split) and the near-duplicate
    descriptors of its train and val photos in the bundle; returns the manifest's sha256."""
    data_root = data_root_of(root)
    write_training_manifest(rows, Path(bundle_dir) / TRAINING_MANIFEST_NAME, data_root)
    meta = add_file(bundle_dir, TRAINING_MANIFEST_NAME, kind="training_manifest")
    digest = meta["files"][TRAINING_MANIFEST_NAME]["sha256"]
    update_meta(bundle_dir, data={**meta.get("data", {}), "training_manifest_sha256": digest})
    record_seen_descriptors(bundle_dir, data_root, progress)
    return digest


def record_seen_descriptors(
    bundle_dir: Path, data_root: Path, progress: Progress = NO_PROGRESS
) -> None:
    """Store the descriptors `fisheye evaluate --exclude-seen` matches new photos against,
    so it needs no training photos (those of the training manifest's train and val rows)."""
    manifest = (Path(bundle_dir) / TRAINING_MANIFEST_NAME).read_text(encoding="utf-8")
    descriptors = describe_seen(read_training_manifest(manifest), data_root, progress)
    add_arrays(
        bundle_dir, SEEN_DESCRIPTORS_NAME, {"descriptors": descriptors}, kind="seen_descriptors"
    )
    unreadable = int(np.isnan(descriptors).any(axis=1).sum())
    if unreadable:
        log.warning("%d training photos could not be described for --exclude-seen", unreadable)


def predict_rows(
    predictor: Predictor, rows: list[ManifestRow]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(probabilities, class indices, groups) of the readable rows."""
    classes = {c: i for i, c in enumerate(predictor.classes)}
    probs, labels, groups = [], [], []
    outputs = predictor.run_files([r.path for r in rows], batch_size=32)
    for row, out in zip(rows, outputs, strict=True):
        if out.probabilities is not None:
            probs.append(out.probabilities)
            labels.append(classes[row.label])
            groups.append(row.group or str(row.path))
    return np.stack(probs), np.asarray(labels, dtype=int), groups


def record_calibration(
    bundle_dir: Path,
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, list[str]] | None,
) -> dict[str, float]:
    """Fit the temperature on val (probs, labels), store it, and record the test figures.

    `val` and `test` probabilities are the bundle's outputs at its current temperature;
    `test` also carries each photo's near-duplicate group. Returns the test metrics.
    """
    meta = read_meta(bundle_dir)
    n_classes = len(meta["classes"])
    base = float((meta.get("calibration") or {}).get("temperature", 1.0))
    val_probs, val_labels = val
    temperature = base * fit_temperature(val_probs, val_labels)
    calibrated_val = rescale(val_probs, temperature / base)
    calibration = {
        "method": "temperature_scaling",
        "temperature": round(temperature, 6),
        "fitted_on": "val",
        "n_photos": len(val_labels),
        "val_nll_before": round(negative_log_likelihood(val_probs, val_labels), 6),
        "val_nll_after": round(negative_log_likelihood(calibrated_val, val_labels), 6),
        "val_ece_before": round(expected_calibration_error(val_probs, val_labels), 6),
        "val_ece_after": round(expected_calibration_error(calibrated_val, val_labels), 6),
    }
    log.info("temperature %.4f fitted on %d val photos", temperature, len(val_labels))
    metrics: dict[str, float] = {}
    if test is not None:
        probs, labels, groups = test
        calibrated = rescale(probs, temperature / base)
        scores = grouped_scores(labels, calibrated.argmax(axis=1), groups, n_classes)
        for name, interval in scores.items():
            metrics[f"test_{name}"] = round(interval.value, 6)
            metrics[f"test_{name}_ci95_low"] = round(interval.low, 6)
            metrics[f"test_{name}_ci95_high"] = round(interval.high, 6)
        metrics["test_ece_uncalibrated"] = round(expected_calibration_error(probs, labels), 6)
        metrics["test_ece"] = round(expected_calibration_error(calibrated, labels), 6)
        metrics["test_photos"] = len(labels)
        metrics["test_groups"] = len(set(groups))
    update_meta(bundle_dir, calibration=calibration, metrics={**meta["metrics"], **metrics})
    return metrics


def calibrate_and_score(
    bundle_dir: Path, val: list[ManifestRow], test: list[ManifestRow]
) -> dict[str, float]:
    """Run the bundle (torch) on val and test photos, then `record_calibration`."""
    predictor = Predictor(load_bundle(bundle_dir), backend="torch")
    val_probs, val_labels, _ = predict_rows(predictor, val)
    test_part = predict_rows(predictor, test) if test else None
    return record_calibration(bundle_dir, (val_probs, val_labels), test_part)
