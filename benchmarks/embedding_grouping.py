"""How the embedding grouping (`data import --grouping embedding`) behaves, by threshold.

    python benchmarks/embedding_grouping.py [--data ../shared/data/fish-256] [--copies 200]

Two measurements on frozen ImageNet EfficientNet-Lite0 features (cosine distance, average
linkage within a class, as `fisheye.data.grouping.group_by_embedding` does):
1. against the ring grouping of fish-256 (424 groups of rotated/flipped copies): how many
   ring groups the embedding grouping splits, and how many of its groups mix ring groups;
2. on near-copies it should find: `--copies` photos (spread over the classes) each with
   three edited copies (JPEG quality 40, a 90% centre crop, brightness x1.2): how many
   originals end up in one group with all three copies, and how many groups hold copies of
   more than one original.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from fisheye.cli.common import RichProgress
from fisheye.data.grouping import group_by_embedding
from fisheye.data.manifest import ManifestRow
from fisheye.data.pipelines import load_dataset_rows
from fisheye.training.features import backbone_features, imagenet_predictor

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fish-256"
THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


def edits(img: Image.Image) -> list[Image.Image]:
    """Three near-copies: re-encoded, cropped, brightened."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=40)
    w, h = img.size
    crop = img.crop((w // 20, h // 20, w - w // 20, h - h // 20)).resize(img.size)
    return [
        Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
        crop,
        ImageEnhance.Brightness(img).enhance(1.2),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--copies", type=int, default=200)
    args = parser.parse_args()

    rows = load_dataset_rows(args.data, 0.15, 0.15, 42, progress=RichProgress(), resplit=True)
    classes = sorted({r.label for r in rows})
    with tempfile.TemporaryDirectory() as work:
        predictor = imagenet_predictor(classes, work_dir=Path(work))
        feats = backbone_features(predictor, rows, cache_dir=Path("runs/cache"))
        ring = np.array([r.group for r in feats.rows])
        print(f"1. fish-256: {len(feats.rows)} photos, {len(set(ring))} ring groups")
        print("| cosine threshold | groups | ring groups split | groups mixing ring groups |")
        print("|---:|---:|---:|---:|")
        for th in THRESHOLDS:
            emb = np.array(
                [
                    r.group
                    for r in group_by_embedding(feats.rows, feats.features, distance_threshold=th)
                ]
            )
            split = sum(len(set(emb[ring == g])) > 1 for g in set(ring))
            mixed = sum(len(set(ring[emb == g])) > 1 for g in set(emb))
            print(
                f"| {th} | {len(set(emb))} | {split} of {len(set(ring))} "
                f"| {mixed} of {len(set(emb))} |"
            )

        step = max(1, len(feats.rows) // args.copies)
        originals = feats.rows[::step][: args.copies]
        edited: list[ManifestRow] = []
        images = Path(work) / "copies"
        for i, row in enumerate(originals):
            folder = images / row.label
            folder.mkdir(parents=True, exist_ok=True)
            for k, img in enumerate(
                [predictor.decode(row.path), *edits(predictor.decode(row.path))]
            ):
                path = folder / f"{i:04d}_{k}.png"
                img.save(path)
                edited.append(ManifestRow(path, row.label, "", f"{i}", 0, 0))
        got = backbone_features(predictor, edited)
        source = np.array([r.sha256 for r in got.rows])
        print(f"\n2. {len(originals)} photos with 3 edited copies each ({len(got.rows)} images)")
        print(
            "| cosine threshold | originals grouped with all 3 copies | groups mixing originals |"
        )
        print("|---:|---:|---:|")
        for th in THRESHOLDS:
            emb = np.array(
                [r.group for r in group_by_embedding(got.rows, got.features, distance_threshold=th)]
            )
            whole = sum(len(set(emb[source == s])) == 1 for s in set(source))
            mixed = sum(len(set(source[emb == g])) > 1 for g in set(emb))
            print(f"| {th} | {whole} of {len(set(source))} | {mixed} of {len(set(emb))} |")


if __name__ == "__main__":
    main()
