"""Which centre-crop fraction to serve a bundle with: studio val against real-world val.

    python -m benchmarks.served_crop --model runs/default-probe \\
        --studio runs/fish-grouped/manifest.csv --real-world-val ../realworld/val \\
        [--fractions 0.875,0.85,0.825,0.8,0.775,0.75,0.7] [--backend onnx] [--split val]

Runs the bundle's model (its head unchanged) on the studio photos of one split of a
manifest and on labelled real-world photos (class folders, e.g. what `fisheye data download`
stages under val/), once per crop fraction, and prints top-1 accuracy on each. Real-world
photos are mostly not square and often show the fish smaller than the studio does, so a
tighter crop can help there while the studio photos (square, the fish filling the tray)
lose little. Choose on validation splits only: `fisheye probe --serve-crop-fraction`
then builds the bundle served that way, and its test figures are measured once.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fisheye.data.files import collect_image_paths
from fisheye.inference.predictor import Predictor

DEFAULT_FRACTIONS = "0.875,0.85,0.825,0.8,0.775,0.75,0.7"


def studio_photos(manifest: Path, split: str) -> list[tuple[Path, str]]:
    """(path, class) of the manifest's rows in `split`; paths relative to the manifest."""
    with manifest.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    return [(manifest.parent / r["path"], r["class"]) for r in rows]


def folder_photos(root: Path) -> list[tuple[Path, str]]:
    """(path, class) of photos in class folders under `root`."""
    return [(p, p.parent.name) for p in collect_image_paths([root])]


def accuracy(predictor: Predictor, photos: list[tuple[Path, str]]) -> float:
    results = predictor.predict_files([p for p, _ in photos])
    right = [
        r.prediction is not None and r.prediction.label == y
        for r, (_, y) in zip(results, photos, strict=True)
    ]
    return float(np.mean(right))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--studio", type=Path, required=True, help="a manifest with splits")
    parser.add_argument("--real-world-val", type=Path, required=True)
    parser.add_argument("--fractions", default=DEFAULT_FRACTIONS)
    parser.add_argument("--backend", default="onnx")
    parser.add_argument("--split", default="val", help="the studio split to score")
    args = parser.parse_args()

    sets = {
        f"studio {args.split}": studio_photos(args.studio, args.split),
        "real-world val": folder_photos(args.real_world_val),
    }
    table = Table(title=f"{args.model}: accuracy by served crop fraction ({args.backend})")
    table.add_column("crop fraction", justify="right")
    for name, photos in sets.items():
        table.add_column(f"{name} ({len(photos)})", justify="right")
    for fraction in (float(f) for f in args.fractions.split(",")):
        predictor = Predictor.from_dir(args.model, backend=args.backend)
        predictor.preprocessing = dataclasses.replace(
            predictor.preprocessing, crop_fraction=fraction
        )
        cells = [f"{accuracy(predictor, photos):.4f}" for photos in sets.values()]
        table.add_row(f"{fraction:g}", *cells)
    Console().print(table)


if __name__ == "__main__":
    main()
