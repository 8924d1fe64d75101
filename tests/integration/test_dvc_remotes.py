"""DVC remotes: a real push and pull through S3 and GCS emulators on 127.0.0.1.

A project tracks synthetic photos and a model bundle with DVC, pushes them to moto's S3
server and to gcp-storage-emulator (each started and stopped here), and a fresh git clone
pulls them back: every file's sha256 must match. Nothing leaves the machine: dummy
credentials, no cloud metadata service, emulators on 127.0.0.1 (tests/helpers/dvc_project.py).
"""

from __future__ import annotations

import configparser
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from fisheye.data.synthetic import write_synthetic
from tests.helpers.bundles import copy_bundle
from tests.helpers.dvc_project import (
    DvcProject,
    init_repo,
    offline_env,
    require_git,
    sha256_tree,
)
from tests.helpers.emulators import Emulator, gcs_emulator, moto_s3
from tests.helpers.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUCKET = "fisheye-dvc"
TRACKED = ("data/photos", "models/bundle")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, synthetic_bundle: Path) -> DvcProject:
    """A committed DVC project tracking a synthetic photo set and a model bundle."""
    require_git()
    tmp = tmp_path_factory.mktemp("dvc-remotes")
    project = init_repo(tmp / "project", offline_env(tmp / "home"))
    project.dvc("init", "-q")
    write_synthetic(project.root / "data" / "photos", per_class=8, classes=3, size=48, variants=2)
    copy_bundle(synthetic_bundle, project.root / "models" / "bundle")
    project.dvc("add", *TRACKED)
    project.commit("data and model")
    return project


@pytest.fixture(scope="module")
def emulator_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulator-logs")


@pytest.fixture(scope="module")
def s3(emulator_logs: Path) -> Iterator[Emulator]:
    with moto_s3(emulator_logs, BUCKET) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def gcs(emulator_logs: Path) -> Iterator[Emulator]:
    with gcs_emulator(emulator_logs, BUCKET) as emulator:
        yield emulator


def s3_objects(emulator: Emulator) -> list[str]:
    """Keys in the S3 emulator's bucket (ListObjectsV2, unsigned: moto accepts it)."""
    res = httpx.get(f"{emulator.url}/{BUCKET}", params={"list-type": "2"}, trust_env=False)
    res.raise_for_status()
    ns = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
    return [k.text or "" for k in ET.fromstring(res.text).iterfind(".//s3:Key", ns)]


def gcs_objects(emulator: Emulator) -> list[str]:
    """Object names in the GCS emulator's bucket (JSON API)."""
    res = httpx.get(f"{emulator.url}/storage/v1/b/{BUCKET}/o", trust_env=False)
    res.raise_for_status()
    return [item["name"] for item in res.json().get("items", [])]


def round_trip(
    project: DvcProject,
    tmp_path: Path,
    name: str,
    url: str,
    options: dict[str, str],
    objects: Callable[[], list[str]],
) -> None:
    """Push to remote `name`, pull into a fresh clone, and compare every tracked file."""
    project.remote(name, url, options)
    pushed = project.dvc("push", "-r", name)
    stored = objects()
    assert stored and all(key.startswith("store/files/md5/") for key in stored), pushed

    clone = DvcProject(tmp_path / f"clone-{name}", project.env)
    project.run("git", "clone", "-q", str(project.root), str(clone.root))
    assert not (clone.root / "models" / "bundle").exists()  # git holds only the .dvc files
    clone.remote(name, url, options)
    clone.dvc("pull", "-r", name)
    before, after = sha256_tree(project.root, TRACKED), sha256_tree(clone.root, TRACKED)
    assert len(before) >= 24 + 3 and after == before
    status = clone.dvc("status", "-c", "-r", name)
    assert "Cache and remote" in status and "in sync" in status, status


def test_s3_round_trip(project: DvcProject, s3: Emulator, tmp_path: Path) -> None:
    options = {"endpointurl": s3.url, "region": "us-east-1"}
    round_trip(project, tmp_path, "s3", f"s3://{BUCKET}/store", options, lambda: s3_objects(s3))


def test_gcs_round_trip(project: DvcProject, gcs: Emulator, tmp_path: Path) -> None:
    options = {"endpointurl": gcs.url, "allow_anonymous_login": "true"}
    round_trip(project, tmp_path, "gcs", f"gs://{BUCKET}/store", options, lambda: gcs_objects(gcs))


def test_repository_declares_the_three_remotes() -> None:
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / ".dvc" / "config")
    remotes = {
        section.split('"')[1]: config[section]["url"]
        for section in config.sections()
        if section.startswith("'remote")
    }
    assert remotes["s3"].startswith("s3://") and remotes["gcs"].startswith("gs://")
    assert not remotes["local"].startswith(("s3://", "gs://"))
    assert config["core"]["remote"] == "local"
    assert config["core"]["analytics"] == "false" and config["studio"]["offline"] == "true"
