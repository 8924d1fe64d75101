"""Bundle verification: classes vs model outputs, plain file names, the checksum, the pin."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

from fisheye.bundle import (
    BUNDLE_JSON,
    CHECKSUM_FILE,
    WEIGHTS_FILE,
    BundleError,
    bundle_sha256,
    load_bundle,
    read_meta,
    sha256_file,
)
from fisheye.monitoring.loading import load_model
from tests.helpers.bundles import rewrite_meta
from tests.helpers.paths import FISH_CLASSES


def _meta(bundle_dir: Path) -> dict:
    return json.loads((bundle_dir / BUNDLE_JSON).read_text())


def _recorded_checksum(bundle_dir: Path) -> str:
    return (bundle_dir / CHECKSUM_FILE).read_text().split()[0]


@pytest.mark.parametrize(
    "classes",
    [FISH_CLASSES[:-1], (*FISH_CLASSES, "Goldfish")],
    ids=["one-class-fewer", "one-class-more"],
)
def test_classes_that_do_not_fit_the_model_are_refused(
    writable_tiny_bundle: Path, classes: tuple[str, ...]
) -> None:
    meta = _meta(writable_tiny_bundle)
    meta["classes"] = list(classes)
    rewrite_meta(writable_tiny_bundle, meta)  # re-sealed: only verify() can catch it
    load_bundle(writable_tiny_bundle)  # the files themselves are intact
    expected = (
        f"the model gives {len(FISH_CLASSES)} class scores but bundle.json lists "
        f"{len(classes)} classes"
    )
    with pytest.raises(BundleError, match=expected):
        load_model(writable_tiny_bundle, backend="torch", monitoring=None)


def test_the_tiny_bundle_itself_passes_verification(tiny_bundle: Path) -> None:
    predictor, _ = load_model(tiny_bundle, backend="torch", monitoring=None)
    assert predictor.classes == list(FISH_CLASSES)


def _escape_target(bundle_dir: Path, name: str) -> Path:
    """Where the entry `name` points if it is followed from the bundle folder."""
    return bundle_dir / name  # an absolute name replaces the folder: /etc/passwd


@pytest.mark.parametrize(
    "name",
    ["../model.safetensors", "/etc/passwd", "sub/x", "sub/../x", "./x", ".hidden", "a\\b"],
)
def test_file_entries_must_be_plain_names(writable_tiny_bundle: Path, name: str) -> None:
    # Where possible the entry names a real file with the right hash, so that only the
    # name check can refuse it.
    target = _escape_target(writable_tiny_bundle, name)
    if not target.is_file() and not target.is_absolute():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(writable_tiny_bundle / WEIGHTS_FILE, target)
    digest = sha256_file(target) if target.is_file() else "0" * 64
    meta = _meta(writable_tiny_bundle)
    meta["files"][name] = {"sha256": digest, "bytes": 1}
    rewrite_meta(writable_tiny_bundle, meta)
    with pytest.raises(BundleError, match="plain names inside the bundle") as info:
        load_bundle(writable_tiny_bundle)
    assert repr(name) in str(info.value)
    with pytest.raises(BundleError, match="plain names"):
        load_model(writable_tiny_bundle, backend="torch", monitoring=None)


@pytest.mark.parametrize("name", [BUNDLE_JSON, CHECKSUM_FILE])
def test_file_entries_cannot_list_the_bundle_description(
    writable_tiny_bundle: Path, name: str
) -> None:
    meta = _meta(writable_tiny_bundle)
    meta["files"][name] = {"sha256": "0" * 64, "bytes": 1}
    rewrite_meta(writable_tiny_bundle, meta)
    with pytest.raises(BundleError, match="plain names"):
        load_bundle(writable_tiny_bundle)


def test_bundle_json_edited_without_resealing_is_refused(writable_tiny_bundle: Path) -> None:
    meta = _meta(writable_tiny_bundle)
    meta["name"] = "someone-else"
    (writable_tiny_bundle / BUNDLE_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    for load in (
        lambda: load_bundle(writable_tiny_bundle),
        lambda: read_meta(writable_tiny_bundle),
        lambda: load_model(writable_tiny_bundle, backend="torch", monitoring=None),
    ):
        with pytest.raises(BundleError, match=f"does not match {CHECKSUM_FILE}"):
            load()


@pytest.mark.parametrize("damage", ["missing", "empty", "not-utf8"])
def test_a_missing_or_unreadable_checksum_is_refused(
    writable_tiny_bundle: Path, damage: str
) -> None:
    checksum = writable_tiny_bundle / CHECKSUM_FILE
    if damage == "missing":
        checksum.unlink()
    elif damage == "empty":
        checksum.write_text("")
    else:
        checksum.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(BundleError, match=f"no readable {CHECKSUM_FILE}"):
        load_bundle(writable_tiny_bundle)
    with pytest.raises(BundleError, match=CHECKSUM_FILE):
        load_model(writable_tiny_bundle, backend="torch", monitoring=None)


def test_a_checksum_of_another_bundle_json_is_refused(writable_tiny_bundle: Path) -> None:
    (writable_tiny_bundle / CHECKSUM_FILE).write_text(f"{'ab' * 32}  {BUNDLE_JSON}\n")
    with pytest.raises(BundleError, match=f"does not match {CHECKSUM_FILE}"):
        load_bundle(writable_tiny_bundle)


def test_bundle_sha256_is_the_sealed_hash_of_bundle_json(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    digest = hashlib.sha256((tiny_bundle / BUNDLE_JSON).read_bytes()).hexdigest()
    assert bundle.sha256 == _recorded_checksum(tiny_bundle) == digest == bundle_sha256(tiny_bundle)
    assert (tiny_bundle / CHECKSUM_FILE).read_text() == f"{digest}  {BUNDLE_JSON}\n"


def test_the_right_pin_loads(tiny_bundle: Path) -> None:
    pin = _recorded_checksum(tiny_bundle)
    assert load_bundle(tiny_bundle, expected_sha256=pin).sha256 == pin
    # As pasted from `sha256sum` output or a config file: case and spaces do not matter.
    assert load_bundle(tiny_bundle, expected_sha256=f" {pin.upper()}\n").sha256 == pin
    predictor, _ = load_model(tiny_bundle, backend="torch", monitoring=None, expected_sha256=pin)
    assert predictor.bundle.sha256 == pin


def test_a_wrong_pin_is_refused(tiny_bundle: Path) -> None:
    pin = _recorded_checksum(tiny_bundle)
    wrong = ("0" if pin[0] != "0" else "1") + pin[1:]
    for load in (
        lambda: load_bundle(tiny_bundle, expected_sha256=wrong),
        lambda: read_meta(tiny_bundle, wrong),
        lambda: load_model(tiny_bundle, backend="torch", monitoring=None, expected_sha256=wrong),
    ):
        with pytest.raises(BundleError, match="not the pinned"):
            load()


def test_a_resealed_edit_passes_the_checksum_but_not_the_pin(writable_tiny_bundle: Path) -> None:
    """Re-sealing makes an edited bundle self-consistent; the pin still tells it apart."""
    pin = _recorded_checksum(writable_tiny_bundle)
    meta = _meta(writable_tiny_bundle)
    meta["metrics"] = {"accuracy": 0.99}  # a flattering edit
    rewrite_meta(writable_tiny_bundle, meta)
    assert load_bundle(writable_tiny_bundle).meta["metrics"] == {"accuracy": 0.99}
    with pytest.raises(BundleError, match="not the pinned"):
        load_bundle(writable_tiny_bundle, expected_sha256=pin)


def _special(path: Path, kind: str, tmp_path: Path) -> None:
    """Replace `path` by a file that is not a regular one (or one far too large)."""
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link-to-dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "link-to-fifo":
        os.mkfifo(tmp_path / "elsewhere.fifo")
        path.symlink_to(tmp_path / "elsewhere.fifo")
    elif kind == "folder":
        path.mkdir()
    elif kind == "huge-sparse":
        with open(path, "wb") as f:
            f.truncate(3 << 30)  # 3 GiB of holes: costs no disk, but must not be read
    else:
        raise AssertionError(kind)


KINDS = ["fifo", "link-to-dev-zero", "link-to-fifo", "folder", "huge-sparse"]


def _refused_quickly(call, match: str) -> None:
    """The call raises BundleError at once: it neither blocks on a FIFO nor reads GiBs."""
    result: dict = {}

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["exc"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the bundle read blocked"
    assert isinstance(result.get("exc"), BundleError), result
    assert re.search(match, str(result["exc"])), result["exc"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", [BUNDLE_JSON, CHECKSUM_FILE])
def test_bundle_json_and_its_checksum_are_read_only_as_small_regular_files(
    writable_tiny_bundle: Path, tmp_path: Path, name: str, kind: str
) -> None:
    _special(writable_tiny_bundle / name, kind, tmp_path)
    match = "a FIFO|character device|a folder|more than the"
    _refused_quickly(lambda: read_meta(writable_tiny_bundle), match)
    _refused_quickly(lambda: load_bundle(writable_tiny_bundle, check_all_files=False), match)
    if name == BUNDLE_JSON:
        _refused_quickly(lambda: bundle_sha256(writable_tiny_bundle), match)


@pytest.mark.parametrize("kind", KINDS)
def test_listed_files_are_read_only_as_regular_files_up_to_their_recorded_size(
    writable_tiny_bundle: Path, tmp_path: Path, kind: str
) -> None:
    bundle = load_bundle(writable_tiny_bundle, check_all_files=False)
    _special(writable_tiny_bundle / WEIGHTS_FILE, kind, tmp_path)
    match = "a FIFO|character device|a folder|more than the"
    _refused_quickly(lambda: bundle.read_file(WEIGHTS_FILE), match)
    _refused_quickly(lambda: load_bundle(writable_tiny_bundle), match)


def test_a_listed_file_larger_than_its_recorded_size_is_refused_before_it_is_read(
    writable_tiny_bundle: Path,
) -> None:
    bundle = load_bundle(writable_tiny_bundle, check_all_files=False)
    recorded = bundle.meta["files"][WEIGHTS_FILE]["bytes"]
    with open(writable_tiny_bundle / WEIGHTS_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=f"{recorded + 1} bytes, more than the {recorded}"):
        bundle.read_file(WEIGHTS_FILE)


def test_a_link_to_a_regular_file_with_the_right_bytes_still_loads(
    writable_tiny_bundle: Path, tmp_path: Path
) -> None:
    weights = writable_tiny_bundle / WEIGHTS_FILE
    shutil.move(weights, tmp_path / "weights-elsewhere")
    weights.symlink_to(tmp_path / "weights-elsewhere")
    bundle = load_bundle(writable_tiny_bundle)
    assert bundle.read_file(WEIGHTS_FILE) == (tmp_path / "weights-elsewhere").read_bytes()


def test_a_bad_recorded_size_is_refused(writable_tiny_bundle: Path) -> None:
    meta = _meta(writable_tiny_bundle)
    meta["files"][WEIGHTS_FILE]["bytes"] = -1
    rewrite_meta(writable_tiny_bundle, meta)
    with pytest.raises(BundleError, match="bad size"):
        read_meta(writable_tiny_bundle)
