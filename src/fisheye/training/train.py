"""Hydra entry point: instantiate data, model, trainer; fit; test; write the model bundle."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from fisheye.bundle import WEIGHTS_FILE, BundleError, load_bundle, save_bundle
from fisheye.data.datamodule import FishDataModule
from fisheye.data.manifest import TRAINING_MANIFEST_NAME, read_training_manifest
from fisheye.data.seen import seen_photos
from fisheye.models.classifier import FishClassifier
from fisheye.monitoring.fitting import FitOptions, fit_bundle
from fisheye.monitoring.loading import load_model
from fisheye.tracking.runs import record_training_run
from fisheye.training.records import calibrate_and_score, record_training_photos

log = logging.getLogger(__name__)


def _instantiate_all(section: DictConfig | None) -> list[Any]:
    if not section:
        return []
    return [
        instantiate(c) for c in section.values() if isinstance(c, DictConfig) and "_target_" in c
    ]


def _scalar_metrics(results: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for res in results:
        out.update({k: float(v) for k, v in res.items()})
    return out


def _spawned(trainer: L.Trainer) -> bool:
    return getattr(trainer.strategy, "_start_method", None) in ("spawn", "fork", "forkserver")


def _cpu_overrides(trainer_cfg: DictConfig) -> dict[str, Any]:
    """Settings that only work on GPUs, turned off when the run is on CPUs (e.g. a CPU DDP)."""
    accelerator = trainer_cfg.get("accelerator", "auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and trainer_cfg.get("sync_batchnorm"):
        log.info("sync_batchnorm needs GPUs; training on CPUs without it")
        return {"sync_batchnorm": False}
    return {}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train as `cfg` says and write a bundle; returns the metrics and the bundle path."""
    L.seed_everything(cfg.seed, workers=True)
    dm: FishDataModule = instantiate(cfg.data)
    dm.setup("fit")
    # _convert_="all": plain containers in hparams, so checkpoints load with weights_only=True.
    model = instantiate(
        cfg.model, num_classes=len(dm.classes), class_names=dm.classes, _convert_="all"
    )
    init = _init_from_bundle(model, cfg.init_from, dm) if cfg.get("init_from") else None
    callbacks = _instantiate_all(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, **_cpu_overrides(cfg.trainer)
    )

    trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    if trainer.interrupted:
        log.warning("training was interrupted; resume with ckpt_path=<run>/checkpoints/last.ckpt")

    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    if best:
        log.info("best checkpoint: %s", best)
        # weights_only=False: our own Lightning checkpoint, written by this run.
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict(state)
    metrics = _scalar_metrics(trainer.validate(model, datamodule=dm, verbose=False))
    if cfg.get("test") and dm.splits.get("test"):
        metrics.update(_scalar_metrics(trainer.test(model, datamodule=dm, verbose=False)))

    if trainer.global_rank != 0:
        return {"metrics": metrics}
    bundle_dir = save_bundle(
        Path(cfg.bundle.dir),
        model.net,
        classes=dm.classes,
        preprocessing=dm.spec,
        architecture=model.hparams.arch,
        architecture_config=model.architecture_config,
        metrics={k.replace("/", "_"): round(v, 6) for k, v in metrics.items()},
        data={
            "root": str(dm.root),
            "manifest_hash": dm.manifest_hash,
            "counts": {k: len(v) for k, v in dm.splits.items()},
        },
        name=cfg.bundle.name,
        extra={
            "training": {
                "command": " ".join(["fisheye train", *sys.argv[1:]]),
                "config": OmegaConf.to_container(cfg, resolve=True),
                # Spawned DDP workers do not report their loop state back to this process.
                "epochs_trained": None if _spawned(trainer) else trainer.current_epoch,
                "best_checkpoint": best,
                "init_from": init,
            }
        },
    )
    log.info("model bundle written to %s", bundle_dir)
    record_training_photos(bundle_dir, dm.rows, dm.root)
    metrics.update(calibrate_and_score(bundle_dir, dm.splits["val"], dm.splits.get("test", [])))
    _fit_drift_reference(cfg, bundle_dir, dm)
    record_training_run(
        trainer.loggers,
        cfg,
        bundle_dir,
        net=model.net,
        val_batches=dm.val_dataloader(),
        classes=dm.classes,
    )
    return {"metrics": metrics, "bundle": str(bundle_dir)}


def _init_from_bundle(model: FishClassifier, source: str, dm: FishDataModule) -> dict[str, Any]:
    """Start from a bundle's weights, e.g. fine-tune a linear probe's network (LP-FT).

    The bundle must have this run's architecture and classes, and must not have trained or
    selected on a photo of this run's test split (its test figures would then be about
    fish the model saw).
    """
    from safetensors.torch import load

    bundle = load_bundle(Path(source))
    if bundle.architecture != model.hparams.arch or bundle.classes != dm.classes:
        raise ValueError(
            f"init_from={source}: a {bundle.architecture} bundle for {bundle.classes}, but this "
            f"run trains a {model.hparams.arch} for {dm.classes}"
        )
    if TRAINING_MANIFEST_NAME in bundle.meta["files"]:
        recorded = read_training_manifest(bundle.read_file(TRAINING_MANIFEST_NAME).decode())
        seen = {r.sha256 for r in seen_photos(recorded)}
        leaked = sum(r.sha256 in seen for r in dm.splits.get("test", []))
        if leaked:
            raise ValueError(
                f"init_from={source} trained or selected on {leaked} photos of this run's test "
                "split; split the data as that bundle did (same data, fractions and seed)"
            )
    try:
        model.net.load_state_dict(load(bundle.read_file(WEIGHTS_FILE)))
    except RuntimeError as exc:
        raise BundleError(
            f"init_from={source}: its weights do not fit this network: {exc}"
        ) from None
    log.info("initialised from %s (%s %s)", source, bundle.name, bundle.version)
    return {"path": str(source), "name": bundle.name, "version": bundle.version}


def _fit_drift_reference(cfg: DictConfig, bundle_dir: Path, dm: FishDataModule) -> None:
    """Store the drift reference and OOD threshold in the bundle (`drift.enabled=false`: skip).

    Best effort: a bundle without it still serves (without OOD scores), and
    `fisheye drift fit` can add it later, so a failure here only logs a warning.
    """
    drift_cfg = OmegaConf.to_container(cfg.get("drift") or {}, resolve=True)
    assert isinstance(drift_cfg, dict)
    if not drift_cfg.pop("enabled", True):
        return
    try:
        options = FitOptions(**{"seed": int(cfg.seed), **drift_cfg})
        predictor, _ = load_model(bundle_dir, backend="torch", monitoring=None)
        fit_bundle(
            predictor,
            [(r.path, r.label) for r in dm.splits["train"]],
            [(r.path, r.label) for r in dm.splits.get("val", [])] or None,
            options,
            data=str(dm.root),
        )
    except Exception as exc:  # never lose a trained model over its monitoring reference
        log.warning(
            "could not fit the drift reference (%s: %s); add it later with "
            "`fisheye drift fit --model %s --data <photos>`",
            type(exc).__name__,
            exc,
            bundle_dir,
        )


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def hydra_entry(cfg: DictConfig) -> float | None:
    """`fisheye train`: returns the optimised metric for Hydra sweepers."""
    result = run(cfg)
    return result["metrics"].get(cfg.get("optimized_metric", "val/acc"))
