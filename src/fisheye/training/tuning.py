"""Optuna trial pruning inside a `fisheye train` job (conf/callbacks/optuna_pruning.yaml).

A Hydra sweeper runs each trial as a job and keeps the Optuna trial to itself, so the job
reconnects to it: the sweeper (hydra_plugins.fisheye_optuna_sweeper) passes the trial's
number as `optuna.trial=N`; `pruning_callback` loads that trial from the study's storage and
wraps it in optuna-integration's Lightning callback, which reports val/acc after every
epoch and asks the pruner whether to go on. Where that callback raises `TrialPruned`
(Lightning would then end the run, and its MLflow/W&B runs, as failed), this one stops
training like early stopping, and marks the trial `pruned_at_epoch` in the storage; the job
then ends cleanly and the sweeper records the trial as PRUNED.
"""

from __future__ import annotations

import logging

import lightning as L
import optuna
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from optuna_integration import PyTorchLightningPruningCallback

log = logging.getLogger(__name__)

# The trial attribute the sweeper reads (hydra_plugins/fisheye_optuna_sweeper/_impl.py).
PRUNED_ATTR = "pruned_at_epoch"


class OptunaPruning(PyTorchLightningPruningCallback):
    """Report `monitor` to an Optuna trial each epoch; stop training when it is pruned."""

    def __init__(self, trial: optuna.Trial, monitor: str = "val/acc") -> None:
        super().__init__(trial, monitor)
        self.pruned_at: int | None = None

    @property
    def trial(self) -> optuna.Trial:
        """The Optuna trial this run reports to."""
        return self._trial

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Name the study and trial in every logger (MLflow params, W&B config, hparams.yaml)."""
        super().on_fit_start(trainer, pl_module)
        for logger in trainer.loggers:
            logger.log_hyperparams(
                {"optuna_study": self.trial.study.study_name, "optuna_trial": self.trial.number}
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Report the epoch's metric; on a prune, stop training instead of raising."""
        # The validate/test passes that follow fit are not epochs of the trial.
        if trainer.state.fn != TrainerFn.FITTING or self.pruned_at is not None:
            return
        try:
            super().on_validation_end(trainer, pl_module)
        except optuna.TrialPruned:
            self.pruned_at = pl_module.current_epoch
            self.trial.set_user_attr(PRUNED_ATTR, self.pruned_at)
            trainer.should_stop = True
            for logger in trainer.loggers:  # so MLflow/W&B show which runs were pruned
                logger.log_metrics({"optuna_pruned_at_epoch": self.pruned_at}, trainer.global_step)
            log.info(
                "Optuna trial %d pruned after epoch %d (%s=%.4f): stopping training",
                self.trial.number,
                self.pruned_at,
                self.monitor,
                float(trainer.callback_metrics[self.monitor]),
            )


def pruning_callback(
    *,
    storage: str | None,
    study_name: str | None,
    trial: int | None,
    monitor: str = "val/acc",
    pruner: optuna.pruners.BasePruner | None = None,
) -> Callback:
    """The pruning callback for trial number `trial` of a stored study (no-op outside a sweep)."""
    if trial is None:
        log.info("optuna_pruning: not an Optuna sweep trial (optuna.trial is null), no pruning")
        return Callback()
    if not storage or not study_name:
        raise ValueError("optuna_pruning: optuna.trial is set, but optuna.storage/study_name not")
    backend = optuna.storages.get_storage(storage)
    study_id = backend.get_study_id_from_name(study_name)
    trial_id = backend.get_trial_id_from_study_id_trial_number(study_id, int(trial))
    study = optuna.load_study(study_name=study_name, storage=backend, pruner=pruner)
    return OptunaPruning(optuna.Trial(study, trial_id), monitor=monitor)
