"""Train/val/test splits: the leakage-aware grouped split and the leaky random baseline."""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import replace

from fisheye.data.manifest import ManifestRow

log = logging.getLogger(__name__)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0:
        raise ValueError(
            f"val_fraction and test_fraction must be in [0, 1), "
            f"got {val_fraction} and {test_fraction}"
        )
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must leave photos for training, "
            f"got {val_fraction} + {test_fraction}"
        )


def grouped_split(
    rows: list[ManifestRow],
    val_fraction: float = 0.15,
    test_fraction: float = 0.0,
    seed: int = 42,
) -> list[ManifestRow]:
    """Assign splits stratified by class, seeded, with every group wholly in one split."""
    _check_fractions(val_fraction, test_fraction)
    members: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        # Rows without a group are their own group.
        members[row.group or f"\x00row{i}"].append(i)
    if any(not r.group for r in rows):
        log.info("some rows have no near-duplicate group; each is treated as its own group")

    class_sizes = Counter(r.label for r in rows)
    fractions = {"test": test_fraction, "val": val_fraction}
    targets = {s: {c: n * f for c, n in class_sizes.items()} for s, f in fractions.items()}
    counts: dict[str, Counter[str]] = {s: Counter() for s in ("train", "val", "test")}

    def main_class(key: str) -> str:
        labels = Counter(rows[i].label for i in members[key])
        return min(labels, key=lambda c: (-labels[c], c))

    keys = sorted(members)
    random.Random(seed).shuffle(keys)
    assignment: dict[str, str] = {}
    for key in keys:
        label = main_class(key)
        size = len(members[key])
        chosen = "train"
        for split in ("test", "val"):
            if counts[split][label] + size / 2 <= targets[split][label]:
                chosen = split
                break
        assignment[key] = chosen
        for i in members[key]:
            counts[chosen][rows[i].label] += 1

    # Every class should appear in each requested split when it has groups to spare.
    for split in ("val", "test"):
        if fractions[split] <= 0:
            continue
        for label in sorted(class_sizes):
            if counts[split][label] > 0:
                continue
            train_keys = [k for k in keys if assignment[k] == "train" and main_class(k) == label]
            if len(train_keys) < 2:
                continue
            smallest = min(train_keys, key=lambda k: (len(members[k]), keys.index(k)))
            assignment[smallest] = split
            for i in members[smallest]:
                counts["train"][rows[i].label] -= 1
                counts[split][rows[i].label] += 1

    out = list(rows)
    for key, idx in members.items():
        for i in idx:
            out[i] = replace(rows[i], split=assignment[key])
    return out


def random_split(
    rows: list[ManifestRow], val_fraction: float = 0.15, seed: int = 42
) -> list[ManifestRow]:
    """Per-photo stratified random split that ignores groups (the leaky baseline)."""
    _check_fractions(val_fraction, 0.0)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_class[row.label].append(i)
    rng = random.Random(seed)
    val: set[int] = set()
    for label in sorted(by_class):
        idx = list(by_class[label])
        rng.shuffle(idx)
        n_val = round(len(idx) * val_fraction)
        if val_fraction > 0 and n_val == 0 and len(idx) >= 2:
            n_val = 1
        val.update(idx[:n_val])
    return [replace(r, split="val" if i in val else "train") for i, r in enumerate(rows)]
