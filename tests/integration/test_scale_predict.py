"""Batch prediction beyond one process: Ray Data on a real local Ray, photos in S3 (moto)
and in Google Cloud Storage (gcp-storage-emulator).

A local Ray (2 CPUs, no dashboard) and moto's S3 server on 127.0.0.1 are started once for
the module and stopped at its end. S3 is reached through the standard AWS variables
(dummy keys, AWS_ENDPOINT_URL), exactly as a user points FishEye at a real bucket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fisheye.cli import app
from fisheye.data.manifest import manifest_hash, read_manifest
from fisheye.inference.results import read_results
from tests.helpers.emulators import Emulator, gcs_emulator, moto_s3
from tests.helpers.photos import write_bad_files
from tests.helpers.server import fisheye_command

ray = pytest.importorskip("ray", reason="the Ray tests need the scale extra (ray[data])")
s3fs = pytest.importorskip("s3fs", reason="the S3 tests need the scale extra (s3fs)")

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

BUCKET = "fisheye-photos"
runner = CliRunner()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """moto's S3 server, with the AWS variables pointing at it for this module."""
    with (
        moto_s3(tmp_path_factory.mktemp("moto-logs"), BUCKET) as emulator,
        pytest.MonkeyPatch.context() as env,
    ):
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            env.delenv(key)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL", emulator.url)
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        s3fs.S3FileSystem.clear_instance_cache()
        yield emulator


@pytest.fixture(scope="module")
def cluster(s3: Emulator) -> Iterator[None]:
    """A local Ray; started after the AWS variables are set, so its workers see them too."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """A copy of the synthetic photos (regular files only) plus unreadable files."""
    root = tmp_path_factory.mktemp("scale-photos")
    shutil.copytree(synthetic_dataset, root / "set")
    bad = root / "bad"
    write_bad_files(bad)
    return root


def _inputs(photos: Path) -> list[str]:
    return [str(photos / "set"), str(photos / "bad")]


def _predict(*args: str) -> object:
    return runner.invoke(app, ["predict", *args], env=ENV)


def _labels(out: str | Path, strip: str = "") -> dict[str, tuple]:
    rows = list(read_results(out))
    counts = Counter(r["path"] for r in rows)
    assert set(counts.values()) == {1}, "a photo was written twice"
    return {r["path"].removeprefix(strip): (r["label"], bool(r["error"])) for r in rows}


@pytest.fixture(scope="module")
def local_labels(photos: Path, synthetic_bundle: Path, tmp_path_factory) -> dict[str, tuple]:
    out = tmp_path_factory.mktemp("local-engine") / "local.csv"
    result = _predict(*_inputs(photos), "-m", str(synthetic_bundle), "--out", str(out))
    assert result.exit_code == 1, result.output  # the bad files
    return _labels(out)


@pytest.mark.parametrize("actors", [1, 2])
def test_ray_engine_gives_the_labels_of_the_local_engine(
    cluster, photos: Path, synthetic_bundle: Path, local_labels, tmp_path: Path, actors: int
) -> None:
    out = tmp_path / "ray.parquet"
    args = [*_inputs(photos), "-m", str(synthetic_bundle), "--out", str(out)]
    result = _predict(*args, "--engine", "ray", "--actors", str(actors), "--batch-size", "8")
    assert result.exit_code == 1, result.output
    labels = _labels(out)
    assert labels == local_labels
    assert sum(err for _, err in labels.values()) == 3  # per-file error rows kept


def test_ray_engine_resumes_what_it_began(
    cluster, photos: Path, synthetic_bundle: Path, local_labels, tmp_path: Path
) -> None:
    out = tmp_path / "ray.jsonl"
    first = sorted(p for p in local_labels if "/set/" in p)[:10]
    done = _predict(*first, "-m", str(synthetic_bundle), "--out", str(out), "--engine", "ray")
    assert done.exit_code == 0, done.output
    args = [*_inputs(photos), "-m", str(synthetic_bundle), "--out", str(out), "--engine", "ray"]
    resumed = _predict(*args, "--resume")
    assert "(10 already there)" in resumed.stderr, resumed.output
    assert _labels(out) == local_labels


def _upload_survey(
    fs, scheme: str, photos: Path, local_labels: dict[str, tuple]
) -> tuple[list[str], dict[str, tuple]]:
    """Copy the photos to BUCKET/survey; the input URLs and the labels expected for them."""
    fs.put(str(photos / "set") + "/", f"{BUCKET}/survey/set/", recursive=True)
    fs.put(str(photos / "bad") + "/", f"{BUCKET}/survey/bad/", recursive=True)
    inputs = [f"{scheme}://{BUCKET}/survey/set", f"{scheme}://{BUCKET}/survey/bad"]
    return inputs, {k.removeprefix(str(photos)): v for k, v in local_labels.items()}


def test_photos_and_results_in_s3(
    s3: Emulator, cluster, photos: Path, synthetic_bundle: Path, local_labels
) -> None:
    fs = s3fs.S3FileSystem()
    inputs, expected = _upload_survey(fs, "s3", photos, local_labels)
    strip = f"s3://{BUCKET}/survey"
    model = ["-m", str(synthetic_bundle)]

    local_out = f"s3://{BUCKET}/results/local.jsonl"
    result = _predict(*inputs, *model, "--out", local_out, "--rows-per-part", "16")
    assert result.exit_code == 1, result.output
    assert _labels(local_out, strip) == expected
    assert len(fs.ls(f"{BUCKET}/results/local.jsonl")) == -(-len(expected) // 16)

    ray_out = f"s3://{BUCKET}/results/ray.parquet"
    result = _predict(*inputs, *model, "--out", ray_out, "--engine", "ray", "--actors", "2")
    assert result.exit_code == 1, result.output
    assert _labels(ray_out, strip) == expected

    again = _predict(*inputs, *model, "--out", ray_out, "--resume")
    assert again.exit_code == 0 and f"({len(expected)} already there)" in again.stderr
    missing = _predict(f"s3://{BUCKET}/no-such-survey", *model, "--out", local_out)
    assert missing.exit_code == 2 and "no such object or prefix" in missing.stderr


def test_import_and_train_from_s3(s3: Emulator, synthetic_dataset: Path, tmp_path: Path) -> None:
    fs = s3fs.S3FileSystem()
    fs.put(str(synthetic_dataset) + "/", f"{BUCKET}/labelled/", recursive=True)
    dataset = tmp_path / "dataset"
    result = runner.invoke(
        app, ["data", "import", f"s3://{BUCKET}/labelled", "--out", str(dataset)], env=ENV
    )
    assert result.exit_code == 0, result.output
    rows = read_manifest(dataset / "manifest.csv")
    local = [p for p in synthetic_dataset.rglob("*") if p.suffix in (".png", ".jpg")]
    assert len(rows) == len(local)
    assert all(str(r.path).startswith(f"s3://{BUCKET}/labelled/") for r in rows)
    assert {r.split for r in rows} == {"train", "val"} and all(r.group for r in rows)

    # Training reads the photos from S3 through the manifest.
    run_dir = tmp_path / "run"
    train = subprocess.run(
        fisheye_command(
            "train",
            "experiment=smoke",
            f"data.root={dataset / 'manifest.csv'}",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "logger=csv",
            "drift.enabled=false",
            f"hydra.run.dir={run_dir}",
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    meta = json.loads((run_dir / "bundle" / "bundle.json").read_text())
    assert sum(meta["data"]["counts"].values()) == len(rows)
    assert meta["data"]["manifest_hash"] == manifest_hash(rows)

    missing = runner.invoke(
        app, ["data", "import", f"s3://{BUCKET}/nothing-here", "--out", str(tmp_path / "x")]
    )
    assert missing.exit_code == 2 and "no such object-storage prefix" in missing.stderr


def test_photos_and_results_in_gcs(
    photos: Path, synthetic_bundle: Path, local_labels, tmp_path: Path
) -> None:
    gcsfs = pytest.importorskip("gcsfs", reason="the GCS test needs the scale extra (gcsfs)")
    with (
        gcs_emulator(tmp_path, BUCKET) as emulator,
        pytest.MonkeyPatch.context() as env,
    ):
        env.setenv("STORAGE_EMULATOR_HOST", emulator.url)
        gcsfs.GCSFileSystem.clear_instance_cache()
        inputs, expected = _upload_survey(gcsfs.GCSFileSystem(), "gs", photos, local_labels)
        out = f"gs://{BUCKET}/results/local.jsonl"
        model = ["-m", str(synthetic_bundle)]

        result = _predict(*inputs, *model, "--out", out, "--rows-per-part", "16")
        assert result.exit_code == 1, result.output  # the bad files
        assert _labels(out, f"gs://{BUCKET}/survey") == expected
        again = _predict(*inputs, *model, "--out", out, "--resume")
        assert again.exit_code == 0 and f"({len(expected)} already there)" in again.stderr
        gcsfs.GCSFileSystem.clear_instance_cache()
