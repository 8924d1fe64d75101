"""Evaluate a model bundle on labelled photos: metrics, confusion matrix and error list.

Everything goes through the Predictor, so evaluation sees exactly what serving sees.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from fisheye.inference.predictor import Predictor

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"
ERRORS_FILE = "errors.csv"
ALL_SPLITS = "all"


class EvaluationError(ValueError):
    """The labelled data cannot be evaluated with this bundle (unknown classes, no photos)."""


class LabelledPhoto(Protocol):
    """What evaluation needs from a data row (a ManifestRow fits)."""

    path: Path
    label: str


def default_out_dir(root: Path = Path("runs/evaluate")) -> Path:
    """A fresh timestamped output folder under runs/evaluate/."""
    return root / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def select_split(rows: Sequence[Any], split: str) -> list[Any]:
    """Rows of one split; `all`, or data without any split column, keeps every row."""
    if split == ALL_SPLITS:
        return list(rows)
    splits = {getattr(r, "split", None) or "" for r in rows}
    if splits <= {""}:
        return list(rows)
    chosen = [r for r in rows if (getattr(r, "split", None) or "") == split]
    if not chosen:
        available = ", ".join(sorted(s or "(none)" for s in splits))
        raise EvaluationError(
            f"the data has no rows in split {split!r}; available splits: {available}. "
            f"Choose one with --split, or --split {ALL_SPLITS} for every row."
        )
    return chosen


@dataclass
class EvalData:
    """Labelled rows to evaluate, plus the photos already found unreadable while listing."""

    rows: list[Any]
    source: Path
    split: str | None = None
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """What metrics.json records about the data."""
        return {"data": {"path": str(self.source.resolve()), "split": self.split}}


def load_eval_data(data: Path, split: str = "val") -> EvalData:
    """Rows from a class-per-folder tree or a manifest CSV; split selection when it has splits."""
    from fisheye.data.manifest import read_manifest

    data = Path(data)
    unreadable: list[tuple[Path, str]] = []
    if data.is_dir():
        from fisheye.data.sources import scan_source

        result = scan_source(data, progress=False)
        rows = list(result.rows)
        unreadable = [(Path(p), str(reason)) for p, reason in result.unreadable]
    elif data.is_file():
        rows = read_manifest(data)
    else:
        raise EvaluationError(f"no such file or folder: {data}")
    has_splits = any(getattr(r, "split", None) for r in rows)
    rows = select_split(rows, split)
    if has_splits and split != ALL_SPLITS and data.is_dir():
        # Pre-split trees (train/val/<class>): keep the unreadable photos of the chosen split.
        unreadable = [(p, e) for p, e in unreadable if _first_part(p, data) == split]
    return EvalData(rows, data, split if has_splits else None, unreadable)


def _first_part(path: Path, root: Path) -> str | None:
    try:
        return Path(path).resolve().relative_to(root.resolve()).parts[0]
    except (ValueError, IndexError):
        return None


def check_classes(rows: Sequence[LabelledPhoto], classes: Sequence[str]) -> None:
    """Raise EvaluationError if any row's label is not one of the bundle's classes."""
    unknown = sorted({r.label for r in rows} - set(classes))
    if unknown:
        raise EvaluationError(
            f"the data has classes the model does not know: {', '.join(map(repr, unknown))}. "
            f"The model's classes are: {', '.join(map(repr, classes))}. "
            "Class folder names must match the bundle's classes exactly."
        )


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
    """Predict every row, write metrics.json, confusion_matrix.png and errors.csv; return metrics.

    Unreadable photos (`unreadable`: found while listing the data, plus any the Predictor
    cannot decode) are counted and listed, not fatal. `macro_f1` averages over the classes
    that occur in the labels or the predictions (scikit-learn's default).
    """
    rows = list(rows)
    classes = list(predictor.classes)
    if not rows:
        raise EvaluationError("there are no readable labelled photos to evaluate")
    check_classes(rows, classes)
    index = {c: i for i, c in enumerate(classes)}
    labels = {Path(r.path): r.label for r in rows}

    y_true: list[int] = []
    y_pred: list[int] = []
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

    all_labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=all_labels, zero_division=0
    )
    matrix = confusion_matrix(y_true, y_pred, labels=all_labels)
    metrics: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
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
    log.debug("wrote evaluation to %s", out_dir)
    return metrics


def write_errors_csv(errors: Sequence[dict[str, Any]], path: Path) -> None:
    """Write misclassified photos, most confident mistakes first."""
    ordered = sorted(errors, key=lambda e: -e["confidence"])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "true", "predicted", "confidence"])
        writer.writeheader()
        writer.writerows(ordered)


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
