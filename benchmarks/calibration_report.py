"""Calibration of a bundle on held-out photos: ECE before/after temperature scaling, diagram.

    python benchmarks/calibration_report.py --model models/default \
        --data runs/fish-grouped/manifest.csv --split test [--plot docs/img/reliability.png]

`--data` is a manifest with the grouped split of the bundle (`fisheye data import
../shared/data/fish-256 --out runs/fish-grouped --resplit --test-fraction 0.15`): its test
photos are copies of source photos the model never saw. The bundle's backends apply its
temperature; the uncalibrated probabilities are recovered exactly as softmax(log p * T).
Prints accuracy, NLL and ECE (15 bins) at temperature 1, at the fitted temperature, and as
served (the temperature and the bundle's shift temperature, which softens photos far from
the training photos); the diagram shows temperature 1 against the served confidences.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fisheye.bundle import load_bundle
from fisheye.data.manifest import read_manifest
from fisheye.inference.calibration import (
    ECE_BINS,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    rescale,
)
from fisheye.inference.predictor import Predictor
from fisheye.monitoring.loading import load_model
from fisheye.training.records import predict_rows


def plot(before: np.ndarray, after: np.ndarray, labels: np.ndarray, path: Path, t: float) -> None:
    """Reliability diagram: accuracy per confidence bin, as trained and as served."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, probs, title in (
        (axes[0], before, "temperature 1 (as trained)"),
        (axes[1], after, f"served: temperature {t:.3f} and shift temperature"),
    ):
        bins = reliability_bins(probs, labels, ECE_BINS)
        centres = [(b.lower + b.upper) / 2 for b in bins if b.count]
        ax.bar(
            centres,
            [b.accuracy for b in bins if b.count],
            width=1 / ECE_BINS,
            edgecolor="black",
            alpha=0.7,
            label="accuracy",
        )
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.plot(
            [b.confidence for b in bins if b.count],
            [b.accuracy for b in bins if b.count],
            "o",
            color="tab:red",
            label="(mean confidence, accuracy) of a bin",
        )
        for b in bins:
            if b.count:
                ax.annotate(str(b.count), ((b.lower + b.upper) / 2, 0.02), ha="center", fontsize=7)
        ece = expected_calibration_error(probs, labels)
        ax.set_title(f"{title}\nECE {ece:.2%}")
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("accuracy (numbers: photos per bin)")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--data", type=Path, default=Path("runs/fish-grouped/manifest.csv"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--backend", default="onnx-int8")
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()

    bundle = load_bundle(args.model)
    rows = [r for r in read_manifest(args.data) if r.split == args.split]
    if not rows:
        raise SystemExit(f"{args.data} has no {args.split} photos")
    predictor = Predictor(bundle, backend=args.backend)
    after, labels, _ = predict_rows(predictor, rows)
    served_predictor, _ = load_model(args.model, backend=args.backend)
    served, _, _ = predict_rows(served_predictor, rows)
    t = bundle.temperature
    before = rescale(after, 1.0 / t)
    print(
        f"{len(labels)} {args.split} photos, backend {predictor.backend_name}, T = {t:.4f}, "
        f"shift temperature {served_predictor.shift_temperature}"
    )
    print(f"accuracy                {float((after.argmax(1) == labels).mean()):.4f}")
    rows_out = (("temperature 1", before), (f"temperature {t:.3f}", after), ("served", served))
    for name, probs in rows_out:
        print(
            f"{name:<22}  ECE {expected_calibration_error(probs, labels):.4f}  "
            f"NLL {negative_log_likelihood(probs, labels):.4f}  "
            f"mean confidence {float(probs.max(1).mean()):.4f}"
        )
    if args.plot:
        plot(before, served, labels, args.plot, t)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
