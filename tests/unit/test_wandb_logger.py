"""`logger=wandb`: an offline W&B run holds the metrics, stays off the network, and syncs later."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fisheye.training.wandb_logger import wandb_logger

FISHEYE = str(Path(sys.executable).parent / "fisheye")
WANDB = str(Path(sys.executable).parent / "wandb")


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """W&B offline and quiet, its caches in tmp_path, no credentials; error reporting as shipped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
        WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
        WANDB_DATA_DIR=str(tmp_path / "wandb-data"),
    )
    return env


def _network_tracer(trace: Path) -> list[str]:
    """`strace` recording every connect() of the process tree, or [] where it cannot run."""
    strace = shutil.which("strace")
    if strace is None:
        return []
    cmd = [strace, "-f", "-qq", "-e", "trace=connect", "-o", str(trace)]
    if subprocess.run([*cmd, "true"], capture_output=True, check=False).returncode != 0:
        return []  # no ptrace here (some containers)
    return cmd


def _internet_connects(trace: Path) -> list[str]:
    """connect() calls to anything but the loopback (W&B talks to its own service locally)."""
    lines = trace.read_text().splitlines() if trace.exists() else []
    inet = [line for line in lines if "AF_INET" in line]
    return [line for line in inet if not re.search(r"127\.0\.0\.1|::1|::ffff:127\.", line)]


@pytest.mark.slow
def test_offline_wandb_run_holds_the_metrics_and_stays_offline(tmp_path, synthetic_dataset):
    trace = tmp_path / "connect.trace"
    tracer = _network_tracer(trace)
    run_dir = tmp_path / "run"
    trained = subprocess.run(
        [
            *tracer,
            FISHEYE,
            "train",
            "experiment=smoke",
            "logger=wandb",
            f"data.root={synthetic_dataset}",
            f"paths.log_dir={tmp_path}/runs",
            f"hydra.run.dir={run_dir}",
            "trainer.enable_progress_bar=false",
            "drift.enabled=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_offline_env(tmp_path),
        check=False,
    )
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    if tracer:
        assert _internet_connects(trace) == [], "W&B reached for the network in offline mode"

    # The offline run lives in the run folder: <run>/wandb/offline-run-<time>-<id>/run-<id>.wandb
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, list((run_dir / "wandb").iterdir())
    offline = offline_runs[0]
    assert len(list(offline.glob("run-*.wandb"))) == 1

    # Read it back with W&B's own reader of the .wandb log.
    inspect = [WANDB, "leet", "inspect"]
    env = _offline_env(tmp_path)
    summary = subprocess.run(
        [*inspect, "--summary", "--json", str(offline)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    run = json.loads(summary.stdout)
    assert run["project"] == "fisheye"
    assert run["state"] == "finished"
    assert 0.0 <= run["summary"]["val/acc"] <= 1.0
    records = subprocess.run(
        [*inspect, "--json", str(offline)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    history = [
        r["history"]["item"]
        for r in map(json.loads, records.stdout.splitlines())
        if r.get("type") == "history"
    ]
    epochs = {int(h["epoch"]) for h in history if "val/acc" in h and "epoch" in h}
    assert epochs >= {0, 1}, history  # experiment=smoke trains 2 epochs
    assert any("train/loss" in key for h in history for key in h)

    # `wandb sync` recognises it as a run to upload (--dry-run: nothing is sent).
    synced = subprocess.run(
        [WANDB, "sync", "--dry-run", str(offline)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    assert "Would sync 1 run" in synced.stdout + synced.stderr


def test_offline_logger_turns_wandb_error_reporting_off(monkeypatch, tmp_path):
    """W&B's error reporting looks its server up even offline: an offline logger turns it off."""
    monkeypatch.delenv("WANDB_ERROR_REPORTING", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = wandb_logger(project="fisheye", save_dir=str(tmp_path))
    assert os.environ["WANDB_ERROR_REPORTING"] == "false"
    assert logger._offline  # Lightning's flag: the run starts with mode=offline
    monkeypatch.setenv("WANDB_MODE", "online")
    assert not wandb_logger(project="fisheye", save_dir=str(tmp_path))._offline


def test_missing_wandb_is_one_line_saying_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails
    with pytest.raises(SystemExit) as exc:
        wandb_logger(project="fisheye", save_dir=str(tmp_path))
    message = str(exc.value.code)
    assert "\n" not in message
    assert "pip install 'fisheye[wandb]'" in message


@pytest.mark.slow
def test_fisheye_train_without_wandb_exits_with_that_line(tmp_path, synthetic_dataset):
    """Through Hydra too: one line on stderr, no traceback."""
    blocked = "import sys; sys.modules['wandb'] = None; from fisheye.cli import app; app()"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            blocked,
            "train",
            "experiment=smoke",
            "logger=wandb",
            f"data.root={synthetic_dataset}",
            f"hydra.run.dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_offline_env(tmp_path),
        check=False,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "error: logger=wandb needs the wandb package, which is not installed: "
        "pip install 'fisheye[wandb]'"
    )
