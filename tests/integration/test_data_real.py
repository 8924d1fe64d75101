"""The data-in layer on the real photos in ../shared/data (read-only; skipped when absent)."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from fisheye.data.manifest import read_manifest
from fisheye.data.pipelines import import_dataset
from tests.helpers.paths import FISH_CLASSES

pytestmark = pytest.mark.integration


def test_import_fish256_as_presplit_tree(shared_data: Path, tmp_path: Path) -> None:
    report = import_dataset(shared_data / "fish-256", tmp_path / "out")
    assert report.layout == "presplit"
    assert not report.copied and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "manifest.csv"
    ]
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    assert len(rows) == 5994
    assert {r.label for r in rows} == set(FISH_CLASSES)
    assert Counter(r.split for r in rows) == {"train": 5099, "val": 895}
    assert not report.unreadable

    # ~430 source photos (flips and arbitrary rotations, squashed to 256x256).
    sizes = Counter(r.group for r in rows)
    assert 300 <= report.n_groups <= 650, report.n_groups
    assert sorted(sizes.values())[len(sizes) // 2] >= 8  # median group is many copies
    by_group: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        by_group[r.group].add(r.label)
    assert all(len(labels) == 1 for labels in by_group.values())
