"""The Optuna sweep's parts without training: search space, resume, sampler, pruning callback."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from fisheye.training.tuning import PRUNED_ATTR, OptunaPruning, pruning_callback
from hydra_plugins.fisheye_optuna_sweeper import _impl
from hydra_plugins.fisheye_optuna_sweeper._impl import make_sampler, resume, search_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_search_space_from_hydra_sweep_syntax():
    space, fixed = search_space(
        {
            "model.lr": "tag(log, interval(1e-4, 1e-2))",
            "model.label_smoothing": "interval(0.0, 0.2)",
            "data.batch_size": "choice(16, 32, 64)",
            "model.dropout": "0.3",
        },
        ["trainer.max_epochs=range(1, 7, 2)", "+model.depth=tag(int, interval(2, 5))", "seed=7"],
    )
    assert space == {
        "model.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "model.label_smoothing": FloatDistribution(0.0, 0.2),
        "data.batch_size": CategoricalDistribution([16, 32, 64]),
        "trainer.max_epochs": IntDistribution(1, 5, step=2),
        "+model.depth": IntDistribution(2, 5),
    }
    assert fixed == ["model.dropout=0.3", "seed=7"]


def test_command_line_fixes_a_swept_parameter():
    space, fixed = search_space({"model.lr": "interval(1e-4, 1e-2)"}, ["model.lr=0.001"])
    assert space == {} and fixed == ["model.lr=0.001"]


def _study(tmp_path, name="s"):
    return optuna.create_study(
        study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db", direction="maximize"
    )


def test_resume_fails_the_cut_off_trial_and_queues_its_parameters(tmp_path):
    study = _study(tmp_path)
    space = {"x": FloatDistribution(0.0, 1.0)}
    done = study.ask(space)
    study.tell(done, 0.5)
    cut_off = study.ask(space)  # the sweep was killed while this trial ran
    assert resume(study) == 1
    assert study.trials[cut_off.number].state == TrialState.FAIL
    retried = study.ask(space)
    assert retried.params == cut_off.params


def test_a_resumed_sampler_does_not_repeat_the_first_draws():
    config = OmegaConf.create({"_target_": "optuna.samplers.TPESampler", "seed": 42})
    first, resumed = make_sampler(config, 0), make_sampler(config, 2)
    assert isinstance(resumed, optuna.samplers.TPESampler)
    draw = [
        optuna.create_study(sampler=s).ask({"x": FloatDistribution(0, 1)}).params["x"]
        for s in (first, resumed, make_sampler(config, 0))
    ]
    assert draw[0] != draw[1] and draw[0] == draw[2]


def _trainer(value: float, fn: TrainerFn = TrainerFn.FITTING):
    return SimpleNamespace(
        sanity_checking=False,
        callback_metrics={"val/acc": torch.tensor(value)},
        state=SimpleNamespace(fn=fn),
        loggers=[],
        should_stop=False,
        global_step=10,
    )


def _pruning_trial(tmp_path):
    """A study with two finished trials (val/acc 0.8 after epoch 0) and a third one running."""
    study = _study(tmp_path, "pruning")
    for _ in range(2):
        trial = study.ask()
        trial.report(0.8, step=0)
        study.tell(trial, 0.8)
    running = study.ask()
    return study, running.number


@pytest.mark.parametrize(("value", "pruned"), [(0.2, True), (0.9, False)])
def test_pruning_stops_a_bad_trial_and_marks_it(tmp_path, value, pruned):
    study, number = _pruning_trial(tmp_path)
    callback = pruning_callback(
        storage=f"sqlite:///{tmp_path}/optuna.db",
        study_name="pruning",
        trial=number,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    assert isinstance(callback, OptunaPruning)
    trainer = _trainer(value)
    callback.on_validation_end(trainer, SimpleNamespace(current_epoch=0))  # no raise
    assert trainer.should_stop is pruned
    stored = study.trials[number]
    assert stored.intermediate_values == {0: pytest.approx(value)}
    assert (PRUNED_ATTR in stored.user_attrs) is pruned
    # After fit, run() validates the best checkpoint: not an epoch, nothing reported.
    callback.on_validation_end(
        _trainer(0.0, TrainerFn.VALIDATING), SimpleNamespace(current_epoch=1)
    )
    assert study.trials[number].intermediate_values.keys() == {0}


def test_sweeper_records_a_pruned_job_as_pruned(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    study, number = _pruning_trial(tmp_path)
    trial = optuna.Trial(study, study.trials[number]._trial_id)
    trial.report(0.2, step=0)
    trial.set_user_attr(PRUNED_ATTR, 0)
    ret = JobReturn(status=JobStatus.COMPLETED, _return_value=0.2)
    assert _impl._tell(study, trial, ret) is None
    assert study.trials[number].state == TrialState.PRUNED


def test_without_a_trial_the_callback_does_nothing():
    callback = pruning_callback(storage="sqlite:///unused.db", study_name="x", trial=None)
    assert type(callback) is Callback
