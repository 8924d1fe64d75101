"""Near-duplicate grouping recovers rotated/flipped copies of one source picture."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fisheye.data.grouping import (
    FISH_FRAME_ASPECT,
    group_near_duplicates,
    rotation_invariant_descriptor,
)
from fisheye.data.pipelines import load_labelled_folder
from fisheye.data.synthetic import write_synthetic


def _source_of(path: Path) -> str:
    return path.name.rsplit("_v", 1)[0]  # <class>_s<source>


def _check_recovered(root: Path) -> None:
    rows = group_near_duplicates(load_labelled_folder(root))
    by_group: dict[str, set[str]] = defaultdict(set)
    by_source: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        by_group[r.group].add(_source_of(r.path))
        by_source[_source_of(r.path)].add(r.group)
    assert all(len(s) == 1 for s in by_group.values()), "a group mixes source pictures"
    assert all(len(g) == 1 for g in by_source.values()), "a source picture is split"
    labels: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        labels[r.group].add(r.label)
    assert all(len(s) == 1 for s in labels.values())


def test_grouping_recovers_synthetic_sources(synthetic_dataset: Path) -> None:
    _check_recovered(synthetic_dataset)


@pytest.mark.parametrize("seed", [1, 2])
def test_grouping_recovers_more_classes_and_variants(tmp_path: Path, seed: int) -> None:
    root = write_synthetic(tmp_path, per_class=20, classes=6, variants=5, seed=seed)
    _check_recovered(root)


def test_descriptor_ignores_rotation_and_flip() -> None:
    rng = np.random.default_rng(0)
    h = 240
    w = round(h * FISH_FRAME_ASPECT)
    base = Image.fromarray(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)).resize(
        (w, h), Image.Resampling.BICUBIC
    )
    other = Image.fromarray(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)).resize(
        (w, h), Image.Resampling.BICUBIC
    )

    def squash(img: Image.Image) -> Image.Image:
        return img.resize((128, 128), Image.Resampling.BILINEAR)

    d0 = rotation_invariant_descriptor(squash(base))
    turned = base.transpose(Image.Transpose.FLIP_TOP_BOTTOM).rotate(37, Image.Resampling.BILINEAR)
    d1 = rotation_invariant_descriptor(squash(turned))
    d2 = rotation_invariant_descriptor(squash(other))
    assert np.linalg.norm(d0 - d1) < 0.3 * np.linalg.norm(d0 - d2)


def test_empty_and_unreadable_rows(tmp_path: Path) -> None:
    from fisheye.data.manifest import ManifestRow

    assert group_near_duplicates([]) == []
    bad = tmp_path / "x.jpg"
    bad.write_text("not an image")
    good = tmp_path / "y.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    rows = [
        ManifestRow(bad, "A", "", "", 0, 0, ""),
        ManifestRow(good, "A", "", "", 64, 64, ""),
    ]
    out = group_near_duplicates(rows)
    assert out[0].group and out[1].group and out[0].group != out[1].group
