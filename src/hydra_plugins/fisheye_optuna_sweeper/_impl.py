"""The sweep itself: the search space from Hydra's sweep syntax, then ask, launch, tell.

How a sweep, its jobs and the pruner fit together (docs/reproducibility.md):

1. The sweeper opens the study (`create_study(..., load_if_exists=True)`): with a database
   storage and the same study name, a second invocation continues the first one's study.
   A trial still RUNNING at that point was cut off by the interruption: it is marked FAIL
   and its parameters are queued, so the resumed sweep tries them first. The sampler's
   seed moves on by the trials the study holds, so a resumed sweep draws new parameters.
2. For each trial it asks Optuna for parameters and launches a Hydra job with them as
   overrides, plus `<trial_key>=<trial number>` (`optuna.trial=7`).
3. The job (`fisheye train`) reconnects to the study by storage + name + trial number
   (fisheye.training.tuning's pruning callback), reports val/acc each epoch, and when the pruner
   says so, stops training early and marks the trial `pruned_at_epoch`. It then ends like
   any run: a clean exit, its loggers (MLflow among them) closed as a success.
4. The sweeper reads the job's return value and that mark, and tells Optuna COMPLETE with
   the value, or PRUNED (Optuna then keeps the last reported value).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

if TYPE_CHECKING:
    from .optuna_sweeper import FisheyeOptunaSweeper

log = logging.getLogger(__name__)

# The user attribute the job's pruning callback sets when it stops a trial
# (fisheye.training.tuning).
PRUNED_ATTR = "pruned_at_epoch"
# optuna-integration's Lightning callback marks a trial it stopped under DDP this way.
DDP_PRUNED_ATTR = "ddp_pl:pruned"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override: choice, range, interval, tag(log|int, ...)."""
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(
            list(override.sweep_iterator(transformer=Transformer.encode))
        )
    if isinstance(value, RangeSweep):
        bounds = (value.start, value.stop, value.step)
        if all(isinstance(b, int) for b in bounds):
            return IntDistribution(
                int(value.start), int(value.stop) - int(value.step), step=value.step
            )
        return CategoricalDistribution(
            list(override.sweep_iterator(transformer=Transformer.encode))
        )
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if "int" in value.tags:
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: not a sweep (use choice, range or interval)")


def search_space(
    params: dict[str, str] | None, arguments: list[str]
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The distributions to sample and the fixed overrides every trial gets.

    `params` (the sweeper config) and the command line both count; a command-line override
    of the same key wins, so `model.lr=1e-3` on the command line fixes a swept parameter.
    """
    parser = OverridesParser.create()
    lines = [f"{key}={value}" for key, value in (params or {}).items()]
    by_key: dict[str, Override] = {}
    for override in parser.parse_overrides(lines) + parser.parse_overrides(arguments):
        by_key[override.get_key_element()] = override
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for key, override in by_key.items():
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed.append(override.input_line)
    return space, fixed


def _make_storage_dir(storage: str | None) -> None:
    """Create the folder of a SQLite study file (runs/ does not exist on a fresh clone)."""
    prefix = "sqlite:///"
    if storage and storage.startswith(prefix) and storage != prefix + ":memory:":
        Path(storage[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)


def make_sampler(config: Any, previous: int) -> optuna.samplers.BaseSampler:
    """The configured sampler (TPE when none), its seed moved on by the study's `previous` trials.

    A resumed sweep re-creates its sampler: with the same seed it would draw the first
    run's random start-up parameters again, and repeat those trials.
    """
    if config is None:
        return optuna.samplers.TPESampler()
    if not OmegaConf.is_config(config):
        return config  # already a sampler object
    config = OmegaConf.to_container(config, resolve=True)
    if config.get("seed") is not None:
        config["seed"] = int(config["seed"]) + previous
    return instantiate(config)


def resume(study: optuna.Study) -> int:
    """Fail the trials an interruption left RUNNING and queue their parameters again.

    Returns how many finished trials (complete or pruned) the study already holds.
    """
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning(
            "trial %d was cut off by an interrupted sweep: marked failed, its parameters queued",
            trial.number,
        )
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(trial.params, skip_if_exists=False)
    return len(study.get_trials(deepcopy=False, states=DONE))


def _tell(study: optuna.Study, trial: optuna.Trial, ret: JobReturn) -> Exception | None:
    """Record one finished job in the study; returns the job's error when it failed."""
    if ret.status == JobStatus.FAILED:
        error = ret._return_value  # JobReturn.return_value would raise it
        if isinstance(error, optuna.TrialPruned):  # a callback that raises instead of stopping
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            return None
        log.warning("trial %d failed: %s: %s", trial.number, type(error).__name__, error)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        return error if isinstance(error, Exception) else RuntimeError(str(error))
    stored = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    if PRUNED_ATTR in stored.user_attrs or stored.system_attrs.get(DDP_PRUNED_ATTR):
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        log.info("trial %d: pruned at epoch %s", trial.number, stored.user_attrs.get(PRUNED_ATTR))
        return None
    value = ret.return_value
    if value is None or not math.isfinite(float(value)):
        log.warning("trial %d returned %r, not a number: marked failed", trial.number, value)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        return ValueError(f"trial {trial.number} returned {value!r}, not a number")
    study.tell(trial, float(value), skip_if_finished=True)
    log.info("trial %d: %s", trial.number, float(value))
    return None


def run_sweep(sweeper: FisheyeOptunaSweeper, arguments: list[str]) -> list[list[JobReturn]]:
    """Run trials until the study holds `n_trials` done; write optimization_results.yaml."""
    settings, config, launcher = sweeper.settings, sweeper.config, sweeper.launcher
    assert config is not None and launcher is not None, "setup() first"
    space, fixed = search_space(
        OmegaConf.to_container(settings.params, resolve=True)
        if OmegaConf.is_config(settings.params)
        else settings.params,
        arguments,
    )
    if not space:
        raise ValueError(
            "the Optuna sweep has no search space: set hydra.sweeper.params "
            "(e.g. model.lr: 'tag(log, interval(1e-4, 1e-2))') or sweep overrides"
        )
    _make_storage_dir(settings.storage)
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=settings.storage,
        direction=settings.direction,
        load_if_exists=True,
    )
    study.sampler = make_sampler(settings.sampler, len(study.get_trials(deepcopy=False)))
    done = resume(study)
    remaining = settings.n_trials - done
    log.info(
        "Optuna study %r in %s: %d of %d trials done, %d to run; search space: %s",
        study.study_name,
        settings.storage or "memory",
        done,
        settings.n_trials,
        max(remaining, 0),
        ", ".join(space),
    )
    sweep_dir = Path(str(config.hydra.sweep.dir))
    returns: list[list[JobReturn]] = []
    failures: list[Exception] = []
    launched = 0
    while remaining > 0:
        trials = [study.ask(space) for _ in range(min(settings.n_jobs, remaining))]
        batch = [
            [
                *fixed,
                *(f"{key}={Transformer.str(v)}" for key, v in trial.params.items()),
                f"{settings.trial_key}={trial.number}",
            ]
            for trial in trials
        ]
        sweeper.validate_batch_is_legal(batch)
        # Job folders are named by trial number: runs/multirun/<date>/<trial number>/.
        results = launcher.launch(batch, initial_job_idx=trials[0].number)
        for trial, ret in zip(trials, results, strict=True):
            error = _tell(study, trial, ret)
            if error is not None:
                failures.append(error)
        returns.append(list(results))
        launched += len(trials)
        remaining -= len(trials)
        if failures and len(failures) / launched > settings.max_failure_rate:
            log.error(
                "%d of %d trials failed (max_failure_rate=%s): stopping the sweep",
                len(failures),
                launched,
                settings.max_failure_rate,
            )
            raise failures[-1]
    _write_results(study, sweep_dir)
    return returns


def _write_results(study: optuna.Study, sweep_dir: Path) -> None:
    """Summarise the study in <sweep dir>/optimization_results.yaml and the log."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): 0 for state in TrialState}
    for trial in trials:
        counts[trial.state.name.lower()] += 1
    summary: dict[str, Any] = {
        "name": "optuna",
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
        "trials": {k: v for k, v in counts.items() if v},
    }
    if counts["complete"]:
        best = study.best_trial
        summary.update(best_trial=best.number, best_value=best.value, best_params=best.params)
        log.info("best trial %d: %s with %s", best.number, best.value, best.params)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(summary), sweep_dir / "optimization_results.yaml")
