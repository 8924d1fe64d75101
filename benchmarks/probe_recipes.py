"""Recipes for the default model, scored on fish the model never saw (the grouped test split).

    python benchmarks/probe_recipes.py [--data ../shared/data/fish-256] [--views hflip ...]

Pools the photos under --data, groups near-duplicates and splits them by group (70/15/15,
seed 42: the split of models/default), extracts frozen ImageNet EfficientNet-Lite0 features
once through ONNX Runtime (cached under runs/cache/), and scores each recipe on the test
split with a 95% interval from a bootstrap over near-duplicate groups. Model selection (C)
uses val only. `--views` also extracts flipped views (hflip, vflip, rot180: one more pass
over the photos each) for flip augmentation of the training features and flip averaging at
test time.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import KNeighborsClassifier

from fisheye.cli.common import RichProgress
from fisheye.data.grouping import compute_descriptors
from fisheye.data.manifest import ManifestRow
from fisheye.data.pipelines import load_dataset_rows
from fisheye.inference.calibration import expected_calibration_error, fit_temperature, rescale
from fisheye.inference.scoring import grouped_scores
from fisheye.training.features import VIEWS, backbone_features, imagenet_predictor
from fisheye.training.probe import select_linear_head

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fish-256"
CACHE = Path("runs/cache")


def l2(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pooled_features(
    data: Path, views: list[str]
) -> tuple[list[ManifestRow], list[str], np.ndarray, dict[str, np.ndarray]]:
    """The photos under `data` pooled, grouped and split as for models/default (70/15/15,
    seed 42): rows, classes, class indices, and each view's features (cached)."""
    rows = load_dataset_rows(data, 0.15, 0.15, 42, progress=RichProgress(), resplit=True)
    classes = sorted({r.label for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[r.label] for r in rows])
    feats: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as work:
        predictor = imagenet_predictor(classes, work_dir=Path(work))
        for view in views:
            with RichProgress().task(f"Features ({view})", len(rows), "photos") as advance:
                got = backbone_features(
                    predictor, rows, cache_dir=CACHE, view=view, on_done=advance
                )
            if len(got.rows) != len(rows):
                raise SystemExit(f"{len(rows) - len(got.rows)} photos could not be read")
            feats[view] = got.features
    return rows, classes, y, feats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--views", nargs="*", default=[], choices=[v for v in VIEWS if v != "identity"]
    )
    args = parser.parse_args()
    console = Console()

    views = ["identity", *args.views]
    rows, classes, y, feats = pooled_features(args.data, views)
    split = np.array([r.split for r in rows])
    tr, va, te = split == "train", split == "val", split == "test"
    groups = [r.group for r, t in zip(rows, te, strict=True) if t]
    x = feats["identity"]
    console.print(
        f"{len(rows)} photos: train {tr.sum()}, val {va.sum()}, test {te.sum()} "
        f"({len(set(groups))} test groups of {len({r.group for r in rows})})"
    )

    table = Table("recipe", "C (val)", "val acc", "test acc [95% CI over groups]", "test ECE*")

    def row(name: str, c: str, val_pred: np.ndarray, test_pred: np.ndarray, ece: str) -> None:
        s = grouped_scores(y[te], test_pred, groups, len(classes))["acc"]
        table.add_row(
            name,
            c,
            f"{(val_pred == y[va]).mean():.4f}",
            f"{s.value:.4f} [{s.low:.4f}, {s.high:.4f}]",
            ece,
        )

    def report(name: str, c: str, val_probs: np.ndarray, test_probs: np.ndarray) -> None:
        t = fit_temperature(val_probs, y[va])
        ece = expected_calibration_error(rescale(test_probs, t), y[te])
        row(name, c, val_probs.argmax(1), test_probs.argmax(1), f"{ece:.4f}")

    plain = LogisticRegression(max_iter=2000, C=1.0).fit(l2(x[tr]), y[tr])
    report(
        "logistic regression, L2 features, C=1, unscaled (split_leakage.py)",
        "1",
        plain.predict_proba(l2(x[va])),
        plain.predict_proba(l2(x[te])),
    )
    knn = KNeighborsClassifier(n_neighbors=1).fit(l2(x[tr]), y[tr])
    row("1-nearest neighbour (cosine)", "-", knn.predict(l2(x[va])), knn.predict(l2(x[te])), "-")
    head, _ = select_linear_head((x[tr], y[tr]), (x[va], y[va]), len(classes))
    report(
        "linear probe, raw features",
        f"{head.c:g}",
        head.probabilities(x[va]),
        head.probabilities(x[te]),
    )
    h2, _ = select_linear_head((l2(x[tr]), y[tr]), (l2(x[va]), y[va]), len(classes))
    report(
        "linear probe, L2-normalised features",
        f"{h2.c:g}",
        h2.probabilities(l2(x[va])),
        h2.probabilities(l2(x[te])),
    )
    if args.views:
        x_aug = np.concatenate([feats[v][tr] for v in views])
        y_aug = np.concatenate([y[tr]] * len(views))
        h3, _ = select_linear_head((x_aug, y_aug), (x[va], y[va]), len(classes))
        report(
            "linear probe + flip-augmented training features (models/default)",
            f"{h3.c:g}",
            h3.probabilities(x[va]),
            h3.probabilities(x[te]),
        )
        for name, h in (("linear probe", head), ("flip-augmented probe", h3)):
            report(
                f"{name} + test-time average of {len(views)} views ({len(views)}x cost)",
                f"{h.c:g}",
                np.mean([h.probabilities(feats[v][va]) for v in views], axis=0),
                np.mean([h.probabilities(feats[v][te]) for v in views], axis=0),
            )
    console.print(table)
    console.print("* ECE after temperature scaling fitted on val (15 bins).")
    leakage_check(rows, console)


def leakage_check(rows: list, console: Console) -> None:
    """How close test photos come to training photos on the ring descriptor of the grouping."""
    desc = compute_descriptors([r.path for r in rows])
    if any(d is None for d in desc):
        console.print("some photos could not be described; leakage check skipped")
        return
    d = np.stack(desc)  # type: ignore[arg-type]
    labels = np.array([r.label for r in rows])
    split = np.array([r.split for r in rows])
    group = np.array([r.group for r in rows])
    to_train, within = [], []
    for c in sorted(set(labels)):
        test_idx = np.where((split == "test") & (labels == c))[0]
        train_idx = np.where((split == "train") & (labels == c))[0]
        to_train += list(pairwise_distances(d[test_idx], d[train_idx]).min(axis=1))
        for g in set(group[test_idx]):
            members = np.where(group == g)[0]
            dist = pairwise_distances(d[members])
            np.fill_diagonal(dist, np.inf)
            within += list(dist.min(axis=1))
    console.print(
        f"leakage check (ring descriptor): nearest train photo of a test photo at "
        f"{min(to_train):.3f} or more (median {np.median(to_train):.3f}); nearest copy "
        f"within a test group: median {np.median(within):.3f}, 99th percentile "
        f"{np.percentile(within, 99):.3f}"
    )


if __name__ == "__main__":
    main()
