"""The multi-node training specs, validated offline: Kubeflow PyTorchJob and SLURM sbatch.

Besides the schemas, the training command each spec runs is composed by Hydra (a dry run of
`fisheye train`'s configuration), so a misspelt override fails here, not on a cluster.
"""

from __future__ import annotations

import copy
import os
import stat
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from tests.helpers.cluster_specs import pytorchjob_errors
from tests.helpers.deploy_tools import venv_tool
from tests.helpers.paths import REPO_ROOT

PYTORCHJOB = REPO_ROOT / "deploy" / "kubeflow" / "pytorchjob.yaml"
SBATCH = REPO_ROOT / "deploy" / "slurm" / "train.sbatch"
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())


def _job() -> dict:
    return yaml.safe_load(PYTORCHJOB.read_text())


def _compose(overrides: list[str]):
    """`fisheye train`'s configuration for these overrides (Hydra's own keys left out)."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="fisheye.conf", version_base="1.3"):
        return compose(
            config_name="train", overrides=[o for o in overrides if not o.startswith("hydra.")]
        )


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_pytorchjob_validates(version: str) -> None:
    assert pytorchjob_errors(_job(), version) == []


def test_pytorchjob_validators_catch_errors() -> None:
    job = _job()
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["replica"] = 3
    job["spec"]["runPolicy"]["cleanPodPolicy"] = "Sometimes"
    job["spec"]["pytorchReplicaSpecs"]["Master"] = copy.deepcopy(
        job["spec"]["pytorchReplicaSpecs"]["Master"]
    )
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "imagePullPolicy"
    ] = 3
    errors = "\n".join(pytorchjob_errors(job, K8S_VERSIONS[-1]))
    assert "'replica' was unexpected" in errors
    assert "Sometimes" in errors
    assert "Master.template" in errors and "Worker.template" not in errors


def test_pytorchjob_runs_one_ddp_training_across_its_pods() -> None:
    job = _job()
    replicas = job["spec"]["pytorchReplicaSpecs"]
    nodes = sum(r.get("replicas", 1) for r in replicas.values())
    for role, replica in replicas.items():
        pod = replica["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch", role  # the operator's name for it
        assert container["command"] == ["torchrun", "--no-python", "fisheye", "train"]
        cfg = _compose(container["args"])
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == nodes
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert cfg.trainer.devices == gpus == int(job["spec"]["nprocPerNode"])
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert Path(cfg.data.root).parent.as_posix() in mounts
        run_dir = next(a for a in container["args"] if a.startswith("hydra.run.dir="))
        assert "$(JOB_NAME)" in run_dir  # one run folder per job, the same on every pod
        assert {e["name"] for e in container["env"]} >= {"JOB_NAME"}


def test_sbatch_script_is_valid_bash() -> None:
    assert subprocess.run(["bash", "-n", str(SBATCH)], check=False).returncode == 0
    lint = subprocess.run(
        [str(venv_tool("shellcheck")), str(SBATCH)], capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stdout


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


# A long node list makes scontrol outlive a reader that stops at the first line.
@pytest.mark.parametrize("extra_hosts", [0, 20000])
def test_sbatch_script_starts_one_ddp_training_per_task(tmp_path: Path, extra_hosts: int) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "srun.txt"
    # srun records its arguments and the rendezvous it was given; scontrol expands the list.
    _stub(
        bin_dir,
        "srun",
        f'printf "%s\\n" "$@" > {record}; echo "MASTER=$MASTER_ADDR:$MASTER_PORT" >> {record}',
    )
    _stub(
        bin_dir,
        "scontrol",
        'printf "gpu-node-07\\ngpu-node-08\\ngpu-node-09\\n"; '
        f'seq -f "gpu-node-%g" 10 {9 + extra_hosts}',
    )
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "3",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_CPUS_PER_TASK": "6",
        "SLURM_JOB_NODELIST": "gpu-node-[07-09]",
    }
    run = subprocess.run(
        ["bash", str(SBATCH), "model=small_cnn", "trainer.max_epochs=3"],
        env=env, capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = record.read_text().splitlines()
    assert lines[-1] == "MASTER=gpu-node-07:29500"
    argv = lines[:-1]
    assert argv[:3] == ["--kill-on-bad-exit=1", "fisheye", "train"]
    overrides = argv[3:]
    assert "hydra.run.dir=runs/slurm-4242" in overrides
    cfg = _compose(overrides)
    assert (cfg.trainer.strategy, cfg.trainer.num_nodes, cfg.trainer.devices) == ("ddp", 3, 4)
    assert cfg.data.num_workers == 6 and cfg.model.arch == "small_cnn"
    assert cfg.trainer.max_epochs == 3


def test_sbatch_script_refuses_to_run_outside_slurm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    run = subprocess.run(
        ["bash", str(SBATCH)], env=env, capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert run.returncode != 0 and "run this script with sbatch" in run.stderr
