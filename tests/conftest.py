"""Fixtures for unit and integration tests: photo sets and tiny model bundles.

Session-scoped fixtures are built once and shared: treat them as read-only. A test that
changes a bundle's files takes the function-scoped `writable_*` copy instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fisheye.data.synthetic import write_synthetic
from tests.helpers.bundles import copy_bundle, make_bundle
from tests.helpers.paths import require_shared_data
from tests.helpers.photos import class_folders
from tests.helpers.postgres import PostgresServer, fresh_database, postgres_bin_dir
from tests.helpers.postgres import postgres_server as start_postgres


@pytest.fixture(scope="session", autouse=True)
def _prediction_log_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Servers started by tests log predictions to a temp file, never the user's state dir."""
    if "FISHEYE_PREDICTION_DB" not in os.environ:
        db = tmp_path_factory.mktemp("prediction-log") / "predictions.sqlite"
        os.environ["FISHEYE_PREDICTION_DB"] = str(db)


@pytest.fixture(scope="session", autouse=True)
def _tracking_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Training runs started by tests track to a temp MLflow store, never runs/ or a server;
    Weights & Biases, when a test selects it, stays offline."""
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    os.environ["WANDB_MODE"] = "offline"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (tests/helpers/postgres.py). Skips where
    PostgreSQL is not installed, except in CI, where .ci/run installs it."""
    if postgres_bin_dir() is None:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with start_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """The URL of an empty database of its own for one test."""
    return fresh_database(postgres_server, f"t{abs(hash(request.node.nodeid)):x}")


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SYNTHETIC class-per-folder set: 3 classes x 12 images (4 sources x 3 variants)."""
    root = tmp_path_factory.mktemp("synthetic") / "synthetic-fish"
    return write_synthetic(root, per_class=12, classes=3, size=64, variants=3, seed=0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real photos in ../shared/data (read-only); skips when they are absent."""
    return require_shared_data()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init small_cnn bundle with the nine real classes (read-only)."""
    return make_bundle(tmp_path_factory.mktemp("tiny-bundle") / "bundle")


@pytest.fixture
def writable_tiny_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A fresh copy of `tiny_bundle` that the test may change (tamper with, add files to)."""
    return copy_bundle(tiny_bundle, tmp_path / "writable-tiny-bundle")


@pytest.fixture(scope="session")
def synthetic_bundle(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """A tiny bundle whose classes are the synthetic set's, to measure it there (read-only)."""
    out = tmp_path_factory.mktemp("synthetic-bundle") / "bundle"
    return make_bundle(out, class_folders(synthetic_dataset))


@pytest.fixture
def writable_synthetic_bundle(synthetic_bundle: Path, tmp_path: Path) -> Path:
    """A fresh copy of `synthetic_bundle` that the test may change (e.g. export into)."""
    return copy_bundle(synthetic_bundle, tmp_path / "writable-synthetic-bundle")
