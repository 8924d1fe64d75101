"""Model bundles: one folder with weights, classes, preprocessing, metrics and provenance.

A bundle is `model.safetensors` + `bundle.json` (+ optional exported forms). `bundle.json`
lists the sha256 of every other file, and `bundle.json.sha256` holds bundle.json's own
sha256 (in `sha256sum` format), so that one hash identifies the whole bundle: a user can pin
it (`load_bundle(..., expected_sha256=...)`, `FISHEYE_MODEL_SHA256` for the server). Loading
checks every hash, keeps every listed file inside the bundle folder, and never unpickles.

Every read is bounded and never blocks: a file is read only when it is a regular file (a link
is followed, but a FIFO, a device or a folder is refused before its contents are touched, and
it is opened non-blocking), and only up to a cap: META_MAX_BYTES for bundle.json,
CHECKSUM_MAX_BYTES for its checksum, and the size bundle.json records for a listed file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from safetensors.numpy import save_file

from fisheye import __version__
from fisheye.bundle_files import (
    BundleError,
    hash_bounded,
    read_bounded,
    sha256_file,
)
from fisheye.data.preprocess import Preprocessing
from fisheye.provenance import git_commit, git_dirty

if TYPE_CHECKING:
    from torch import nn

FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
CHECKSUM_FILE = "bundle.json.sha256"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "default"
META_MAX_BYTES = 1 << 20  # bundle.json: classes, metrics and provenance are a few KiB
CHECKSUM_MAX_BYTES = 1 << 10  # bundle.json.sha256: one `sha256sum` line
# A listed file without a recorded size (bundles written by hand): the most that is read.
UNRECORDED_MAX_BYTES = 4 << 30


def _max_bytes(entry: dict[str, Any]) -> int:
    """The most a listed file may hold: the size bundle.json records for it."""
    recorded = entry.get("bytes")
    return recorded if isinstance(recorded, int) else UNRECORDED_MAX_BYTES


def default_bundle_dir() -> Path:
    """The bundle `--model` defaults to: $FISHEYE_MODEL, else the committed models/default."""
    env = os.environ.get("FISHEYE_MODEL")
    return Path(env) if env else DEFAULT_BUNDLE


@dataclass
class Bundle:
    """A bundle whose files all passed their hash check when it was loaded."""

    path: Path
    meta: dict[str, Any]
    sha256: str = ""  # of bundle.json: pins the whole bundle

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.meta["preprocessing"])

    @property
    def architecture(self) -> str:
        return self.meta["architecture"]["name"]

    @property
    def name(self) -> str:
        return self.meta.get("name", self.path.name)

    @property
    def temperature(self) -> float:
        """The softmax temperature every backend applies (1.0 when not calibrated)."""
        return float((self.meta.get("calibration") or {}).get("temperature", 1.0))

    @property
    def version(self) -> str:
        return self.meta.get("version", "unknown")

    def read_file(self, name: str) -> bytes:
        """A listed file's bytes, read once and checked against its sha256 in bundle.json.

        Reading and checking the same bytes means a file swapped after `load_bundle` is
        still refused.
        """
        entry = self.meta["files"].get(name)
        if entry is None:
            raise BundleError(f"the bundle {self.path} does not list a file {name!r}")
        path = self.path / name
        if not path.exists():
            raise BundleError(f"bundle file {path} is missing; re-create it (`fisheye export`)")
        data = read_bounded(path, _max_bytes(entry), "bundle file")
        _check_hash(path, hashlib.sha256(data).hexdigest(), entry)
        return data

    def build_model(self) -> nn.Module:
        """Instantiate the network (random init, no downloads) and load the bundle's weights.

        Needs PyTorch (the `train` extra); the exported backends do not, so it is imported
        here, on use.
        """
        from safetensors.torch import load

        from fisheye.models.backbones import build_model

        arch = self.meta["architecture"]
        model = build_model(arch["name"], pretrained=False, **arch["config"])
        model.load_state_dict(load(self.read_file(WEIGHTS_FILE)))
        return model.eval()


def _file_entry(path: Path, **extra: Any) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, **extra}


class HasStateDict(Protocol):
    """A PyTorch module, or anything else whose `state_dict()` maps names to tensors."""

    def state_dict(self) -> dict[str, Any]: ...


def _to_numpy(tensor: Any) -> np.ndarray:
    """A CPU copy of a torch tensor (or an array) as a contiguous NumPy array."""
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu().numpy()
    return np.ascontiguousarray(tensor)


def _torch_version() -> str | None:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def save_bundle(
    out_dir: Path,
    model: HasStateDict,
    *,
    classes: list[str],
    preprocessing: Preprocessing,
    architecture: str,
    architecture_config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    name: str = "fisheye",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle folder atomically (a crash or full disk never leaves a half bundle)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC).replace(microsecond=0)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        state = {k: _to_numpy(v) for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        weights = _file_entry(tmp / WEIGHTS_FILE)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "version": f"{created:%Y%m%d.%H%M%S}-{weights['sha256'][:8]}",
            "classes": list(classes),
            "preprocessing": preprocessing.to_dict(),
            "architecture": {"name": architecture, "config": dict(architecture_config)},
            "metrics": metrics or {},
            "data": data or {},
            "provenance": {
                "created": created.isoformat(),
                "git_commit": git_commit(),
                "git_dirty": git_dirty(),
                "fisheye_version": __version__,
                "torch_version": _torch_version(),
            },
            "files": {WEIGHTS_FILE: {**weights, "kind": "weights"}},
            **(extra or {}),
        }
        _write_meta(tmp, meta)
        # mkdtemp and safetensors create owner-only files; a bundle is meant to be shared.
        os.chmod(tmp, 0o755)
        for path in tmp.iterdir():
            os.chmod(path, 0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_meta(bundle_dir: Path, meta: dict[str, Any]) -> None:
    """Write bundle.json and its detached checksum (each file replaced atomically)."""
    data = (json.dumps(meta, indent=2) + "\n").encode()
    for name, content in (
        (BUNDLE_JSON, data),
        (CHECKSUM_FILE, f"{hashlib.sha256(data).hexdigest()}  {BUNDLE_JSON}\n".encode()),
    ):
        tmp = bundle_dir / f".{name}.tmp"
        tmp.write_bytes(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, bundle_dir / name)


def _is_plain_name(name: object) -> bool:
    """A file name directly inside the bundle folder (no path, no parent, not hidden)."""
    return (
        isinstance(name, str)
        and name == Path(name).name
        and not name.startswith(".")
        and "\\" not in name
        and name not in (BUNDLE_JSON, CHECKSUM_FILE)
    )


def _check_meta(meta: Any, where: str) -> None:
    if not isinstance(meta, dict):
        raise BundleError(f"{where} is not a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{where} has format_version {version!r}; this FishEye reads {FORMAT_VERSION}"
        )
    for key in ("classes", "preprocessing", "architecture", "files"):
        if key not in meta:
            raise BundleError(f"{where} lacks the required key {key!r}")
    classes = meta["classes"]
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) and c for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise BundleError(f"{where}: `classes` must be a list of distinct, non-empty names")
    files = meta["files"]
    if not isinstance(files, dict) or WEIGHTS_FILE not in files:
        raise BundleError(f"{where}: `files` must list {WEIGHTS_FILE} with its sha256")
    for name, entry in files.items():
        if not _is_plain_name(name):
            raise BundleError(
                f"{where} lists {name!r}: files must be plain names inside the bundle"
            )
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise BundleError(f"{where}: the entry of {name!r} has no sha256")
        size = entry.get("bytes")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise BundleError(f"{where}: the entry of {name!r} has a bad size {size!r}")


def bundle_sha256(bundle_dir: Path) -> str:
    """The sha256 of bundle.json: one hash that pins the whole bundle."""
    return hash_bounded(Path(bundle_dir) / BUNDLE_JSON, META_MAX_BYTES, BUNDLE_JSON)


def read_meta(bundle_dir: Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """Read and check bundle.json against its checksum (and a pinned hash), without weights."""
    return _read_meta(Path(bundle_dir), expected_sha256)[0]


def _read_meta(bundle_dir: Path, expected_sha256: str | None) -> tuple[dict[str, Any], str]:
    """bundle.json, checked, and its sha256 (of the very bytes that were checked)."""
    meta_path = bundle_dir / BUNDLE_JSON
    if not meta_path.exists():
        raise BundleError(
            f"{bundle_dir} is not a FishEye model bundle (no {BUNDLE_JSON}). "
            "Train one with `fisheye train` or use the default models/default."
        )
    data = read_bounded(meta_path, META_MAX_BYTES, BUNDLE_JSON)
    actual = hashlib.sha256(data).hexdigest()
    checksum_path = bundle_dir / CHECKSUM_FILE
    try:
        raw = read_bounded(checksum_path, CHECKSUM_MAX_BYTES, CHECKSUM_FILE)
        recorded = raw.decode("ascii").split()[0]
    except (BundleError, IndexError, UnicodeDecodeError) as exc:
        why = f": {exc}" if isinstance(exc, BundleError) else ""
        raise BundleError(
            f"{bundle_dir} has no readable {CHECKSUM_FILE} (the checksum of {BUNDLE_JSON}){why}"
        ) from None
    if actual != recorded:
        raise BundleError(
            f"{meta_path} does not match {CHECKSUM_FILE} (sha256 {actual[:12]}..., recorded "
            f"{recorded[:12]}...): it was modified or corrupted"
        )
    if expected_sha256 is not None and actual != expected_sha256.strip().lower():
        raise BundleError(
            f"{meta_path} has sha256 {actual[:12]}..., not the pinned {expected_sha256[:12]}...: "
            "this is not the bundle that was asked for"
        )
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{meta_path} is not valid JSON: {exc}") from exc
    _check_meta(meta, str(meta_path))
    return meta, actual


def _check_hash(path: Path, actual: str, entry: dict[str, Any]) -> None:
    expected = str(entry.get("sha256"))
    if actual != expected:
        raise BundleError(
            f"bundle file {path} fails its integrity check (sha256 {actual[:12]}..., "
            f"expected {expected[:12]}...): it was modified or corrupted"
        )


def verify_files(bundle_dir: Path, meta: dict[str, Any], names: list[str] | None = None) -> None:
    """Check the sha256 of the bundle's files (all, or only `names`) against bundle.json."""
    for name, entry in meta["files"].items():
        if names is not None and name not in names:
            continue
        path = Path(bundle_dir) / name
        _check_hash(path, hash_bounded(path, _max_bytes(entry), "bundle file"), entry)


def load_bundle(
    bundle_dir: Path | None = None,
    expected_sha256: str | None = None,
    *,
    check_all_files: bool = True,
) -> Bundle:
    """Load a bundle's description after verifying every file's hash (weights load on use).

    `expected_sha256` pins the bundle: bundle.json must have that sha256. With
    `check_all_files=False` only bundle.json (its checksum and the pin) is checked now, and
    each file when it is read: `Bundle.read_file` hashes the very bytes it hands out, so no
    file is used unchecked, and files that are never read (a server does not read the
    training manifest or the seen-photo descriptors) cost nothing.
    """
    bundle_dir = Path(bundle_dir) if bundle_dir is not None else default_bundle_dir()
    meta, sha256 = _read_meta(bundle_dir, expected_sha256)
    if check_all_files:
        verify_files(bundle_dir, meta)
    return Bundle(path=bundle_dir, meta=meta, sha256=sha256)


def update_meta(bundle_dir: Path, **sections: Any) -> dict[str, Any]:
    """Replace top-level sections of bundle.json (e.g. calibration, metrics); returns it."""
    bundle_dir = Path(bundle_dir)
    meta = read_meta(bundle_dir)
    protected = {"format_version", "classes", "architecture", "files"} & set(sections)
    if protected:
        raise BundleError(f"cannot replace {sorted(protected)}: they describe the weights")
    meta.update(sections)
    _write_meta(bundle_dir, meta)
    return meta


def add_arrays(
    bundle_dir: Path,
    name: str,
    arrays: dict[str, np.ndarray],
    metadata: dict[str, str] | None = None,
    **entry: Any,
) -> dict[str, Any]:
    """Write named arrays into the bundle as a safetensors file and record it (`add_file`)."""
    bundle_dir = Path(bundle_dir)
    tmp = bundle_dir / f".{name}.tmp"
    save_file(arrays, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)  # safetensors writes owner-only files; bundles are shared
    tmp.replace(bundle_dir / name)
    return add_file(bundle_dir, name, **entry)


def add_file(bundle_dir: Path, name: str, **entry: Any) -> dict[str, Any]:
    """Record an extra file (e.g. an exported model) in bundle.json with its hash."""
    bundle_dir = Path(bundle_dir)
    meta = read_meta(bundle_dir)
    if not _is_plain_name(name):
        raise BundleError(f"cannot add {name!r}: bundle files are plain names inside the folder")
    meta["files"][name] = _file_entry(bundle_dir / name, **entry)
    _write_meta(bundle_dir, meta)
    return meta
