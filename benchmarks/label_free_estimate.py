"""How well the label-free accuracy estimate (mean calibrated confidence) tracks true accuracy.

    python benchmarks/label_free_estimate.py --model models/default \
        --data runs/fish-grouped/manifest.csv [--split test] [--backend onnx-int8]

Runs the bundle on held-back labelled photos (the grouped test split: fish the model never
saw), clean and corrupted by Gaussian noise, Gaussian blur, JPEG re-compression and
brightness changes at three severities each, and prints per condition the true accuracy,
the estimate that `fisheye drift` and the monitoring summary report (mean calibrated top-1
confidence, "AC", with the served confidences: temperature and shift temperature), the
same without the shift temperature, and, for comparison, ATC (the share of photos above
the confidence threshold at which val photos would score their own accuracy). Corruptions
are applied to the decoded photo, before the bundle's own preprocessing, as a camera or
upload would; none of these four families is among those the default model trains on or
its shift temperature is fitted on (fisheye.data.corruptions).
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from fisheye.data.manifest import read_manifest
from fisheye.inference.calibration import estimated_accuracy
from fisheye.inference.predictor import Predictor
from fisheye.monitoring.loading import load_model

Corruption = Callable[[Image.Image, np.random.Generator], Image.Image]


def noise(sigma: float) -> Corruption:
    def apply(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        arr = np.asarray(img, dtype=np.float32)
        arr = arr + rng.normal(scale=sigma * 255.0, size=arr.shape)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))

    return apply


def blur(radius: float) -> Corruption:
    return lambda img, rng: img.filter(ImageFilter.GaussianBlur(radius))


def jpeg(quality: int) -> Corruption:
    def apply(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        return Image.open(buf).convert("RGB")

    return apply


def brightness(factor: float) -> Corruption:
    return lambda img, rng: ImageEnhance.Brightness(img).enhance(factor)


CONDITIONS: dict[str, Corruption | None] = {
    "clean": None,
    "noise sigma=0.04": noise(0.04),
    "noise sigma=0.08": noise(0.08),
    "noise sigma=0.16": noise(0.16),
    "blur radius=1": blur(1.0),
    "blur radius=2": blur(2.0),
    "blur radius=4": blur(4.0),
    "jpeg quality=30": jpeg(30),
    "jpeg quality=10": jpeg(10),
    "jpeg quality=3": jpeg(3),
    "brightness x0.5": brightness(0.5),
    "brightness x0.25": brightness(0.25),
    "brightness x2.0": brightness(2.0),
}


# The target: within 3 points of the true accuracy wherever that is above 80%.
TARGET_POINTS, TARGET_FLOOR = 3.0, 0.8


def run(
    predictor: Predictor, images: list[Image.Image], corrupt: Corruption | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Served and plain calibrated probabilities of (corrupted) photos, in batches of 32.

    Served: with the shift temperature (when the bundle has one); plain: the bundle's
    temperature alone.
    """
    rng = np.random.default_rng(seed)
    served, plain = [], []
    for start in range(0, len(images), 32):
        chunk = images[start : start + 32]
        if corrupt is not None:
            chunk = [corrupt(im, rng) for im in chunk]
        out = predictor.backend.run(np.stack([predictor.prepare(im) for im in chunk]))
        plain.append(out.probabilities)
        if predictor.ood is not None and predictor.shift_temperature is not None:
            scores = predictor.ood.score(out.features)
            served.append(predictor.shift_temperature.apply(out.probabilities, scores))
        else:
            served.append(out.probabilities)
    return np.concatenate(served), np.concatenate(plain)


def atc_threshold(val_probs: np.ndarray, val_labels: np.ndarray) -> float:
    """The confidence threshold above which the share of val photos equals val accuracy."""
    conf = np.sort(val_probs.max(1))
    acc = float((val_probs.argmax(1) == val_labels).mean())
    return float(np.quantile(conf, 1.0 - acc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--data", type=Path, default=Path("runs/fish-grouped/manifest.csv"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--backend", default="onnx-int8")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    predictor, _ = load_model(args.model, backend=args.backend)
    index = {c: i for i, c in enumerate(predictor.classes)}
    rows = read_manifest(args.data)
    sets = {}
    for split in ("val", args.split):
        chosen = [r for r in rows if r.split == split]
        sets[split] = (
            [predictor.decode(r.path) for r in chosen],
            np.array([index[r.label] for r in chosen]),
        )
    val_probs, _ = run(predictor, sets["val"][0], None, args.seed)
    threshold = atc_threshold(val_probs, sets["val"][1])
    images, labels = sets[args.split]
    print(
        f"{len(labels)} {args.split} photos, backend {predictor.backend_name}, "
        f"T = {predictor.bundle.temperature:.4f}, shift temperature "
        f"{predictor.shift_temperature}, ATC threshold {threshold:.4f} (from val)"
    )
    print(
        f"{'condition':<20} {'true acc':>9} {'AC est.':>8} {'AC err':>7} "
        f"{'err, T only':>11} {'ATC est.':>9}"
    )
    judged: list[tuple[str, float]] = []
    for name, corrupt in CONDITIONS.items():
        probs, plain = run(predictor, images, corrupt, args.seed)
        true = float((probs.argmax(1) == labels).mean())
        ac = estimated_accuracy(probs) or 0.0
        plain_err = (estimated_accuracy(plain) or 0.0) - true
        atc = float((probs.max(1) > threshold).mean())
        print(
            f"{name:<20} {true:>9.4f} {ac:>8.4f} {ac - true:>+7.4f} {plain_err:>+11.4f} {atc:>9.4f}"
        )
        if true > TARGET_FLOOR:
            judged.append((name, ac - true))
    within = [name for name, err in judged if abs(err) <= TARGET_POINTS / 100]
    worst = max(judged, key=lambda item: abs(item[1]))
    print(
        f"AC within {TARGET_POINTS:g} points in {len(within)} of {len(judged)} conditions whose "
        f"true accuracy is above {TARGET_FLOOR:.0%}; worst: {worst[0]} ({100 * worst[1]:+.1f})"
    )


if __name__ == "__main__":
    main()
