"""`fisheye data check`: likely label errors and outliers, found by cleanlab on a probe's output."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cleanlab import Datalab

from fisheye.data.manifest import ManifestRow
from fisheye.training.features import DEFAULT_ARCH, backbone_features, imagenet_predictor
from fisheye.training.probe import out_of_fold_probabilities


@dataclass
class DataIssues:
    """What `fisheye data check` found: one record per photo with an issue, and counts."""

    n_photos: int
    label_issues: list[dict[str, Any]]
    outliers: list[dict[str, Any]]
    oof_accuracy: float
    unreadable: list[tuple[Path, str]]


def check_data(
    rows: Sequence[ManifestRow],
    *,
    arch: str = DEFAULT_ARCH,
    backend: str = "onnx",
    cache_dir: Path | None = None,
    folds: int = 5,
    c: float = 1.0,
    on_done: Callable[[int], None] | None = None,
) -> DataIssues:
    """Likely label errors and outliers (cleanlab's Datalab) from a probe's out-of-fold output.

    Each photo's probabilities come from a linear probe that never saw its near-duplicate
    group (rows need `group` set), so copies of a mislabelled photo cannot vouch for it.
    """
    rows = list(rows)
    classes = sorted({r.label for r in rows})
    index = {name: i for i, name in enumerate(classes)}
    with tempfile.TemporaryDirectory(prefix="fisheye-check-") as work:
        predictor = imagenet_predictor(classes, arch, backend, work_dir=Path(work))
        feats = backbone_features(predictor, rows, cache_dir=cache_dir, on_done=on_done)
    labels = np.asarray([index[r.label] for r in feats.rows])
    groups = [r.group or str(r.path) for r in feats.rows]
    oof = out_of_fold_probabilities(feats.features, labels, groups, len(classes), folds=folds, c=c)
    normed = feats.features / np.maximum(
        np.linalg.norm(feats.features, axis=1, keepdims=True), 1e-12
    )
    lab = Datalab(data={"label": [r.label for r in feats.rows]}, label_name="label", verbosity=0)
    lab.find_issues(pred_probs=oof, features=normed, issue_types={"label": {}, "outlier": {}})
    issues = lab.get_issues()
    label_issues, outliers = [], []
    for i, rec in enumerate(issues.to_dict("records")):
        base = {
            "path": str(feats.rows[i].path),
            "given": feats.rows[i].label,
            "predicted": classes[int(oof[i].argmax())],
            "group": feats.rows[i].group,
        }
        if rec.get("is_label_issue"):
            label_issues.append({**base, "label_score": round(float(rec["label_score"]), 6)})
        if rec.get("is_outlier_issue"):
            outliers.append({**base, "outlier_score": round(float(rec["outlier_score"]), 6)})
    label_issues.sort(key=lambda r: r["label_score"])
    outliers.sort(key=lambda r: r["outlier_score"])
    return DataIssues(
        n_photos=len(feats.rows),
        label_issues=label_issues,
        outliers=outliers,
        oof_accuracy=float((oof.argmax(1) == labels).mean()),
        unreadable=feats.unreadable,
    )
