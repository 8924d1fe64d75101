"""Which training views of the studio photos help on photos from outside the studio.

    python -m benchmarks.training_views --real-world-val ../realworld/val \\
        [--data ../shared/data/fish-256] [--arch efficientnet_lite2] [--resize center_crop] \\
        [--recipe NAME=VIEW,VIEW ...] [--c 0.03]

Splits the photos under --data by near-duplicate group as `fisheye probe --resplit` does
(70/15/15, seed 42), extracts frozen ImageNet features of every photo and of each view the
recipes name (cached under runs/cache/, shared with `fisheye probe`), fits the probe's
linear head on the train photos plus each recipe's views, and prints accuracy on the studio
val split and on the labelled real-world photos (class folders, e.g. what `fisheye data
download` stages under val/). Views: hflip, vflip, rot180, corrupted-K, composite-K.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fisheye.data.files import collect_image_paths
from fisheye.data.pipelines import load_dataset_rows
from fisheye.training.features import backbone_features, default_preprocessing, imagenet_predictor
from fisheye.training.probe import fit_linear_head

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fish-256"
DEFAULT_RECIPES = (
    "default=hflip,corrupted-1,corrupted-2",
    "default+composites=hflip,corrupted-1,corrupted-2,composite-1,composite-2",
    "composites=composite-1,composite-2",
)


def split_features(feats, class_index: dict[str, int], split: str):
    idx = [i for i, r in enumerate(feats.rows) if r.split == split]
    return feats.features[idx], np.asarray([class_index[feats.rows[i].label] for i in idx])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--real-world-val", type=Path, required=True)
    parser.add_argument("--arch", default="efficientnet_lite2")
    parser.add_argument("--resize", default="center_crop")
    parser.add_argument("--recipe", action="append", help="NAME=VIEW,VIEW (repeatable)")
    parser.add_argument("--c", type=float, default=0.03, help="the head's regularisation")
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"))
    args = parser.parse_args()

    recipes = {}
    for text in args.recipe or DEFAULT_RECIPES:
        name, _, views = text.partition("=")
        recipes[name] = [v for v in views.split(",") if v]
    rows = load_dataset_rows(args.data, 0.15, 0.15, 42, resplit=True)
    classes = sorted({r.label for r in rows})
    class_index = {c: i for i, c in enumerate(classes)}
    spec = default_preprocessing(args.arch, args.resize)
    with tempfile.TemporaryDirectory() as work:
        predictor = imagenet_predictor(classes, args.arch, "onnx", spec=spec, work_dir=Path(work))
        plain = backbone_features(predictor, rows, cache_dir=args.cache)
        needed = sorted({v for views in recipes.values() for v in views})
        by_view = {
            v: split_features(
                backbone_features(predictor, plain.rows, cache_dir=args.cache, view=v),
                class_index,
                "train",
            )
            for v in needed
        }
        outside = [
            (p, class_index[p.parent.name])
            for p in collect_image_paths([args.real_world_val])
            if p.parent.name in class_index
        ]
        results = list(predictor.run_files([p for p, _ in outside], batch_size=16))
        x_world = np.stack([r.features for r in results if r.features is not None])
        y_world = np.asarray(
            [y for (_, y), r in zip(outside, results, strict=True) if r.features is not None]
        )
    x_train, y_train = split_features(plain, class_index, "train")
    x_val, y_val = split_features(plain, class_index, "val")

    table = Table(title=f"{args.arch}, {args.resize}, C={args.c}: training views")
    for column in ("recipe", "views", "train samples", "studio val", "real-world val"):
        table.add_column(column, justify="left" if column in ("recipe", "views") else "right")
    for name, views in recipes.items():
        x = np.concatenate([x_train, *(by_view[v][0] for v in views)])
        y = np.concatenate([y_train, *(by_view[v][1] for v in views)])
        head = fit_linear_head(x, y, len(classes), args.c, 0)
        studio = float((head.probabilities(x_val).argmax(1) == y_val).mean())
        world = float((head.probabilities(x_world).argmax(1) == y_world).mean())
        table.add_row(name, ", ".join(views) or "-", str(len(y)), f"{studio:.4f}", f"{world:.3f}")
    Console().print(table)
    print(f"real-world val: {len(y_world)} photos from {args.real_world_val}")


if __name__ == "__main__":
    main()
