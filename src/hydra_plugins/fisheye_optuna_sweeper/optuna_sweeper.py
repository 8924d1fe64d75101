"""The sweeper's config (registered as `hydra/sweeper: fisheye_optuna`) and its Hydra plugin class.

Why not hydra-optuna-sweeper: its last release (1.2.0) pins `optuna<3`, and Optuna 2.10
cannot open a SQLite study under SQLAlchemy 2, which this project (and MLflow) uses. This
plugin does the same job on current Optuna, and adds what the sweep here needs: a study
that resumes, and the trial's number handed to each job so it can report to the pruner.

Hydra imports this module on every `fisheye train`, so Optuna is only imported when a
sweep starts (in `_impl`). No `from __future__ import annotations` here: Hydra runs this
module before it is in sys.modules, where dataclasses look string annotations up.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class FisheyeOptunaSweeperConf:
    """Settings of `hydra/sweeper=fisheye_optuna` (conf/hparams_search/optuna.yaml sets them)."""

    _target_: str = "hydra_plugins.fisheye_optuna_sweeper.optuna_sweeper.FisheyeOptunaSweeper"
    # The sampler config reaches the sweeper as config: it is instantiated when the study
    # is opened, with its seed moved on by the trials already done (see _impl.make_sampler).
    _recursive_: bool = False
    # An Optuna sampler, e.g. {_target_: optuna.samplers.TPESampler, seed: 42}; null: TPE.
    sampler: Any = None
    direction: str = "maximize"
    # Where the study lives; with a database the same study_name resumes an interrupted sweep.
    storage: str | None = None
    study_name: str | None = None
    # Trials the study should hold when the sweep ends (completed and pruned ones count;
    # failed ones are tried again), not trials to add per invocation.
    n_trials: int = 20
    # Trials launched together (more than 1 needs a parallel launcher).
    n_jobs: int = 1
    # Fraction of failed trials above which the sweep stops with the last failure.
    max_failure_rate: float = 0.0
    # The config key each trial job receives its trial number in (the pruning callback's).
    trial_key: str = "optuna.trial"
    # The search space: key -> Hydra sweep syntax, e.g. model.lr: tag(log, interval(1e-4, 1e-2)),
    # data.batch_size: choice(16, 32); a plain value is passed to every trial unchanged.
    params: dict[str, str] | None = field(default=None)


ConfigStore.instance().store(
    group="hydra/sweeper", name="fisheye_optuna", node=FisheyeOptunaSweeperConf, provider="fisheye"
)


class FisheyeOptunaSweeper(Sweeper):
    """Ask Optuna for parameters, run each trial as a Hydra job, tell Optuna the result."""

    def __init__(self, **settings: Any) -> None:
        self.settings = FisheyeOptunaSweeperConf(**settings)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Make the launcher that runs the trial jobs (Hydra's own, or the one configured)."""
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        """Run the study until it holds `n_trials` finished trials; returns the jobs' results."""
        from ._impl import run_sweep

        return run_sweep(self, arguments)
