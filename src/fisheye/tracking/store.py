"""Where runs and registered models live: the tracking URI, its artifact root, the client.

By default everything stays on this machine with no server: runs and the registry in the
SQLite file `runs/mlflow.db`, artifacts beside it in `runs/mlartifacts/`.
`MLFLOW_TRACKING_URI` points at another store (e.g. `http://mlflow.internal:5000`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
DEFAULT_STORE_DIR = Path("runs")
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
SQLITE_PREFIX = "sqlite:///"
# A bundle in a run: the artifact folder, and the tags that identify it (bundle.json's sha256).
BUNDLE_ARTIFACT = "bundle"
SHA256_TAG = "fisheye.bundle_sha256"
VERSION_TAG = "fisheye.bundle_version"
# The database stores MLflow runs from a SQL database (SQLAlchemy); the others are servers.
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


class TrackingError(RuntimeError):
    """The tracking store or the model registry cannot do what was asked."""


class TrackingUnavailableError(TrackingError):
    """MLflow (or the part of it a store needs) is not installed."""


def local_store_uri(store_dir: Path | str = DEFAULT_STORE_DIR) -> str:
    """The SQLite tracking URI of `store_dir`/mlflow.db (relative paths stay relative)."""
    return f"{SQLITE_PREFIX}{Path(store_dir) / DB_NAME}"


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the local store sqlite:///runs/mlflow.db."""
    return os.environ.get(ENV_TRACKING_URI) or local_store_uri()


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI (None for other stores and in-memory)."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    path = tracking_uri[len(SQLITE_PREFIX) :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def artifact_root(tracking_uri: str) -> str | None:
    """Where new experiments keep artifacts: `mlartifacts/` beside a SQLite file, as a URI.

    None for other stores: a server chooses (MLflow's own default for a SQLite store
    would be `./mlruns` relative to whichever folder a command runs in).
    """
    db = sqlite_path(tracking_uri)
    return (db.parent.resolve() / ARTIFACTS_DIR).as_uri() if db is not None else None


def _scheme(tracking_uri: str) -> str:
    return tracking_uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in tracking_uri else ""


def require_mlflow(tracking_uri: str) -> None:
    """Raise TrackingUnavailableError with what to install when MLflow cannot use this store."""
    if importlib.util.find_spec("mlflow") is None:
        raise TrackingUnavailableError(
            "the MLflow registry needs MLflow: pip install 'fisheye[registry]' "
            "(an MLflow server) or 'fisheye[train]' (also a local sqlite:// store)"
        )
    if _scheme(tracking_uri) in DATABASE_SCHEMES and (
        importlib.util.find_spec("sqlalchemy") is None
        or importlib.util.find_spec("alembic") is None
        or importlib.util.find_spec("mlflow.store.tracking.sqlalchemy_store") is None
    ):
        raise TrackingUnavailableError(
            f"the MLflow store {tracking_uri} is a database, which needs the full mlflow "
            "package: pip install 'fisheye[train]' (or pip install mlflow); "
            "mlflow-skinny reads a registry only through an MLflow server "
            f"({ENV_TRACKING_URI}=http://...)"
        )


def client(tracking_uri: str | None = None, *, create: bool = False) -> MlflowClient:
    """An MlflowClient of the store (default: `default_tracking_uri()`).

    A local SQLite store that does not exist is an error unless `create`: a read (list,
    resolve) from the wrong folder must not leave an empty `runs/mlflow.db` behind.
    """
    uri = tracking_uri or default_tracking_uri()
    require_mlflow(uri)
    db = sqlite_path(uri)
    if db is not None:
        if create:
            db.parent.mkdir(parents=True, exist_ok=True)
        elif not db.is_file():
            raise TrackingError(
                f"no MLflow store at {db} (tracking URI {uri}): train or register a model "
                f"first, run from the folder that holds it, or set {ENV_TRACKING_URI}"
            )
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(mlflow_client: Any, name: str) -> str:
    """The id of experiment `name`, created (artifacts beside a SQLite store) when missing."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage != "deleted":
        return found.experiment_id
    try:
        return mlflow_client.create_experiment(
            name, artifact_location=artifact_root(mlflow_client.tracking_uri)
        )
    except Exception:
        # Another process (a parallel sweep job) may have created it in the meantime.
        found = mlflow_client.get_experiment_by_name(name)
        if found is None or found.lifecycle_stage == "deleted":
            raise
        return found.experiment_id
