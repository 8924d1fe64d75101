"""`fisheye train hparams_search=optuna`: a 3-trial sweep on synthetic photos, interrupted and
resumed, one trial pruned, every trial an MLflow run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FISHEYE = str(Path(sys.executable).parent / "fisheye")


def _sweep(tmp_path: Path, data: Path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WANDB_"))}
    return subprocess.run(
        [
            FISHEYE,
            "train",
            "hparams_search=optuna",
            "experiment=smoke",
            f"data.root={data}",
            f"paths.log_dir={tmp_path}/runs",  # optuna.db and mlflow.db go here
            f"hydra.sweep.dir={tmp_path}/{name}",
            "trainer.enable_progress_bar=false",
            "drift.enabled=false",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def test_sweep_resumes_prunes_and_tracks_every_trial(tmp_path, synthetic_dataset):
    import mlflow
    import optuna

    first = _sweep(tmp_path, synthetic_dataset, "sweep1", "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    # The same command with n_trials=3 continues the study: one more trial, not three.
    # This time a pruner that stops any trial below val/acc 1.01 (all of them) at its first
    # epoch, so the new trial is pruned.
    second = _sweep(
        tmp_path,
        synthetic_dataset,
        "sweep2",
        "hydra.sweeper.n_trials=3",
        "~callbacks.optuna_pruning.pruner",
        "+callbacks.optuna_pruning.pruner={_target_:optuna.pruners.ThresholdPruner,lower:1.01}",
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "2 of 3 trials done, 1 to run" in second.stdout + second.stderr

    study = optuna.load_study(study_name="fisheye", storage=f"sqlite:///{tmp_path}/runs/optuna.db")
    trials = study.trials
    assert [t.state for t in trials] == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
    ]
    for t in trials[:2]:  # experiment=smoke: 2 epochs, val/acc reported after each
        assert sorted(t.intermediate_values) == [0, 1]
        # The job returns val/acc of its best checkpoint: the best epoch's value.
        assert t.value == pytest.approx(max(t.intermediate_values.values()))
    pruned = trials[2]
    assert sorted(pruned.intermediate_values) == [0]
    assert pruned.user_attrs["pruned_at_epoch"] == 0
    # The resumed sampler did not repeat the first sweep's draws.
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3

    # Each trial is a job folder named by its trial number, with its own bundle.
    for folder in (tmp_path / "sweep1" / "0", tmp_path / "sweep1" / "1", tmp_path / "sweep2" / "2"):
        assert (folder / "bundle" / "bundle.json").is_file(), folder
    results = yaml.safe_load((tmp_path / "sweep2" / "optimization_results.yaml").read_text())
    assert results["trials"] == {"complete": 2, "pruned": 1}
    assert results["best_value"] == pytest.approx(max(t.value for t in trials[:2]))

    # Every trial is an MLflow run that ended cleanly, the pruned one too.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/runs/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["fisheye"], output_format="list")
    by_trial = {r.data.params["optuna_trial"]: r for r in runs}
    assert sorted(by_trial) == ["0", "1", "2"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert by_trial["2"].data.metrics["optuna_pruned_at_epoch"] == 0
    assert "optuna_pruned_at_epoch" not in by_trial["0"].data.metrics
    assert float(by_trial["0"].data.params["model.lr"]) == pytest.approx(
        trials[0].params["model.lr"]
    )
