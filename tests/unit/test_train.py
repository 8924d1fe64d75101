"""Training smoke tests on a synthetic set: fit, bundle, resume after a kill, DDP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from fisheye.bundle import load_bundle
from fisheye.data.datamodule import FishDataModule
from fisheye.data.images import decode_image
from fisheye.data.manifest import TRAINING_MANIFEST_NAME, read_training_manifest
from fisheye.inference.calibration import rescale
from fisheye.inference.predictor import Predictor
from fisheye.inference.torch_backend import TorchBackend
from fisheye.training.train import run


def _cfg(tmp_path: Path, data_root: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="fisheye.conf", version_base="1.3"):
        cfg = compose(
            config_name="train",
            return_hydra_config=True,
            overrides=[
                "experiment=smoke",
                f"data.root={data_root}",
                f"paths.log_dir={tmp_path}",
                f"hydra.run.dir={tmp_path}/run",
                "callbacks=none",
                "trainer.enable_progress_bar=false",
                *overrides,
            ],
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra  # a real Hydra run does not pass its own section to the task
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.bundle.dir = str(tmp_path / "run" / "bundle")
    return cfg


def test_train_writes_a_loadable_bundle(tmp_path, synthetic_dataset):
    cfg = _cfg(tmp_path, synthetic_dataset, "trainer.max_epochs=3")
    result = run(cfg)
    bundle = load_bundle(Path(result["bundle"]))
    meta = bundle.meta
    assert meta["classes"] == sorted(p.name for p in synthetic_dataset.iterdir() if p.is_dir())
    assert meta["architecture"]["name"] == "small_cnn"
    assert len(meta["data"]["manifest_hash"]) == 64
    assert "val_acc" in meta["metrics"] and 0.0 <= meta["metrics"]["val_acc"] <= 1.0
    assert meta["training"]["config"]["model"]["arch"] == "small_cnn"
    # A few epochs on separable synthetic classes must beat chance (1/3) clearly.
    assert meta["metrics"]["val_acc"] > 0.6
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file()


def test_bundle_records_its_photos_calibration_and_grouped_test(tmp_path, synthetic_dataset):
    cfg = _cfg(tmp_path, synthetic_dataset, "trainer.max_epochs=2", "data.test_fraction=0.25")
    result = run(cfg)
    bundle = load_bundle(Path(result["bundle"]))
    meta = bundle.meta
    manifest = read_training_manifest(bundle.read_file(TRAINING_MANIFEST_NAME).decode())
    assert (
        meta["data"]["training_manifest_sha256"]
        == (meta["files"][TRAINING_MANIFEST_NAME]["sha256"])
    )
    photos = sorted(
        p.relative_to(synthetic_dataset).as_posix()
        for p in synthetic_dataset.glob("*/*")
        if p.is_file()
    )
    assert sorted(r.path for r in manifest) == photos
    splits: dict[str, set[str]] = {}
    for r in manifest:
        splits.setdefault(r.group, set()).add(r.split)
    assert {s for v in splits.values() for s in v} == {"train", "val", "test"}
    assert all(len(v) == 1 for v in splits.values())  # no group spans two splits
    assert bundle.temperature > 0 and meta["calibration"]["fitted_on"] == "val"
    metrics = meta["metrics"]
    n_test = sum(r.split == "test" for r in manifest)
    assert metrics["test_photos"] == n_test
    assert metrics["test_acc_ci95_low"] <= metrics["test_acc"] <= metrics["test_acc_ci95_high"]
    assert 0.0 <= metrics["test_ece"] <= 1.0
    # The stored temperature is applied by the backend: probabilities are softmax(z / T).
    eager = Predictor(bundle, backend="torch")
    plain = Predictor(bundle, backend=TorchBackend(bundle.build_model()))
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(
        eager.infer(x).probabilities,
        rescale(plain.infer(x).probabilities, bundle.temperature),
        atol=1e-5,
    )


def test_predictor_sees_the_same_tensors_as_training_eval(tmp_path, synthetic_dataset):
    cfg = _cfg(tmp_path, synthetic_dataset, "trainer.max_epochs=1")
    result = run(cfg)
    predictor = Predictor.from_dir(Path(result["bundle"]))
    dm = FishDataModule(str(synthetic_dataset), preprocessing=predictor.preprocessing.to_dict())
    dm.setup("fit")
    val = dm.dataset("val")
    for i in range(3):
        x_train, _ = val[i]
        x_pred = torch.from_numpy(predictor.prepare(val.rows[i].path))
        assert torch.equal(x_train, x_pred)
        assert torch.equal(
            x_train, torch.from_numpy(predictor.prepare(decode_image(val.rows[i].path)))
        )


def test_resume_from_last_checkpoint(tmp_path, synthetic_dataset):
    from omegaconf import OmegaConf

    cfg = _cfg(tmp_path / "first", synthetic_dataset, "trainer.max_epochs=1")
    with open_dict(cfg):
        cfg.callbacks = OmegaConf.create(
            {
                "model_checkpoint": {
                    "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "dirpath": str(tmp_path / "first" / "ckpt"),
                    "save_last": True,
                    "monitor": "val/acc",
                    "mode": "max",
                }
            }
        )
    run(cfg)
    last = tmp_path / "first" / "ckpt" / "last.ckpt"
    assert last.is_file()
    # The "killed" run stopped after epoch 1; resuming continues to epoch 2, not from scratch.
    cfg2 = _cfg(tmp_path / "second", synthetic_dataset, "trainer.max_epochs=2", f"ckpt_path={last}")
    result = run(cfg2)
    meta = load_bundle(Path(result["bundle"])).meta
    assert meta["training"]["epochs_trained"] == 2


@pytest.mark.slow
def test_killed_cli_run_resumes(tmp_path, synthetic_dataset):
    """A real `fisheye train` process killed mid-run resumes from last.ckpt."""
    fisheye = Path(sys.executable).parent / "fisheye"
    common = [
        str(fisheye),
        "train",
        "experiment=smoke",
        f"data.root={synthetic_dataset}",
        f"hydra.run.dir={tmp_path}/run1",
        "trainer.enable_progress_bar=false",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "trainer.max_epochs=50",
        "~callbacks.early_stopping",
    ]
    proc = subprocess.Popen(common, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "run1" / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 180
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # let the checkpoint write finish, then kill the run mid-training
    finally:
        proc.kill()
        proc.wait()
    assert last.is_file()
    # Continue two epochs past wherever the kill landed: a resume, not a fresh start.
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    target = killed_at + 2
    resumed = subprocess.run(
        [
            *common[:4],
            f"hydra.run.dir={tmp_path}/run2",
            "trainer.enable_progress_bar=false",
            f"trainer.max_epochs={target}",
            f"ckpt_path={last}",
            "drift.enabled=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    meta = json.loads((tmp_path / "run2" / "bundle" / "bundle.json").read_text())
    assert meta["training"]["epochs_trained"] == target
    assert meta["training"]["command"].endswith(f"ckpt_path={last} drift.enabled=false")


@pytest.mark.slow
def test_simulated_ddp_on_cpu(tmp_path, synthetic_dataset):
    """Lightning DDP with two CPU processes (gloo) trains and writes one bundle."""
    cfg = _cfg(tmp_path, synthetic_dataset, "trainer=ddp_sim", "trainer.max_epochs=1")
    result = run(cfg)
    meta = load_bundle(Path(result["bundle"])).meta
    assert meta["training"]["config"]["trainer"]["strategy"] == "ddp_spawn"
    assert set(meta["classes"]) == {p.name for p in synthetic_dataset.iterdir() if p.is_dir()}


def test_partial_finetune_trains_only_the_top_of_the_backbone():
    from torch import nn

    from fisheye.models.classifier import FishClassifier

    module = FishClassifier("small_cnn", 3, pretrained=False, input_size=32)
    params = list(module.net.backbone.parameters())
    module.set_trainable_backbone(0.5)
    flags = [p.requires_grad for p in params]
    assert flags == sorted(flags), "trainable parameters must be the top of the network"
    assert 0 < sum(flags) < len(flags)
    bns = [m for m in module.net.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not bns[0].training and bns[-1].training
    x = torch.randn(4, 3, 32, 32)
    module.net(x).sum().backward()
    assert params[0].grad is None and params[-1].grad is not None
    module.set_trainable_backbone(0.0)
    assert not any(p.requires_grad for p in params)


def test_init_from_a_bundle_starts_from_its_weights_and_refuses_its_train_photos_as_test(
    tmp_path, synthetic_dataset
):
    from safetensors.torch import load

    split = ("data.test_fraction=0.25", "drift.enabled=false")
    first = run(_cfg(tmp_path / "first", synthetic_dataset, "trainer.max_epochs=1", *split))
    source = load_bundle(Path(first["bundle"]))
    # No epoch: the bundle written is the network it started from.
    cfg = _cfg(
        tmp_path / "second", synthetic_dataset, "trainer.max_epochs=0",
        f"init_from={first['bundle']}", *split,
    )  # fmt: skip
    second = load_bundle(Path(run(cfg)["bundle"]))
    started, initial = (
        load(second.read_file("model.safetensors")),
        load(source.read_file("model.safetensors")),
    )
    assert started.keys() == initial.keys()
    assert all(torch.equal(started[k], initial[k]) for k in started)
    assert second.meta["training"]["init_from"]["version"] == source.version

    # Another seed splits differently: the source bundle trained on some of the new test photos.
    leaky = _cfg(
        tmp_path / "third", synthetic_dataset, "seed=7", f"init_from={first['bundle']}", *split
    )
    with pytest.raises(ValueError, match="trained or selected on [0-9]+ photos of this run's test"):
        run(leaky)
