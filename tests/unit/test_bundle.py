"""Model bundles: round trip, integrity checks, and no unpickling on load."""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from fisheye.bundle import (
    BUNDLE_JSON,
    CHECKSUM_FILE,
    WEIGHTS_FILE,
    BundleError,
    git_commit,
    git_dirty,
    load_bundle,
    save_bundle,
    sha256_file,
)
from fisheye.data.preprocess import Preprocessing
from fisheye.inference.predictor import Predictor
from fisheye.models.backbones import build_model
from tests.helpers.bundles import TINY_INPUT_SIZE as INPUT_SIZE
from tests.helpers.bundles import rewrite_meta
from tests.helpers.paths import FISH_CLASSES as CLASSES


def _edit_meta(bundle_dir: Path, **changes) -> None:
    meta = json.loads((bundle_dir / BUNDLE_JSON).read_text())
    meta.update(changes)
    rewrite_meta(bundle_dir, meta)


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(1)
    config = {"num_classes": len(CLASSES), "input_size": INPUT_SIZE, "dropout": 0.0}
    model = build_model("small_cnn", **config).eval()
    save_bundle(
        tmp_path / "b",
        model,
        classes=list(CLASSES),
        preprocessing=Preprocessing(input_size=INPUT_SIZE),
        architecture="small_cnn",
        architecture_config=config,
    )
    bundle = load_bundle(tmp_path / "b")
    assert bundle.classes == list(CLASSES)
    assert bundle.preprocessing == Preprocessing(input_size=INPUT_SIZE)
    assert bundle.architecture == "small_cnn"
    x = torch.randn(4, 3, INPUT_SIZE, INPUT_SIZE)
    with torch.inference_mode():
        assert torch.equal(model(x), bundle.build_model()(x))


def test_bundle_holds_only_safetensors_json_and_its_checksum(writable_tiny_bundle: Path) -> None:
    names = sorted(p.name for p in writable_tiny_bundle.iterdir())
    assert names == [BUNDLE_JSON, CHECKSUM_FILE, WEIGHTS_FILE]
    recorded = (writable_tiny_bundle / CHECKSUM_FILE).read_text()
    assert recorded == f"{sha256_file(writable_tiny_bundle / BUNDLE_JSON)}  {BUNDLE_JSON}\n"


def test_tampered_weights_are_refused(writable_tiny_bundle: Path) -> None:
    weights = writable_tiny_bundle / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="integrity"):
        load_bundle(writable_tiny_bundle)
    with pytest.raises(BundleError):
        Predictor.from_dir(writable_tiny_bundle)


def test_tampered_hash_in_bundle_json_is_refused(writable_tiny_bundle: Path) -> None:
    meta = json.loads((writable_tiny_bundle / BUNDLE_JSON).read_text())
    entry = meta["files"][WEIGHTS_FILE]
    entry["sha256"] = ("0" if entry["sha256"][0] != "0" else "1") + entry["sha256"][1:]
    (writable_tiny_bundle / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=f"does not match {CHECKSUM_FILE}"):
        load_bundle(writable_tiny_bundle)
    rewrite_meta(writable_tiny_bundle, meta)  # even with the checksum re-sealed
    with pytest.raises(BundleError, match="integrity"):
        load_bundle(writable_tiny_bundle)


def test_missing_weights_file(writable_tiny_bundle: Path) -> None:
    (writable_tiny_bundle / WEIGHTS_FILE).unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(writable_tiny_bundle)


def test_missing_bundle_json(writable_tiny_bundle: Path) -> None:
    (writable_tiny_bundle / BUNDLE_JSON).unlink()
    with pytest.raises(BundleError, match="not a FishEye model bundle"):
        load_bundle(writable_tiny_bundle)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "does-not-exist")


def test_invalid_json(writable_tiny_bundle: Path) -> None:
    rewrite_meta(writable_tiny_bundle, "{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(writable_tiny_bundle)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_wrong_format_version(writable_tiny_bundle: Path, version) -> None:
    _edit_meta(writable_tiny_bundle, format_version=version)
    with pytest.raises(BundleError, match="format_version"):
        load_bundle(writable_tiny_bundle)


def test_missing_required_key(writable_tiny_bundle: Path) -> None:
    meta = json.loads((writable_tiny_bundle / BUNDLE_JSON).read_text())
    del meta["classes"]
    rewrite_meta(writable_tiny_bundle, meta)
    with pytest.raises(BundleError, match="classes"):
        load_bundle(writable_tiny_bundle)


def test_load_never_unpickles(writable_tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A pickle lying next to the bundle must be ignored, and no unpickling API may be called.
    (writable_tiny_bundle / "model.pt").write_bytes(pickle.dumps({"evil": 1}))
    (writable_tiny_bundle / "model.pkl").write_bytes(pickle.dumps({"evil": 2}))

    def forbidden(*args, **kwargs):
        raise AssertionError("bundle loading must not unpickle")

    for target, name in [
        (torch, "load"),
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
    ]:
        monkeypatch.setattr(target, name, forbidden)

    opened: list[Path] = []
    real_open = builtins.open

    def tracking_open(file, *args, **kwargs):
        if isinstance(file, str | Path):
            opened.append(Path(file))
        return real_open(file, *args, **kwargs)

    real_os_open = os.open

    def tracking_os_open(file, *args, **kwargs):
        if isinstance(file, str | Path):
            opened.append(Path(file))
        return real_os_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", tracking_open)
    monkeypatch.setattr(io, "open", tracking_open)
    monkeypatch.setattr(os, "open", tracking_os_open)  # the bounded bundle reads

    bundle = load_bundle(writable_tiny_bundle)
    bundle.build_model()
    inside = {p.name for p in opened if p.resolve().parent == writable_tiny_bundle.resolve()}
    assert inside, "the tracker saw no file being opened"
    assert inside <= {BUNDLE_JSON, CHECKSUM_FILE, WEIGHTS_FILE}


def test_files_changed_after_loading_are_refused(writable_tiny_bundle: Path) -> None:
    bundle = load_bundle(writable_tiny_bundle)  # verified while intact
    assert bundle.read_file(WEIGHTS_FILE) == (writable_tiny_bundle / WEIGHTS_FILE).read_bytes()
    weights = writable_tiny_bundle / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    # The weights are read and hash-checked on use, not trusted from load time.
    with pytest.raises(BundleError, match="integrity"):
        bundle.read_file(WEIGHTS_FILE)
    with pytest.raises(BundleError, match="integrity"):
        bundle.build_model()
    with pytest.raises(BundleError, match="does not list"):
        bundle.read_file("model.pt")


def test_provenance_says_whether_the_code_differed_from_its_commit(tmp_path: Path) -> None:
    import subprocess

    assert git_commit(tmp_path) is None and git_dirty(tmp_path) is None  # not a repository
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, env=env, capture_output=True)

    git("init", "-q")
    (tmp_path / "train.py").write_text("v1\n")
    git("add", "train.py")
    git("commit", "-qm", "v1")
    assert git_commit(tmp_path) is not None and git_dirty(tmp_path) is False
    (tmp_path / "notes.txt").write_text("untracked files do not count\n")
    assert git_dirty(tmp_path) is False
    (tmp_path / "train.py").write_text("v2\n")
    assert git_dirty(tmp_path) is True
