"""How much a random split flatters a model compared with the leakage-aware grouped split.

    .venv/bin/python benchmarks/split_leakage.py [--data ../shared/data/fish-256] [--seeds 3]

Pools every photo under --data, groups near-duplicates (rotated/flipped copies of one source
photo), then evaluates the same models on a random split and on the grouped split:
  * 1-nearest-neighbour on frozen ImageNet EfficientNet-Lite0 features (memorises, so it
    shows leakage most plainly);
  * logistic regression on the same features (a linear probe).
Features are computed once and cached under runs/cache/.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from fisheye.cli.common import RichProgress
from fisheye.data.grouping import group_near_duplicates
from fisheye.data.images import decode_image
from fisheye.data.manifest import ManifestRow
from fisheye.data.pipelines import scan_source
from fisheye.data.preprocess import Preprocessing, preprocess
from fisheye.data.splits import grouped_split, random_split
from fisheye.models.backbones import build_model

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fish-256"
CACHE = Path("runs/cache")


def features(rows: list[ManifestRow], batch: int = 32) -> np.ndarray:
    """Frozen ImageNet EfficientNet-Lite0 features for each row (cached by content hash)."""
    key = hashlib.sha256("".join(sorted(r.sha256 for r in rows)).encode()).hexdigest()[:16]
    cache = CACHE / f"lite0_features_{key}.npz"
    order = sorted(range(len(rows)), key=lambda i: rows[i].sha256)
    if cache.is_file():
        feats_sorted = np.load(cache)["features"]
    else:
        spec = Preprocessing()
        net = build_model("efficientnet_lite0", 9, pretrained=True).eval()
        chunks = []
        with torch.inference_mode():
            for start in track(range(0, len(order), batch), description="features"):
                idx = order[start : start + batch]
                x = torch.from_numpy(
                    np.stack([preprocess(decode_image(rows[i].path), spec) for i in idx])
                )
                chunks.append(net.forward_features(x).numpy())
        feats_sorted = np.concatenate(chunks)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, features=feats_sorted)
    feats = np.empty_like(feats_sorted)
    feats[order] = feats_sorted
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def accuracy(model, feats: np.ndarray, rows: list[ManifestRow]) -> float:
    """Fit on the train rows, score on the val rows."""
    labels = np.array([r.label for r in rows])
    train = np.array([r.split == "train" for r in rows])
    val = np.array([r.split == "val" for r in rows])
    model.fit(feats[train], labels[train])
    return float((model.predict(feats[val]) == labels[val]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--val-fraction", type=float, default=0.15)
    args = parser.parse_args()
    console = Console()

    scan = scan_source(args.data, progress=RichProgress())
    rows = [replace(r, split="") for r in scan.rows]
    rows = group_near_duplicates(rows, progress=RichProgress())
    n_groups = len({r.group for r in rows})
    console.print(f"{len(rows)} photos, {n_groups} near-duplicate groups, data {args.data}")
    feats = features(rows)

    models = {
        "1-NN on frozen features": lambda: KNeighborsClassifier(n_neighbors=1),
        "linear probe (logistic regression)": lambda: LogisticRegression(max_iter=2000, C=1.0),
    }
    table = Table("model", "random split acc", "grouped split acc", "seeds")
    for name, make in models.items():
        scores: dict[str, list[float]] = {"random": [], "grouped": []}
        for seed in range(args.seeds):
            r_rows = random_split(rows, args.val_fraction, seed)
            g_rows = grouped_split(rows, args.val_fraction, 0.0, seed)
            scores["random"].append(accuracy(make(), feats, r_rows))
            scores["grouped"].append(accuracy(make(), feats, g_rows))
        table.add_row(
            name,
            f"{statistics.mean(scores['random']):.4f}",
            f"{statistics.mean(scores['grouped']):.4f}",
            str(args.seeds),
        )
    console.print(table)


if __name__ == "__main__":
    main()
