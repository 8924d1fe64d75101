"""The DVC pipeline (dvc.yaml + params.yaml) end to end on synthetic photos, with real `dvc`.

A copy of the pipeline in a temp git repository, its source set to a synthetic photo set and
its training to a seconds-long recipe, is reproduced once (every stage runs), then again
(every stage is skipped); a variant runs with `dvc exp run -S` and only the stage it
touches reruns; metrics, params and plots are compared; outputs round-trip through the
local remote into a fresh clone.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from fisheye.bundle import load_bundle
from fisheye.data.synthetic import write_synthetic
from tests.helpers.dvc_project import (
    STAGES,
    DvcProject,
    make_pipeline_project,
    offline_env,
    sha256_tree,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The pipeline's parameters for a seconds-long run (the defaults train on the real photos).
FAST_PARAMS = {
    "train.experiment": "smoke",
    "train.max_epochs": 1,
    "train.overrides": "trainer.enable_progress_bar=false logger=csv",
    "export.calibration-size": 16,
    "drift.sample": 64,
    "drift.reference-size": 16,
}
EDGES = {
    ("import", "train"),
    ("import", "evaluate"),
    ("import", "export"),
    ("import", "drift-fit"),
    ("train", "evaluate"),
    ("train", "export"),
    ("export", "drift-fit"),
}
# What the pipeline writes, per stage (paths relative to the project).
OUTPUTS = ("pipeline/data", "pipeline/train", "pipeline/export", "pipeline/model")
EVALUATION = (
    "pipeline/evaluate/metrics.json",
    "pipeline/evaluate/confusion.csv",
    "pipeline/evaluate/per_class.csv",
    "pipeline/evaluate/confusion_matrix.png",
    "pipeline/evaluate/errors.csv",
)


def ran(output: str) -> set[str]:
    """The stages a `dvc repro`/`dvc exp run` output says it ran."""
    return set(re.findall(r"Running stage '([\w-]+)'", output))


def skipped(output: str) -> set[str]:
    """The stages a `dvc repro`/`dvc exp run` output says were up to date."""
    return set(re.findall(r"Stage '([\w-]+)' didn't change, skipping", output))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[DvcProject, str]:
    """The pipeline reproduced once on synthetic photos and committed: (project, repro output)."""
    tmp = tmp_path_factory.mktemp("dvc-pipeline")
    source = write_synthetic(tmp / "photos", per_class=12, classes=3, size=64, variants=3)
    env = offline_env(tmp / "home")
    project = make_pipeline_project(tmp / "project", {"source": str(source), **FAST_PARAMS}, env)
    output = project.dvc("repro", timeout=600)
    project.commit("pipeline run")
    return project, output


def test_dag_has_the_five_stages(pipeline: tuple[DvcProject, str]) -> None:
    project, _ = pipeline
    dot = project.dvc("dag", "--dot")
    assert set(re.findall(r'^"([\w-]+)";$', dot, re.M)) == set(STAGES)
    assert set(re.findall(r'^"([\w-]+)" -> "([\w-]+)";$', dot, re.M)) == EDGES
    ascii_dag = project.dvc("dag")
    assert all(f"| {stage} |" in ascii_dag for stage in STAGES)


def test_repro_runs_every_stage_then_none(pipeline: tuple[DvcProject, str]) -> None:
    project, first = pipeline
    assert ran(first) == set(STAGES), first
    for rel in (*OUTPUTS, *EVALUATION):
        assert (project.root / rel).exists(), f"{rel} missing after dvc repro:\n{first}"

    again = project.dvc("repro")
    assert ran(again) == set() and skipped(again) == set(STAGES), again
    assert "Data and pipelines are up to date." in again
    assert "Data and pipelines are up to date." in project.dvc("status")
    # Nothing the pipeline writes is left for git to track but the evaluation tables.
    assert project.git("status", "--porcelain") == ""


def test_stage_outputs(pipeline: tuple[DvcProject, str]) -> None:
    project, _ = pipeline
    root = project.root
    with open(root / "pipeline/data/manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    assert len(manifest) == 36 and {r["split"] for r in manifest} == {"train", "val", "test"}
    # Photos are copied in, so the data is versioned (and pushed) with the pipeline.
    assert all((root / "pipeline/data" / r["path"]).is_file() for r in manifest)
    # Each stage adds to the bundle it was given: train -> export (int8) -> model (drift).
    kinds = {
        stage: {
            entry["kind"]
            for entry in json.loads((root / f"pipeline/{stage}/bundle.json").read_text())[
                "files"
            ].values()
        }
        for stage in ("train", "export", "model")
    }
    trained_kinds = {"weights", "training_manifest", "seen_descriptors"}
    assert kinds["train"] == trained_kinds
    exported = trained_kinds | {"onnx", "onnx-int8", "host_check"}  # int8's host check
    assert kinds["export"] == exported
    assert kinds["model"] == exported | {"drift_reference"}
    trained = json.loads((root / "pipeline/train/bundle.json").read_text())
    assert trained["data"]["root"] == "pipeline/data/manifest.csv"
    # The finished bundle passes the same checks as any bundle a server loads.
    bundle = load_bundle(root / "pipeline/model")
    assert bundle.classes == [f"synthetic-{c}" for c in ("long", "round", "striped")]
    metrics = json.loads((root / "pipeline/evaluate/metrics.json").read_text())
    assert metrics["data"]["split"] == "test" and metrics["n_images"] == 9
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0
    rows = (root / "pipeline/evaluate/confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 1 + metrics["n_images"]


def test_experiment_reruns_only_what_changed(
    pipeline: tuple[DvcProject, str], tmp_path: Path
) -> None:
    project, _ = pipeline
    # A clone sharing the project's cache, so this test leaves the project as it was.
    clone = DvcProject(tmp_path / "exp", project.env)
    project.run("git", "clone", "-q", str(project.root), str(clone.root))
    clone.dvc("cache", "dir", "--local", str(project.root / ".dvc" / "cache"))
    clone.dvc("checkout")
    assert "Data and pipelines are up to date." in clone.dvc("status")

    output = clone.dvc("exp", "run", "-S", "evaluate.split=all")
    assert ran(output) == {"evaluate"}, output
    assert skipped(output) == set(STAGES) - {"evaluate"}, output

    params = json.loads(clone.dvc("params", "diff", "--json"))
    assert params["params.yaml"] == {"evaluate.split": {"old": "test", "new": "all"}}
    diff = json.loads(clone.dvc("metrics", "diff", "--json"))["pipeline/evaluate/metrics.json"]
    assert diff["n_images"] == {"old": 9, "new": 36, "diff": 27}
    plots = json.loads(clone.dvc("plots", "diff", "--json"))["data"]
    confusion = plots["pipeline/evaluate/confusion.csv"][0]
    assert set(confusion["revisions"]) == {"HEAD", "workspace"}
    values = confusion["content"]["data"]["values"]
    assert sum(v["rev"] == "workspace" for v in values) == 36
    assert sum(v["rev"] == "HEAD" for v in values) == 9
    per_class = plots["pipeline/evaluate/per_class.csv"][0]["content"]["data"]["values"]
    assert {v["class"] for v in per_class} == {
        f"synthetic-{c}" for c in ("long", "round", "striped")
    }


def test_outputs_round_trip_through_the_local_remote(
    pipeline: tuple[DvcProject, str], tmp_path: Path
) -> None:
    project, _ = pipeline
    project.remote("local", str(tmp_path / "remote"))
    assert "pushed" in project.dvc("push")

    clone = DvcProject(tmp_path / "clone", project.env)
    project.run("git", "clone", "-q", str(project.root), str(clone.root))
    clone.remote("local", str(tmp_path / "remote"))
    clone.dvc("pull")
    tracked = [*OUTPUTS, "pipeline/evaluate/confusion_matrix.png", "pipeline/evaluate/errors.csv"]
    before, after = sha256_tree(project.root, tracked), sha256_tree(clone.root, tracked)
    assert after == before and len(after) > 36
    # The clone's pipeline is as up to date as the original: nothing would rerun.
    status = clone.dvc("status")
    assert "Data and pipelines are up to date." in status, status
