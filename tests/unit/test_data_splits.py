"""Grouped split: no group on two sides, stratified, seeded. Random split: the leaky baseline."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from fisheye.data.manifest import ManifestRow
from fisheye.data.splits import grouped_split, random_split


def _rows(classes: int = 3, groups: int = 20, size: int = 5) -> list[ManifestRow]:
    rows = []
    for c in range(classes):
        for g in range(groups):
            for i in range(size + (g % 3)):
                path = Path(f"/x/c{c}/g{g}_{i}.jpg")
                rows.append(ManifestRow(path, f"class{c}", "", f"{c}{g}{i}", 8, 8, f"c{c}-g{g}"))
    return rows


def _groups_on_one_side(rows: list[ManifestRow]) -> bool:
    sides: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        sides[r.group].add(r.split)
    return all(len(s) == 1 for s in sides.values())


def test_grouped_split_keeps_groups_and_is_stratified() -> None:
    rows = _rows()
    out = grouped_split(rows, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert [r.path for r in out] == [r.path for r in rows]
    assert _groups_on_one_side(out)
    per_class = Counter(r.label for r in rows)
    for label, n in per_class.items():
        counts = Counter(r.split for r in out if r.label == label)
        assert abs(counts["val"] / n - 0.2) < 0.06
        assert abs(counts["test"] / n - 0.1) < 0.06
        assert counts["train"] > 0


def test_grouped_split_is_seeded() -> None:
    rows = _rows()
    a = grouped_split(rows, seed=1)
    assert a == grouped_split(rows, seed=1)
    assert a != grouped_split(rows, seed=2)
    assert {r.split for r in a} == {"train", "val"}


def test_every_class_gets_val_when_it_has_groups_to_spare() -> None:
    rows = _rows(classes=4, groups=3, size=4)
    out = grouped_split(rows, val_fraction=0.1, seed=0)
    for label in {r.label for r in rows}:
        assert any(r.split == "val" and r.label == label for r in out)
        assert any(r.split == "train" and r.label == label for r in out)


def test_rows_without_groups_are_their_own_group() -> None:
    rows = [ManifestRow(Path(f"/x/{i}.jpg"), "A", "", str(i), 8, 8, "") for i in range(100)]
    out = grouped_split(rows, val_fraction=0.3, seed=0)
    assert Counter(r.split for r in out)["val"] == 30


def test_bad_fractions() -> None:
    with pytest.raises(ValueError):
        grouped_split(_rows(), val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError):
        random_split(_rows(), val_fraction=1.0)


def test_random_split_is_stratified_seeded_and_leaky() -> None:
    rows = _rows()
    out = random_split(rows, val_fraction=0.2, seed=5)
    assert out == random_split(rows, val_fraction=0.2, seed=5)
    for label, n in Counter(r.label for r in rows).items():
        assert Counter(r.split for r in out if r.label == label)["val"] == round(n * 0.2)
    assert not _groups_on_one_side(out)
