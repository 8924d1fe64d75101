"""Model bundles: one folder with weights, classes, preprocessing, metrics and provenance.

A bundle is `model.safetensors` + `bundle.json` (+ optional exported forms). Loading checks
the sha256 of every listed file and never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from safetensors.numpy import save_file

from fisheye import __version__
from fisheye.data.preprocess import Preprocessing

if TYPE_CHECKING:
    from torch import nn

FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "default"


class BundleError(RuntimeError):
    """A bundle is missing, malformed, or fails its integrity check."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit(cwd: Path | None = None) -> str | None:
    """The current git commit of the working tree, or None outside a repository."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path.cwd(),
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def default_bundle_dir() -> Path:
    """The bundle `--model` defaults to: $FISHEYE_MODEL, else the committed models/default."""
    env = os.environ.get("FISHEYE_MODEL")
    return Path(env) if env else DEFAULT_BUNDLE


@dataclass
class Bundle:
    """A bundle whose files all passed their hash check when it was loaded."""

    path: Path
    meta: dict[str, Any]

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
        if not path.is_file():
            raise BundleError(f"bundle file {path} is missing; re-create it (`fisheye export`)")
        data = path.read_bytes()
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
                "fisheye_version": __version__,
                "torch_version": _torch_version(),
            },
            "files": {WEIGHTS_FILE: {**weights, "kind": "weights"}},
            **(extra or {}),
        }
        (tmp / BUNDLE_JSON).write_text(json.dumps(meta, indent=2) + "\n")
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


def read_meta(bundle_dir: Path) -> dict[str, Any]:
    """Read and check bundle.json, without loading weights."""
    bundle_dir = Path(bundle_dir)
    meta_path = bundle_dir / BUNDLE_JSON
    if not meta_path.is_file():
        raise BundleError(
            f"{bundle_dir} is not a FishEye model bundle (no {BUNDLE_JSON}). "
            "Train one with `fisheye train` or use the default models/default."
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{meta_path} is not valid JSON: {exc}") from exc
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{meta_path} has format_version {version!r}; this FishEye reads {FORMAT_VERSION}"
        )
    for key in ("classes", "preprocessing", "architecture", "files"):
        if key not in meta:
            raise BundleError(f"{meta_path} lacks the required key {key!r}")
    return meta


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
        if not path.is_file():
            raise BundleError(f"bundle file {path} is missing")
        _check_hash(path, sha256_file(path), entry)


def load_bundle(bundle_dir: Path | None = None) -> Bundle:
    """Load a bundle's description after verifying every file's hash (weights load on use)."""
    bundle_dir = Path(bundle_dir) if bundle_dir is not None else default_bundle_dir()
    meta = read_meta(bundle_dir)
    verify_files(bundle_dir, meta)
    return Bundle(path=bundle_dir, meta=meta)


def add_file(bundle_dir: Path, name: str, **entry: Any) -> dict[str, Any]:
    """Record an extra file (e.g. an exported model) in bundle.json with its hash."""
    bundle_dir = Path(bundle_dir)
    meta = read_meta(bundle_dir)
    meta["files"][name] = _file_entry(bundle_dir / name, **entry)
    tmp = bundle_dir / f".{BUNDLE_JSON}.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, bundle_dir / BUNDLE_JSON)
    return meta
