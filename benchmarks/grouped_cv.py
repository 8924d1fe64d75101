"""Accuracy on never-seen fish over every source photo: grouped cross-validation of the probe.

    python -m benchmarks.grouped_cv [--data ../shared/data/fish-256] [--folds 5] [--corrupted 2]

(from the repository root).

The grouped test split of models/default holds 66 of the 424 near-duplicate groups, so its
interval is wide. Here `fish-256` train and val are pooled and grouped as for the default
model, and the groups are dealt into `--folds` folds (stratified by class). Each fold is
predicted by probes that never saw its groups: the other folds are split again by group
into train and val, C is chosen on that val, and the head is fitted on the train photos'
features (plain, mirrored and `--corrupted` corrupted views: the default's recipe, and the
mirror-only recipe for comparison). Every photo is thus predicted once by a model that
neither trained nor selected on its fish. Features come from one ONNX Runtime pass per view
over all photos (cached under runs/cache/). Prints the pooled out-of-fold accuracy and
macro-F1 with 95% intervals from a bootstrap over all groups, and each fold's accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.model_selection import StratifiedGroupKFold

from benchmarks.probe_recipes import DEFAULT_DATA, pooled_features
from fisheye.inference.scoring import grouped_scores
from fisheye.training.features import CORRUPTED
from fisheye.training.probe import select_linear_head


def inner_split(y: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of one photo set, split by group: val is about 1/6 of the groups."""
    train, val = next(
        StratifiedGroupKFold(n_splits=6, shuffle=True, random_state=seed).split(y, y, groups)
    )
    return train, val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--corrupted", type=int, default=2, help="corrupted views per photo")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    console = Console()

    corrupted = [f"{CORRUPTED}{k}" for k in range(1, args.corrupted + 1)]
    views = ["identity", "hflip", *corrupted]
    rows, classes, y, feats = pooled_features(args.data, views)
    groups = np.array([r.group for r in rows])
    console.print(
        f"{len(rows)} photos of {len(set(groups))} groups, {args.folds} folds by group, "
        f"training views: {', '.join(views)}"
    )

    recipes = {"mirror views (previous default)": views[:2], "mirror + corrupted views": views}
    predicted = {name: np.full(len(y), -1) for name in recipes}
    per_fold: dict[str, list[str]] = {name: [] for name in recipes}
    outer = StratifiedGroupKFold(n_splits=args.folds, shuffle=True, random_state=args.seed)
    for fold, (rest, test) in enumerate(outer.split(y, y, groups)):
        inner_train, inner_val = inner_split(y[rest], groups[rest], args.seed + fold)
        train, val = rest[inner_train], rest[inner_val]
        x = feats["identity"]
        for name, used in recipes.items():
            x_train = np.concatenate([feats[v][train] for v in used])
            y_train = np.concatenate([y[train]] * len(used))
            head, _ = select_linear_head((x_train, y_train), (x[val], y[val]), len(classes))
            predicted[name][test] = head.probabilities(x[test]).argmax(axis=1)
            acc = float((predicted[name][test] == y[test]).mean())
            per_fold[name].append(f"{acc:.4f} (C={head.c:g})")
        console.print(
            f"fold {fold + 1}: {len(test)} test photos of {len(set(groups[test]))} groups"
        )

    table = Table("recipe", "accuracy [95% CI]", "macro-F1 [95% CI]", "errors", "per fold")
    for name, pred in predicted.items():
        s = grouped_scores(y, pred, list(groups), len(classes))
        table.add_row(
            name,
            f"{s['acc'].value:.4f} [{s['acc'].low:.4f}, {s['acc'].high:.4f}]",
            f"{s['macro_f1'].value:.4f} [{s['macro_f1'].low:.4f}, {s['macro_f1'].high:.4f}]",
            f"{int((pred != y).sum())} of {len(y)}",
            ", ".join(per_fold[name]),
        )
    console.print(table)


if __name__ == "__main__":
    main()
