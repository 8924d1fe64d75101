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
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fisheye import __version__
from fisheye.data.transforms import Preprocessing

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
    """A verified, loaded bundle."""

    path: Path
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

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

    def build_model(self) -> torch.nn.Module:
        """Instantiate the network (random init, no downloads) and load the bundle's weights."""
        from fisheye.models.backbones import build_model

        arch = self.meta["architecture"]
        model = build_model(arch["name"], pretrained=False, **arch["config"])
        model.load_state_dict(self.state_dict)
        return model.eval()


def _file_entry(path: Path, **extra: Any) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, **extra}


def save_bundle(
    out_dir: Path,
    model: torch.nn.Module,
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
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
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
                "torch_version": torch.__version__,
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


def verify_files(bundle_dir: Path, meta: dict[str, Any], names: list[str] | None = None) -> None:
    """Check the sha256 of the bundle's files (all, or only `names`) against bundle.json."""
    for name, entry in meta["files"].items():
        if names is not None and name not in names:
            continue
        path = Path(bundle_dir) / name
        if not path.is_file():
            raise BundleError(f"bundle file {path} is missing")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise BundleError(
                f"bundle file {path} fails its integrity check (sha256 {actual[:12]}..., "
                f"expected {entry['sha256'][:12]}...): it was modified or corrupted"
            )


def load_bundle(bundle_dir: Path | None = None) -> Bundle:
    """Load a bundle after verifying every file's hash."""
    bundle_dir = Path(bundle_dir) if bundle_dir is not None else default_bundle_dir()
    meta = read_meta(bundle_dir)
    verify_files(bundle_dir, meta)
    state = load_file(str(bundle_dir / WEIGHTS_FILE))
    return Bundle(path=bundle_dir, meta=meta, state_dict=state)


def add_file(bundle_dir: Path, name: str, **entry: Any) -> dict[str, Any]:
    """Record an extra file (e.g. an exported model) in bundle.json with its hash."""
    bundle_dir = Path(bundle_dir)
    meta = read_meta(bundle_dir)
    meta["files"][name] = _file_entry(bundle_dir / name, **entry)
    tmp = bundle_dir / f".{BUNDLE_JSON}.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, bundle_dir / BUNDLE_JSON)
    return meta
