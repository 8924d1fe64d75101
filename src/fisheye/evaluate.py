"""Evaluate a model bundle on labelled photos: metrics, confusion matrix and error list.

Everything goes through the Predictor, so evaluation sees exactly what serving sees. Besides
`metrics.json` (top-level scalars first, for `dvc metrics`), it writes the plot tables that
DVC's templates read (`dvc plots`): one `actual,predicted` row per photo for the confusion
template and one row per class for the per-class F1 bars.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load

from fisheye.bundle import Bundle
from fisheye.data.labelled import LabelledDataError, LabelledPhoto, check_classes
from fisheye.data.manifest import TRAINING_MANIFEST_NAME, ManifestError, read_training_manifest
from fisheye.data.progress import NO_PROGRESS, Progress
from fisheye.data.seen import SEEN_DESCRIPTORS_NAME, SeenReport, exclude_seen
from fisheye.inference.calibration import estimated_accuracy, expected_calibration_error
from fisheye.inference.predictor import Predictor

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"
ERRORS_FILE = "errors.csv"
PREDICTIONS_FILE = "confusion.csv"  # actual,predicted per photo: DVC's `confusion` template
PER_CLASS_FILE = "per_class.csv"  # class,precision,recall,f1,support: the per-class F1 plot
OUTPUT_FILES = (METRICS_FILE, CONFUSION_FILE, ERRORS_FILE, PREDICTIONS_FILE, PER_CLASS_FILE)


class EvaluationError(LabelledDataError):
    """The labelled data cannot be evaluated with this bundle (unknown classes, no photos)."""


def recorded_data_root(bundle: Bundle) -> Path | None:
    """The data root the bundle's training photos were recorded against, if it recorded one."""
    root = (bundle.meta.get("data") or {}).get("root")
    if not root:
        return None
    root = Path(root)
    return root.parent if root.suffix == ".csv" else root


def unseen_photos(
    bundle: Bundle,
    rows: Sequence[Any],
    seen_root: Path | None = None,
    progress: Progress = NO_PROGRESS,
) -> SeenReport:
    """The rows whose near-duplicate group the bundle's model never saw in training or selection.

    Uses the near-duplicate descriptors the bundle stores; a bundle without them needs its
    recorded training photos under `seen_root` (default: the data root recorded in the
    bundle), and without those only identical files are recognised.
    """
    if TRAINING_MANIFEST_NAME not in bundle.meta["files"]:
        raise EvaluationError(
            f"the bundle {bundle.path} records no training photos ({TRAINING_MANIFEST_NAME}); "
            "--exclude-seen needs a bundle trained by this FishEye"
        )
    try:
        recorded = read_training_manifest(bundle.read_file(TRAINING_MANIFEST_NAME).decode())
    except (ManifestError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"cannot read the bundle's {TRAINING_MANIFEST_NAME}: {exc}") from None
    root = seen_root if seen_root is not None else recorded_data_root(bundle)
    stored = None
    if SEEN_DESCRIPTORS_NAME in bundle.meta["files"]:
        stored = load(bundle.read_file(SEEN_DESCRIPTORS_NAME))["descriptors"]
    report = exclude_seen(list(rows), recorded, root, progress, stored)
    for note in report.notes:
        log.warning("%s", note)
    return report


def default_out_dir(root: Path = Path("runs/evaluate")) -> Path:
    """A fresh timestamped output folder under runs/evaluate/."""
    return root / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, float), where=den > 0)


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> dict[str, Any]:
    """Confusion matrix, per-class precision/recall/F1/support, accuracy and macro F1.

    As scikit-learn computes them (zero_division=0); the macro F1 averages over the classes
    that occur in the labels or the predictions.
    """
    matrix = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
    hits = np.diag(matrix).astype(float)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    precision, recall = _ratio(hits, predicted), _ratio(hits, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = (support > 0) | (predicted > 0)
    return {
        "matrix": matrix,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "accuracy": float(hits.sum() / max(1, matrix.sum())),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
    }


def evaluate_bundle(
    predictor: Predictor,
    rows: Sequence[LabelledPhoto],
    out_dir: Path,
    *,
    batch_size: int = 32,
    info: dict[str, Any] | None = None,
    unreadable: Sequence[tuple[Path, str]] = (),
    on_done: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Predict every row, write the evaluation files (OUTPUT_FILES) into out_dir; return metrics.

    Unreadable photos (`unreadable`: found while listing the data, plus any the Predictor
    cannot decode) are counted and listed, not fatal. `macro_f1` averages over the classes
    that occur in the labels or the predictions (scikit-learn's default).
    """
    rows = list(rows)
    classes = list(predictor.classes)
    if not rows:
        raise EvaluationError("there are no readable labelled photos to evaluate")
    try:
        check_classes(rows, classes)
    except LabelledDataError as exc:  # callers of evaluate_bundle catch EvaluationError
        raise EvaluationError(str(exc)) from None
    index = {c: i for i, c in enumerate(classes)}
    labels = {Path(r.path): r.label for r in rows}

    y_true: list[int] = []
    y_pred: list[int] = []
    probs: list[np.ndarray] = []
    errors: list[dict[str, Any]] = []
    skipped = [{"path": str(p), "error": e} for p, e in unreadable]
    results = predictor.predict_files(
        [Path(r.path) for r in rows], batch_size=batch_size, top_k=1, on_done=on_done
    )
    for res in results:
        true = labels[res.path]
        if res.prediction is None:
            log.debug("unreadable: %s: %s", res.path, res.error)
            skipped.append({"path": str(res.path), "error": res.error or "unreadable"})
            continue
        y_true.append(index[true])
        y_pred.append(index[res.prediction.label])
        probs.append(res.prediction.probabilities)
        if res.prediction.label != true:
            errors.append(
                {
                    "path": str(res.path),
                    "true": true,
                    "predicted": res.prediction.label,
                    "confidence": round(res.prediction.confidence, 6),
                }
            )
    if not y_true:
        raise EvaluationError(f"none of the {len(rows) + len(unreadable)} photos could be read")

    scores = classification_scores(np.asarray(y_true), np.asarray(y_pred), len(classes))
    matrix, precision, recall, f1, support = (
        scores["matrix"],
        scores["precision"],
        scores["recall"],
        scores["f1"],
        scores["support"],
    )
    metrics: dict[str, Any] = {
        "accuracy": scores["accuracy"],
        "macro_f1": scores["macro_f1"],
        # With the bundle's calibrated probabilities: ECE (15 bins) and the label-free
        # estimate of accuracy (mean confidence), to compare with the measured accuracy.
        "ece": expected_calibration_error(np.stack(probs), np.asarray(y_true)),
        "estimated_accuracy": estimated_accuracy(np.stack(probs)),
        "n_images": len(y_true),
        "n_errors": len(errors),
        "n_unreadable": len(skipped),
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": {"labels": classes, "matrix": matrix.tolist()},
        "unreadable": skipped,
        "bundle": {
            "name": predictor.bundle.name,
            "version": predictor.bundle.version,
            "path": str(predictor.bundle.path),
            "architecture": predictor.bundle.architecture,
        },
        "data": {"path": None, "split": None},
        "created": datetime.now(UTC).replace(microsecond=0).isoformat(),
        **(info or {}),
    }

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    plot_confusion_matrix(
        matrix, classes, out_dir / CONFUSION_FILE, title=f"accuracy {metrics['accuracy']:.2%}"
    )
    write_errors_csv(errors, out_dir / ERRORS_FILE)
    write_predictions_csv(
        [classes[i] for i in y_true], [classes[i] for i in y_pred], out_dir / PREDICTIONS_FILE
    )
    write_per_class_csv(metrics["per_class"], out_dir / PER_CLASS_FILE)
    log.debug("wrote evaluation to %s", out_dir)
    return metrics


def write_errors_csv(errors: Sequence[dict[str, Any]], path: Path) -> None:
    """Write misclassified photos, most confident mistakes first."""
    ordered = sorted(errors, key=lambda e: -e["confidence"])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "true", "predicted", "confidence"])
        writer.writeheader()
        writer.writerows(ordered)


def write_predictions_csv(actual: Sequence[str], predicted: Sequence[str], path: Path) -> None:
    """Write one `actual,predicted` row per photo (what DVC's confusion templates read)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        writer.writerows(zip(actual, predicted, strict=True))


def write_per_class_csv(per_class: dict[str, dict[str, Any]], path: Path) -> None:
    """Write one `class,precision,recall,f1,support` row per class, in the bundle's order."""
    fields = ["precision", "recall", "f1", "support"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["class", *fields])
        for cls, m in per_class.items():
            writer.writerow(
                [cls, *(round(m[k], 6) if isinstance(m[k], float) else m[k] for k in fields)]
            )


def plot_confusion_matrix(
    matrix: np.ndarray, classes: Sequence[str], path: Path, *, title: str = ""
) -> None:
    """Save a confusion matrix PNG: counts in cells, colour by share of the true class."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(classes)
    side = max(4.0, 0.75 * n + 2.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape, float), where=totals > 0)
    im = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                colour = "white" if shares[i, j] > 0.5 else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=colour)
    fig.tight_layout()
    fig.savefig(path)
