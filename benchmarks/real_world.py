"""How a bundle does on labelled photos from the world outside the studio, with intervals.

    python -m benchmarks.real_world --model models/default --data DIR [--card data/cards/X.csv]
        [--model OTHER ...] [--backend auto] [--json]

DIR is a tree of class folders (`DIR/<Class>/*.jpg`, nested folders allowed), for example
what `fisheye data download --card CARD --out OUT` stages under OUT/test. With `--card`,
each photo's source and fish group come from the card (by sha256), and the intervals
resample whole sources: photos of one source (one angler, one shop, one camera) are
correlated, and the held-out question is how a new source fares. Without a card every photo
is its own group.

Prints, per bundle: accuracy and mean recall over the classes present, each with a 95%
bootstrap interval; mean confidence shown, calibration error (ECE, 15 bins), the label-free
accuracy estimate (what monitoring reports), the share flagged out of distribution; at the
bundle's abstention threshold (when it has one) the share answered and the accuracy of
those answers; the risk-coverage curve; per class recall, confidence and main confusions;
and the confusion matrix.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fisheye.data.cards import read_card
from fisheye.data.files import collect_image_paths
from fisheye.inference.calibration import estimated_accuracy, expected_calibration_error
from fisheye.inference.scoring import grouped_bootstrap
from fisheye.monitoring.loading import load_model

COVERAGES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def labelled_photos(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(photo, class index) for every photo under a class folder of `root`."""
    index = {c: i for i, c in enumerate(classes)}
    found = []
    for path in collect_image_paths([root]):
        label = next((p for p in reversed(path.relative_to(root).parts[:-1]) if p in index), None)
        if label is not None:
            found.append((path, index[label]))
    if not found:
        raise SystemExit(f"no photo under a class folder ({', '.join(classes)}) in {root}")
    return found


def groups_of(paths: list[Path], cards: list[Path], by: str) -> list[str]:
    """The resampling unit of each photo: its card's source or fish group, else itself."""
    if not cards or by == "photo":
        return [str(p) for p in paths]
    known = {row.sha256: row for card in cards for row in read_card(card)}
    out = []
    for p in paths:
        row = known.get(hashlib.sha256(p.read_bytes()).hexdigest())
        out.append(str(p) if row is None else (row.source if by == "source" else row.group))
    return out


def mean_recall(y: np.ndarray, pred: np.ndarray) -> float:
    """Recall averaged over the classes present in `y`."""
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def risk_coverage(conf: np.ndarray, right: np.ndarray) -> list[dict[str, float]]:
    """Accuracy of the most confident share of photos, at each coverage in COVERAGES."""
    order = np.argsort(-conf, kind="stable")
    rows = []
    for cov in COVERAGES:
        k = max(1, int(round(cov * len(conf))))
        rows.append(
            {
                "coverage": cov,
                "accuracy": float(right[order[:k]].mean()),
                "threshold": float(conf[order[k - 1]]),
            }
        )
    return rows


def evaluate(model: Path, photos, groups: list[str], backend: str) -> dict[str, Any]:
    """Every figure of the table for one bundle."""
    predictor, monitor = load_model(model, backend=backend)
    classes = predictor.classes
    paths = [p for p, _ in photos]
    labels = {p: y for p, y in photos}
    probs, ood, kept, keep_groups = [], [], [], []
    for out, group in zip(predictor.run_files(paths, batch_size=16), groups, strict=True):
        if out.probabilities is None:
            continue
        probs.append(out.probabilities)
        ood.append(out.ood_score)
        kept.append(labels[out.path])
        keep_groups.append(group)
    p = np.stack(probs)
    y = np.asarray(kept)
    pred = p.argmax(1)
    conf = p.max(1)
    right = pred == y
    acc = grouped_bootstrap(lambda i: float(right[i].mean()), keep_groups)
    recall = grouped_bootstrap(lambda i: mean_recall(y[i], pred[i]), keep_groups)
    flagged = None
    if monitor is not None:
        scores = np.asarray(ood, dtype=float)
        flagged = float(np.mean(~monitor.ood.is_in_distribution(scores)))
    threshold = (predictor.bundle.meta.get("abstention") or {}).get("threshold")
    answered = None
    if threshold is not None:
        mask = conf >= float(threshold)
        answered = {
            "threshold": float(threshold),
            "share": float(mask.mean()),
            "accuracy": float(right[mask].mean()) if mask.any() else None,
        }
    per_class = {}
    for c in np.unique(y):
        sel = y == c
        wrong = Counter(classes[k] for k in pred[sel & ~right])
        per_class[classes[c]] = {
            "n": int(sel.sum()),
            "recall": float(right[sel].mean()),
            "mean_confidence": float(conf[sel].mean()),
            "confused_with": wrong.most_common(3),
        }
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(confusion, (y, pred), 1)
    return {
        "model": str(model),
        "backend": predictor.backend_name,
        "n": int(len(y)),
        "groups": len(set(keep_groups)),
        "unreadable": len(paths) - len(y),
        "accuracy": acc.to_dict(4),
        "mean_recall": recall.to_dict(4),
        "mean_confidence": float(conf.mean()),
        "ece": expected_calibration_error(p, y),
        "estimated_accuracy": estimated_accuracy(p),
        "ood_flagged": flagged,
        "abstention": answered,
        "risk_coverage": risk_coverage(conf, right),
        "per_class": per_class,
        "classes": classes,
        "confusion": confusion.tolist(),
    }


def _ci(d: dict[str, float]) -> str:
    return f"{d['value']:.3f} [{d['ci95_low']:.3f}, {d['ci95_high']:.3f}]"


def print_report(results: list[dict[str, Any]], unit: str) -> None:
    """Markdown tables of the figures."""
    print(f"intervals: 95% bootstrap over {unit}s")
    print()
    print(
        "| model | backend | photos | accuracy [95% CI] | mean class recall [95% CI] "
        "| mean confidence | ECE | estimated accuracy | OOD flagged | answered at threshold |"
    )
    print("|---|---|---:|---|---|---:|---:|---:|---:|---|")
    for r in results:
        ab = r["abstention"]
        answered = (
            "-"
            if ab is None
            else (
                f"{ab['share']:.0%} at {ab['threshold']:.2f}, accuracy "
                + ("-" if ab["accuracy"] is None else f"{ab['accuracy']:.3f}")
            )
        )
        flagged = "-" if r["ood_flagged"] is None else f"{r['ood_flagged']:.0%}"
        print(
            f"| {r['model']} | {r['backend']} | {r['n']} ({r['groups']} {unit}s) "
            f"| {_ci(r['accuracy'])} | {_ci(r['mean_recall'])} | {r['mean_confidence']:.3f} "
            f"| {r['ece']:.3f} | {r['estimated_accuracy']:.3f} | {flagged} | {answered} |"
        )
    for r in results:
        print(f"\n{r['model']}: risk-coverage (answer the most confident share)\n")
        print("| coverage | accuracy of answered | confidence threshold |")
        print("|---:|---:|---:|")
        for rc in r["risk_coverage"]:
            print(f"| {rc['coverage']:.0%} | {rc['accuracy']:.3f} | {rc['threshold']:.3f} |")
        print(f"\n{r['model']}: per class\n")
        print("| class | photos | recall | mean confidence | most often called |")
        print("|---|---:|---:|---:|---|")
        for name, c in r["per_class"].items():
            wrong = ", ".join(f"{k} ({n})" for k, n in c["confused_with"]) or "-"
            print(
                f"| {name} | {c['n']} | {c['recall']:.3f} | {c['mean_confidence']:.3f} | {wrong} |"
            )
        short = ["".join(w[0] for w in re.split(r"[ -]", c)) for c in r["classes"]]
        print(f"\n{r['model']}: confusion (rows: true class, columns: predicted)\n")
        print("| | " + " | ".join(short) + " |")
        print("|---|" + "---:|" * len(short))
        for name, row in zip(short, r["confusion"], strict=True):
            if sum(row):
                print(f"| {name} | " + " | ".join(str(v) for v in row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--card", type=Path, action="append", default=[])
    parser.add_argument("--group-by", choices=("source", "group", "photo"), default="source")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead")
    args = parser.parse_args()
    from fisheye.bundle import load_bundle

    classes = load_bundle(args.model[0]).classes
    photos = labelled_photos(args.data, classes)
    unit = args.group_by if args.card else "photo"
    groups = groups_of([p for p, _ in photos], args.card, unit)
    results = [evaluate(m, photos, groups, args.backend) for m in args.model]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_report(results, unit)


if __name__ == "__main__":
    main()
