"""End to end on real photos: import, train on a subset, bundle, evaluate, predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fisheye.bundle import load_bundle
from fisheye.data.manifest import read_manifest

pytestmark = pytest.mark.integration

FISHEYE = str(Path(sys.executable).parent / "fisheye")


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FISHEYE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_import_train_evaluate_predict_on_real_photos(tmp_path, shared_data):
    fish = shared_data / "fish-256"
    imported = _run("data", "import", str(fish), "--out", str(tmp_path / "data"), "--resplit")
    assert imported.returncode == 0, imported.stderr
    manifest = tmp_path / "data" / "manifest.csv"
    rows = read_manifest(manifest)
    assert len(rows) == 5994
    # --resplit: each near-duplicate group sits wholly on one side of the split.
    sides: dict[str, set[str]] = {}
    for row in rows:
        sides.setdefault(row.group, set()).add(row.split)
    assert all(len(s) == 1 for s in sides.values())

    trained = _run(
        "train",
        f"data.root={manifest}",
        "model=small_cnn",
        "model.preprocessing.input_size=64",
        "data.limit_per_class=12",
        "data.num_workers=0",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    bundle_dir = tmp_path / "run" / "bundle"
    bundle = load_bundle(bundle_dir)
    assert bundle.classes == sorted(p.name for p in (fish / "train").iterdir())
    assert bundle.meta["data"]["counts"]["train"] == 9 * 12

    val_photos = tmp_path / "val-subset"
    for cls_dir in sorted((fish / "val").iterdir()):
        (val_photos / cls_dir.name).mkdir(parents=True)
        for photo in sorted(cls_dir.glob("*.jpg"))[:5]:
            (val_photos / cls_dir.name / photo.name).symlink_to(photo)
    evaluated = _run(
        "evaluate",
        "--data",
        str(val_photos),
        "--model",
        str(bundle_dir),
        "--out",
        str(tmp_path / "eval"),
        "--json",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["n_images"] == 45
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()

    predicted = _run("predict", str(val_photos), "--model", str(bundle_dir), "--format", "json")
    assert predicted.returncode == 0, predicted.stderr
    results = json.loads(predicted.stdout)
    assert len(results) == 45
    assert all(r["label"] in bundle.classes for r in results)
