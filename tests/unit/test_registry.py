"""`fisheye registry` on a local MLflow store: register -> list -> promote -> resolve, and a
bundle changed after registration is refused.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from fisheye.bundle import BUNDLE_JSON, WEIGHTS_FILE, load_bundle
from fisheye.cli import app
from fisheye.serving.settings import ServeSettings
from fisheye.tracking import model_registry as registry
from fisheye.tracking.store import (
    SHA256_TAG,
    TrackingError,
    TrackingUnavailableError,
    local_store_uri,
)
from tests.helpers.bundles import make_bundle, rewrite_meta
from tests.helpers.photos import write_photo

runner = CliRunner()
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (creating its tables takes a few seconds)."""
    return local_store_uri(tmp_path_factory.mktemp("mlflow-store"))


@pytest.fixture
def env(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The store and a fresh download cache, for the CLI and for the API."""
    values = {
        "MLFLOW_TRACKING_URI": store,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    yield values


def _cli(env: dict[str, str], *args: str):
    return runner.invoke(app, list(args), env=env)


def _artifact_dir(store: str, version: registry.ModelVersion) -> Path:
    """The registered bundle folder inside the local store's artifacts."""
    run = MlflowClient(store).get_run(version.run_id)
    return Path(run.info.artifact_uri.removeprefix("file://")) / "bundle"


def test_register_list_promote_and_resolve(env, tiny_bundle, tmp_path):
    sha = load_bundle(tiny_bundle).sha256
    result = _cli(env, "registry", "register", str(tiny_bundle), "--name", "fisheye")
    assert result.exit_code == 0, result.output
    assert "registered fisheye version" in result.output and sha[:12] in result.output
    again = _cli(env, "registry", "register", str(tiny_bundle), "--name", "fisheye", "--json")
    assert again.exit_code == 0, again.output
    first = json.loads(again.output)
    assert first["created_now"] is False and first["bundle_sha256"] == sha

    listed = json.loads(_cli(env, "registry", "list", "--json").output)
    (entry,) = [v for v in listed if v["name"] == "fisheye"]
    assert entry["version"] == first["version"] and entry["aliases"] == []
    assert entry["source"] == f"runs:/{entry['run_id']}/bundle"

    promoted = _cli(env, "registry", "promote", "fisheye", str(entry["version"]))
    assert promoted.exit_code == 0, promoted.output
    assert "fisheye@champion -> version" in promoted.output
    table = _cli(env, "registry", "list", "fisheye")
    assert table.exit_code == 0 and "champion" in table.output and sha[:12] in table.output

    resolved = registry.resolve("models:/fisheye@champion")
    assert resolved.sha256 == sha and resolved.version.version == entry["version"]
    assert resolved.path.parent == Path(env["XDG_CACHE_HOME"]) / "fisheye" / "registry"
    assert (
        load_bundle(resolved.path, expected_sha256=sha).classes == load_bundle(tiny_bundle).classes
    )
    by_number = registry.resolve(f"models:/fisheye/{entry['version']}")
    assert by_number.path == resolved.path

    # `fisheye predict --model models:/...` loads the resolved bundle.
    img = write_photo(tmp_path / "p.jpg", 1)
    out = _cli(env, "predict", str(img), "--model", "models:/fisheye@champion", "--format", "json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)[0]["label"] in load_bundle(tiny_bundle).classes


def test_a_bundle_changed_after_registration_is_refused(env, store, tmp_path):
    bundle = make_bundle(tmp_path / "bundle", seed=7, name="tamper-test")
    version, created = registry.register(bundle, "tampered")
    assert created
    stored = _artifact_dir(store, version)
    assert (stored / BUNDLE_JSON).is_file()

    # One weight file modified in the store: its hash no longer matches bundle.json.
    weights = stored / WEIGHTS_FILE
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(registry.RegistryError, match="fails verification"):
        registry.resolve(f"models:/tampered/{version.version}")
    weights.write_bytes(original)

    # A consistent but different bundle (bundle.json and its checksum rewritten) is not the
    # registered one either.
    meta = json.loads((stored / BUNDLE_JSON).read_text())
    meta["classes"][0] = "Not A Fish"
    rewrite_meta(stored, meta)
    with pytest.raises(registry.RegistryError, match="not the bundle that was registered"):
        registry.resolve(f"models:/tampered/{version.version}")
    photo = str(write_photo(tmp_path / "p.jpg", 1))
    result = _cli(env, "predict", photo, "--model", f"models:/tampered/{version.version}")
    assert result.exit_code == 2
    assert "not the bundle that was registered" in result.output
    assert "Traceback" not in result.output
    # Promotion verifies first: a refused bundle gets no alias.
    refused = _cli(env, "registry", "promote", "tampered", str(version.version))
    assert refused.exit_code == 2 and "fails verification" in refused.output
    assert MlflowClient(store).get_registered_model("tampered").aliases == {}


def test_a_run_whose_bundle_is_unreadable_here_is_not_the_source(env, store, tmp_path):
    # A run tagged with the bundle's hash whose artifacts this machine cannot read (logged
    # in a container, say): registration uploads the bundle in a run of its own.
    bundle = make_bundle(tmp_path / "bundle", seed=11, name="elsewhere")
    client = MlflowClient(store)
    run = client.create_run(client.create_experiment("trained-elsewhere"))
    client.set_tag(run.info.run_id, SHA256_TAG, load_bundle(bundle).sha256)
    version, _ = registry.register(bundle, "elsewhere")
    assert version.run_id != run.info.run_id
    assert registry.resolve(f"models:/elsewhere/{version.version}").sha256 == version.bundle_sha256


def test_a_tampered_cache_is_downloaded_again(env, tiny_bundle):
    version, _ = registry.register(tiny_bundle, "fisheye")
    first = registry.resolve(f"models:/fisheye/{version.version}")
    (first.path / WEIGHTS_FILE).write_bytes(b"not the weights")
    again = registry.resolve(f"models:/fisheye/{version.version}")
    assert again.path == first.path
    assert load_bundle(again.path, expected_sha256=first.sha256)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/fisheye@nobody", "no alias 'nobody' of model 'fisheye'"),
        ("models:/nothing/3", "no version 3 of model 'nothing'"),
        ("models:/fisheye", "not a registry URI"),
    ],
)
def test_unknown_names_and_bad_uris_fail_in_one_line(env, tiny_bundle, tmp_path, uri, message):
    registry.register(tiny_bundle, "fisheye")
    result = _cli(env, "predict", str(write_photo(tmp_path / "p.jpg", 1)), "--model", uri)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


def test_a_read_never_creates_a_store(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    with pytest.raises(TrackingError, match="no MLflow store at"):
        registry.list_versions()
    result = runner.invoke(app, ["registry", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "no MLflow store at" in result.output
    assert not missing.parent.exists()


def test_missing_mlflow_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(TrackingUnavailableError, match=r"pip install 'fisheye\[registry\]'"):
        registry.list_versions(tracking_uri="http://127.0.0.1:9")
    img = write_photo(tmp_path / "p.jpg", 1)
    result = runner.invoke(app, ["predict", str(img), "--model", "models:/fisheye@champion"])
    assert result.exit_code == 2
    assert "pip install 'fisheye[registry]'" in result.output


def test_a_local_store_without_full_mlflow_says_what_to_install(monkeypatch, tmp_path):
    # mlflow-skinny alone has no SQL store: only a server.
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    with pytest.raises(TrackingUnavailableError, match=r"pip install 'fisheye\[train\]'"):
        registry.list_versions(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def test_serve_settings_keep_a_registry_uri(monkeypatch, tiny_bundle):
    assert ServeSettings(model="models:/fisheye@champion").model == "models:/fisheye@champion"
    assert ServeSettings(model=str(tiny_bundle)).model == tiny_bundle
    monkeypatch.setenv("FISHEYE_MODEL", "models:/fisheye/2")
    assert ServeSettings().model == "models:/fisheye/2"


def test_a_pinned_hash_must_match_the_registered_bundle(env, tiny_bundle):
    registry.register(tiny_bundle, "fisheye")
    registry.promote("fisheye", registry.list_versions("fisheye")[-1].version, "champion")
    result = runner.invoke(
        app,
        ["serve", "--model", "models:/fisheye@champion", "--port", "1"],
        env={**env, "FISHEYE_MODEL_SHA256": "0" * 64},
    )
    assert result.exit_code == 2
    assert "not the pinned 000000000000" in result.output
