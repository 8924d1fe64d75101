"""Shared fixtures: a small synthetic photo set and the real photos in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fisheye.data.sources import write_synthetic

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _prediction_log_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Servers started by tests log predictions to a temp file, never the user's state dir."""
    if "FISHEYE_PREDICTION_DB" not in os.environ:
        db = tmp_path_factory.mktemp("prediction-log") / "predictions.sqlite"
        os.environ["FISHEYE_PREDICTION_DB"] = str(db)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SYNTHETIC class-per-folder set: 3 classes x 12 images (4 sources x 3 variants)."""
    root = tmp_path_factory.mktemp("synthetic") / "synthetic-fish"
    return write_synthetic(root, per_class=12, classes=3, size=64, variants=3, seed=0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real photos in ../shared/data (read-only); skips when they are absent."""
    if not (SHARED_DATA / "fish-256").is_dir():
        pytest.skip(
            f"real photos not found at {SHARED_DATA} (a clone outside the FishEye workspace "
            "does not have them)"
        )
    return SHARED_DATA
