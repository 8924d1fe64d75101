"""Helpers for the monitoring tests: a tiny bundle with a fitted drift reference.

This module holds no tests; it is named test_monitoring_* so it sits with those tests.
"""

from __future__ import annotations

from pathlib import Path

from test_serving_support import make_tiny_bundle

from fisheye.inference.predictor import Predictor
from fisheye.monitoring.reference import fit_bundle, labelled_paths


def make_monitored_bundle(out_dir: Path, photos: Path) -> Path:
    """The tiny serving bundle plus a drift reference fitted on a folder of synthetic photos."""
    bundle = make_tiny_bundle(out_dir)
    predictor = Predictor.from_dir(bundle)
    items = labelled_paths(photos, predictor.classes)
    fit_bundle(predictor, items, None, fit_size=len(items), reference_size=len(items))
    return bundle


def synthetic_photos(root: Path) -> list[Path]:
    """The synthetic photos under `root`, sorted."""
    return sorted(root.rglob("*.png")) + sorted(root.rglob("*.jpg"))
