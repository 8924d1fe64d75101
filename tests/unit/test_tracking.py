"""MLflow tracking of `fisheye train`: a local SQLite store by default, MLFLOW_TRACKING_URI
to point elsewhere, `logger=csv` without MLflow, and a tracking failure never costs a model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from mlflow import MlflowClient
from omegaconf import open_dict

from fisheye.bundle import bundle_sha256, load_bundle
from fisheye.tracking import model_registry as registry
from fisheye.tracking.runs import TrackingLogger, flat_params
from fisheye.tracking.store import SHA256_TAG, artifact_root, local_store_uri, sqlite_path
from fisheye.training.train import run

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def _local_store_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No tracking server from the environment; the working folder is a temp one (no ./mlruns)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)


def _cfg(log_dir: Path, data_root: Path, *overrides: str):
    """The composed `fisheye train experiment=smoke` config, runs under `log_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="fisheye.conf", version_base="1.3"):
        cfg = compose(
            config_name="train",
            return_hydra_config=True,
            overrides=[
                "experiment=smoke",
                f"data.root={data_root}",
                f"paths.log_dir={log_dir}",
                f"hydra.run.dir={log_dir}/run",
                "callbacks=none",
                "trainer.enable_progress_bar=false",
                "drift.enabled=false",
                *overrides,
            ],
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
        cfg.paths.output_dir = str(log_dir / "run")
        cfg.bundle.dir = str(log_dir / "run" / "bundle")
    return cfg


def test_train_records_the_run_in_the_local_store(tmp_path, synthetic_dataset):
    log_dir = tmp_path / "runs"
    result = run(_cfg(log_dir, synthetic_dataset, "trainer.max_epochs=2"))
    bundle = Path(result["bundle"])

    # No server: the SQLite file in the log folder, artifacts beside it.
    uri = local_store_uri(log_dir)
    assert sqlite_path(uri) == log_dir / "mlflow.db" and (log_dir / "mlflow.db").is_file()
    assert not (tmp_path / "mlruns").exists()
    client = MlflowClient(uri)
    (found,) = client.search_runs(
        [client.get_experiment_by_name("fisheye").experiment_id],
        filter_string=f"tags.`{SHA256_TAG}` = '{bundle_sha256(bundle)}'",
    )
    run_id = found.info.run_id
    assert found.info.status == "FINISHED"
    assert found.info.artifact_uri.startswith(artifact_root(uri))
    assert (log_dir / "mlartifacts" / run_id / "artifacts" / "bundle" / "bundle.json").is_file()

    # Hyperparameters (the composed config, flattened) and a metric per epoch.
    assert found.data.params["model.arch"] == "small_cnn"
    assert found.data.params["trainer.max_epochs"] == "2"
    val_acc = client.get_metric_history(run_id, "val/acc")
    assert len({m.step for m in val_acc}) >= 2
    assert all(0.0 <= m.value <= 1.0 for m in val_acc)
    assert "train/loss_epoch" in found.data.metrics

    # The config, the confusion matrix and the bundle, which loads with every hash checked.
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "confusion_matrix_val.json", "confusion_matrix_val.png"} <= names
    assert "bundle" in names
    cm_file = client.download_artifacts(run_id, "confusion_matrix_val.json", str(tmp_path))
    matrix = json.loads(Path(cm_file).read_text())
    assert matrix["classes"] == load_bundle(bundle).classes
    assert sum(map(sum, matrix["matrix"])) == load_bundle(bundle).meta["data"]["counts"]["val"]
    copy = Path(client.download_artifacts(run_id, "bundle", str(tmp_path / "dl")))
    assert load_bundle(copy).sha256 == bundle_sha256(bundle)

    # Registering the bundle links the version to this training run (no second upload).
    version, created = registry.register(bundle, "fisheye", tracking_uri=uri)
    assert created and version.run_id == run_id and version.source == f"runs:/{run_id}/bundle"


def test_mlflow_tracking_uri_points_elsewhere(tmp_path, monkeypatch, synthetic_dataset):
    other = tmp_path / "elsewhere" / "store.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    cfg = _cfg(tmp_path / "runs", synthetic_dataset)
    assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{other}"
    logger = instantiate(cfg.logger.mlflow)
    assert isinstance(logger, TrackingLogger) and not logger.failed
    logger.log_metrics({"val/acc": 0.5}, step=1)
    logger.finalize("success")
    client = MlflowClient(f"sqlite:///{other}")
    assert client.get_run(logger.version).data.metrics == {"val/acc": 0.5}
    assert (tmp_path / "elsewhere" / "mlartifacts").as_uri() in client.get_run(
        logger.version
    ).info.artifact_uri
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_logger_csv_makes_no_mlflow_store(tmp_path, synthetic_dataset):
    log_dir = tmp_path / "runs"
    result = run(_cfg(log_dir, synthetic_dataset, "logger=csv", "trainer.max_epochs=1"))
    assert load_bundle(Path(result["bundle"]))
    assert (log_dir / "run" / "csv" / "metrics.csv").is_file()
    assert not (log_dir / "mlflow.db").exists() and not (log_dir / "mlartifacts").exists()
    assert not (tmp_path / "mlruns").exists()


def test_a_tracking_failure_never_costs_the_model(tmp_path, monkeypatch, synthetic_dataset, caplog):
    # A tracking server that is not there: nothing listens on port 9 of 127.0.0.1.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with caplog.at_level(logging.WARNING, logger="fisheye.tracking.runs"):
        result = run(_cfg(tmp_path / "runs", synthetic_dataset, "trainer.max_epochs=1"))
    assert load_bundle(Path(result["bundle"])).meta["metrics"]
    assert any("MLflow tracking stopped" in r.getMessage() for r in caplog.records)


def test_flat_params_are_dotted_short_strings():
    params = flat_params({"model": {"lr": 0.001, "arch": "x"}, "tags": [1, 2], "big": "y" * 900})
    assert params == {
        "model.lr": "0.001",
        "model.arch": "x",
        "tags": "[1, 2]",
        "big": "y" * 500,
    }
