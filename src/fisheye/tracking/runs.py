"""Training runs in MLflow: a Lightning logger that never stops training, and the run's record.

`TrackingLogger` (the `mlflow` option of the `logger` config group) logs the hyperparameters
and every epoch's metrics. `record_training_run`, called at the end of `fisheye train`,
adds the composed config (flattened as params, and as `config.yaml`), the validation
confusion matrix and the model bundle, and tags the run with the bundle's hash so the
registry can find it. A tracking failure is a warning: it never costs a trained model.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.loggers.logger import DummyExperiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fisheye.bundle import bundle_sha256, read_meta
from fisheye.tracking.store import (
    BUNDLE_ARTIFACT,
    SHA256_TAG,
    VERSION_TAG,
    artifact_root,
    default_tracking_uri,
    experiment_id,
    sqlite_path,
)

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "fisheye"
# Params are for searching and comparing runs; the whole config is in config.yaml.
MAX_PARAM_CHARS = 500
_PARAM_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


class TrackingLogger(MLFlowLogger):
    """Lightning's MLFlowLogger that warns and stops logging when tracking fails.

    The run is created when the logger is: DDP workers spawned later log into this run,
    not into runs of their own. `tracking_uri` defaults to `$MLFLOW_TRACKING_URI`, else
    the local store; a local SQLite store keeps artifacts in `mlartifacts/` beside it.
    """

    def __init__(
        self,
        experiment_name: str = DEFAULT_EXPERIMENT,
        tracking_uri: str | None = None,
        output_dir: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        uri = tracking_uri or default_tracking_uri()
        run_tags = {k: str(v) for k, v in (tags or {}).items()}
        if output_dir:
            run_tags.setdefault("fisheye.run_dir", str(Path(output_dir).resolve()))
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name or (Path(output_dir).name if output_dir else None),
            tracking_uri=uri,
            tags=run_tags,
            artifact_location=artifact_root(uri),
        )
        self.failed = False
        if rank_zero_only.rank == 0:  # other DDP ranks do not log
            self._guard("start a run", self._start)
        if not self.failed and self._run_id:
            log.info("MLflow run %s in %s (experiment %r)", self._run_id, uri, experiment_name)

    def _start(self) -> None:
        db = sqlite_path(self._tracking_uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        # The experiment through store.experiment_id: its artifacts go where the store says.
        self._experiment_id = experiment_id(self._mlflow_client, self._experiment_name)
        _ = self.run_id

    @property
    def tracking_uri(self) -> str:
        """The store this logger writes to."""
        return self._tracking_uri

    def _guard(self, action: str, call: Callable[[], Any]) -> None:
        if self.failed:
            return
        try:
            call()
        except Exception as exc:  # tracking must never stop training
            self.failed = True
            log.warning(
                "MLflow tracking stopped: could not %s at %s (%s: %s); training goes on, "
                "the CSV/TensorBoard logs and the bundle are unaffected",
                action,
                self._tracking_uri,
                type(exc).__name__,
                exc,
            )

    @property
    def experiment(self) -> Any:
        """The MlflowClient; after a failure, a stand-in that ignores every call."""
        if not self.failed:
            try:
                return super().experiment
            except Exception:
                self._guard("reach the store", lambda: super(TrackingLogger, self).experiment)
        return DummyExperiment()

    @property
    def name(self) -> str | None:
        """The experiment id (no store access: the run was created with the logger)."""
        return self._experiment_id

    @property
    def version(self) -> str | None:
        """The run id (no store access: the run was created with the logger)."""
        return self._run_id

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        self._guard(
            "log the hyperparameters", lambda: super(TrackingLogger, self).log_hyperparams(params)
        )

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._guard("log metrics", lambda: super(TrackingLogger, self).log_metrics(metrics, step))

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        self._guard("end the run", lambda: super(TrackingLogger, self).finalize(status))


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, values as short strings."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = _PARAM_KEY_UNSAFE.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_CHARS]
    return out


@torch.no_grad()
def confusion_matrix(net: nn.Module, batches: Iterable[Any], n_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) of `net` over (images, labels) batches."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    try:
        for x, y in batches:
            pred = net(x.to(device)).argmax(dim=1).cpu().numpy()
            np.add.at(counts, (y.numpy(), pred), 1)
    finally:
        net.train(was_training)
    return counts


def _confusion_figure(matrix: np.ndarray, classes: list[str]) -> Any:
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    side = max(4.0, 0.75 * len(classes) + 2.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=120)
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(matrix, display_labels=classes).plot(
        ax=ax, cmap="Blues", xticks_rotation=45, colorbar=True
    )
    ax.set_title("validation confusion matrix (best checkpoint)")
    fig.tight_layout()
    return fig


def _record(
    tracker: TrackingLogger,
    cfg: DictConfig,
    bundle_dir: Path,
    confusion: tuple[np.ndarray, list[str]] | None,
) -> None:
    from mlflow.entities import Param

    client, run_id = tracker.experiment, tracker.run_id
    assert run_id is not None
    params = [
        Param(k, v) for k, v in flat_params(OmegaConf.to_container(cfg, resolve=True)).items()
    ]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per call
        client.log_batch(run_id, params=params[i : i + 100])
    client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    hydra_dir = Path(str(cfg.paths.output_dir)) / ".hydra" if "paths" in cfg else None
    if hydra_dir is not None and hydra_dir.is_dir():
        client.log_artifacts(run_id, str(hydra_dir), "hydra")
    if confusion is not None:
        matrix, classes = confusion
        client.log_dict(
            run_id, {"classes": classes, "matrix": matrix.tolist()}, "confusion_matrix_val.json"
        )
        client.log_figure(run_id, _confusion_figure(matrix, classes), "confusion_matrix_val.png")
    meta = read_meta(bundle_dir)
    client.log_artifacts(run_id, str(bundle_dir), BUNDLE_ARTIFACT)
    tags = {
        SHA256_TAG: bundle_sha256(bundle_dir),
        VERSION_TAG: str(meta.get("version", "")),
        "fisheye.bundle_dir": str(Path(bundle_dir).resolve()),
        "fisheye.architecture": str(meta["architecture"]["name"]),
        "fisheye.data_manifest_hash": str(meta.get("data", {}).get("manifest_hash", "")),
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def record_training_run(
    loggers: Iterable[Logger],
    cfg: DictConfig,
    bundle_dir: Path,
    *,
    net: nn.Module | None = None,
    val_batches: Iterable[Any] | None = None,
    classes: list[str] | None = None,
) -> None:
    """Log the config, the val confusion matrix and the bundle into each MLflow run.

    Best effort, like the drift reference: a failure logs a warning and the bundle on
    disk is untouched.
    """
    trackers = [t for t in loggers if isinstance(t, TrackingLogger) and not t.failed and t.version]
    if not trackers:
        return
    confusion = None
    if net is not None and val_batches is not None and classes:
        try:
            confusion = (confusion_matrix(net, val_batches, len(classes)), list(classes))
        except Exception as exc:
            log.warning("could not compute the confusion matrix (%s: %s)", type(exc).__name__, exc)
    for tracker in trackers:
        try:
            _record(tracker, cfg, Path(bundle_dir), confusion)
        except Exception as exc:  # never lose a trained model over its tracking
            log.warning(
                "could not record the run in MLflow at %s (%s: %s); the bundle is at %s",
                tracker.tracking_uri,
                type(exc).__name__,
                exc,
                bundle_dir,
            )
        else:
            log.info("MLflow run %s: config, confusion matrix and bundle logged", tracker.version)
