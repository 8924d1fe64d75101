"""Where things are: the repository, the real photos in ../shared/data, the default model.

Also what the real photos are: their nine classes, `FISH_CLASSES`. Tests that need a photo set
or a model that may be absent (a clone outside the FishEye workspace has neither) skip with
the reason through `require_*` and `val_photos`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FISH_256 = SHARED_DATA / "fish-256"
VAL = FISH_256 / "val"
OOD_PHOTOS = SHARED_DATA / "web-fish-ood"  # web photos of other fish, for OOD checks
DEFAULT_MODEL = REPO_ROOT / "models" / "default"
DEPLOY = REPO_ROOT / "deploy"

# The classes of the real photos (fish-256), in the sorted order bundles list them.
FISH_CLASSES: tuple[str, ...] = (
    "Black Sea Sprat",
    "Gilt-Head Bream",
    "Hourse Mackerel",
    "Red Mullet",
    "Red Sea Bream",
    "Sea Bass",
    "Shrimp",
    "Striped Red Mullet",
    "Trout",
)


def require_shared_data() -> Path:
    """The real photos (../shared/data, read-only), or skip the test with the reason."""
    if not FISH_256.is_dir():
        pytest.skip(
            f"real photos not found at {SHARED_DATA} (a clone outside the FishEye workspace "
            "does not have them)"
        )
    return SHARED_DATA


def require_default_model() -> Path:
    """The committed default bundle, or skip the test with the reason."""
    if not (DEFAULT_MODEL / "bundle.json").is_file():
        pytest.skip(f"the default model is not at {DEFAULT_MODEL} yet (models/default)")
    return DEFAULT_MODEL


def val_photos(per_class: int = 1) -> list[tuple[str, Path]]:
    """(class, path) for the first `per_class` validation photos of each class; skip if absent."""
    if not VAL.is_dir():
        pytest.skip(f"real photos not found at {VAL} (they live in ../shared/data)")
    out = []
    for folder in sorted(p for p in VAL.iterdir() if p.is_dir()):
        out += [(folder.name, p) for p in sorted(folder.glob("*.jpg"))[:per_class]]
    if not out:
        pytest.skip(f"no photos under {VAL}")
    return out
