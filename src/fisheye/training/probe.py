"""Linear probes on frozen backbone features: a quick model, and out-of-fold probabilities.

A probe keeps a backbone's ImageNet weights and fits only the linear head (multinomial
logistic regression on the pooled penultimate features, the regularisation chosen on val).
It trains in minutes on a CPU where fine-tuning takes hours, which makes it the recipe of
the default model on a shared CPU, the baseline of every fine-tune, and the source of the
out-of-fold probabilities that `fisheye data check` gives cleanlab.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from fisheye.bundle import read_meta, save_bundle, update_meta
from fisheye.data import composites, corruptions
from fisheye.data.manifest import ManifestRow, manifest_hash
from fisheye.data.preprocess import Preprocessing
from fisheye.inference.scoring import macro_f1
from fisheye.training.features import (
    COMPOSITE,
    CORRUPTED,
    DEFAULT_ARCH,
    VIEWS,
    PhotoFeatures,
    backbone_features,
    imagenet_predictor,
)
from fisheye.training.records import record_calibration, record_training_photos

log = logging.getLogger(__name__)

C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass
class LinearHead:
    """A linear classifier on raw features: logits = features @ weight.T + bias."""

    weight: np.ndarray  # (classes, D)
    bias: np.ndarray  # (classes,)
    c: float  # the inverse regularisation strength it was fitted with

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Class scores for (N, D) features."""
        return features.astype(np.float64) @ self.weight.T + self.bias

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Softmax of the logits, float32."""
        z = self.logits(features)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def fit_linear_head(
    features: np.ndarray, labels: np.ndarray, n_classes: int, c: float = 1.0, seed: int = 0
) -> LinearHead:
    """Multinomial logistic regression on standardised features, folded back to raw features."""
    x = features.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(C=c, max_iter=3000, random_state=seed)
    model.fit((x - mean) / std, labels)
    weight = np.zeros((n_classes, x.shape[1]))
    bias = np.full(n_classes, -1e4)  # a class absent from training is never predicted
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # one row for two classes: logits -z/2 and z/2
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    for row, cls in enumerate(model.classes_):
        weight[cls] = coef[row] / std
        bias[cls] = intercept[row] - float(np.dot(coef[row], mean / std))
    return LinearHead(weight, bias, c)


def select_linear_head(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    n_classes: int,
    grid: Sequence[float] = C_GRID,
    seed: int = 0,
) -> tuple[LinearHead, dict[float, float]]:
    """The head whose C gives the best val accuracy (ties: lower val log-loss); val acc per C."""
    best: tuple[float, float, LinearHead] | None = None
    scores: dict[float, float] = {}
    for c in grid:
        head = fit_linear_head(*train, n_classes, c, seed)
        probs = head.probabilities(val[0])
        acc = float((probs.argmax(axis=1) == val[1]).mean())
        nll = float(-np.mean(np.log(np.maximum(probs[np.arange(len(val[1])), val[1]], 1e-30))))
        scores[c] = acc
        if best is None or (acc, -nll) > (best[0], best[1]):
            best = (acc, -nll, head)
    assert best is not None
    return best[2], scores


def out_of_fold_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    n_classes: int,
    *,
    folds: int = 5,
    c: float = 1.0,
) -> np.ndarray:
    """Probabilities of each photo from a linear probe that never saw its group (GroupKFold)."""
    n_folds = min(folds, len(set(groups)))
    if n_folds < 2:
        raise ValueError("out-of-fold probabilities need photos of at least 2 groups")
    out = np.zeros((len(labels), n_classes), np.float32)
    for train_idx, test_idx in GroupKFold(n_splits=n_folds).split(features, labels, groups):
        head = fit_linear_head(features[train_idx], labels[train_idx], n_classes, c)
        out[test_idx] = head.probabilities(features[test_idx])
    return out


def _split_arrays(
    feats: PhotoFeatures, class_index: dict[str, int], split: str
) -> tuple[np.ndarray, np.ndarray, list[ManifestRow]]:
    idx = [i for i, r in enumerate(feats.rows) if r.split == split]
    labels = np.asarray([class_index[feats.rows[i].label] for i in idx], dtype=int)
    return feats.features[idx], labels, [feats.rows[i] for i in idx]


def served_preprocessing(trained: Preprocessing, crop_fraction: float) -> Preprocessing:
    """The preprocessing a probe trained with `trained` is served with, at `crop_fraction`."""
    if trained.resize != "center_crop":
        raise ValueError("a served crop fraction needs centre-crop preprocessing")
    if not 0.3 <= crop_fraction <= 1.0:
        raise ValueError(f"the served crop fraction must be in [0.3, 1], got {crop_fraction}")
    return dataclasses.replace(trained, crop_fraction=crop_fraction)


def train_probe(
    rows: Sequence[ManifestRow],
    root: Path,
    out_dir: Path,
    *,
    arch: str = DEFAULT_ARCH,
    backend: str = "onnx",
    name: str = "fisheye-probe",
    cache_dir: Path | None = None,
    seed: int = 0,
    command: str | None = None,
    augment_views: Sequence[str] = (),
    augment_corruptions: int = 0,
    augment_composites: int = 0,
    preprocessing: Preprocessing | None = None,
    serve_crop_fraction: float | None = None,
    on_done: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Fit a linear head on frozen ImageNet features of the train rows and write a bundle.

    `augment_views` (names of VIEWS, e.g. "hflip") add the features of those views of the
    train photos as further training samples, and `augment_corruptions` that many randomly
    corrupted views of each (fisheye.data.corruptions), `augment_composites` that many views
    with each fish on a drawn background (fisheye.data.composites); val and test are scored
    as served (one plain view). `preprocessing` defaults to the backbone's own input size, squashed.
    `serve_crop_fraction` (centre crop only) serves the model with a tighter crop than it was
    trained on: val and test are scored, and the bundle records, that crop.
    C is chosen on val; the bundle records its training photos, its temperature
    (fitted on val) and the grouped test figures (when there are test rows). Returns its
    metrics.
    """
    unknown = sorted(set(augment_views) - (set(VIEWS) - {"identity"}))
    if unknown:
        raise ValueError(
            f"unknown view(s) {unknown}; choose from {sorted(set(VIEWS) - {'identity'})}"
        )
    for name_, count in (("corruptions", augment_corruptions), ("composites", augment_composites)):
        if count < 0:
            raise ValueError(f"augment_{name_} must be 0 or more, got {count}")
    views = [
        *augment_views,
        *(f"{CORRUPTED}{k}" for k in range(1, augment_corruptions + 1)),
        *(f"{COMPOSITE}{k}" for k in range(1, augment_composites + 1)),
    ]
    rows = list(rows)
    classes = sorted({r.label for r in rows})
    class_index = {c: i for i, c in enumerate(classes)}
    with tempfile.TemporaryDirectory(prefix="fisheye-probe-") as work:
        predictor = imagenet_predictor(
            classes, arch, backend, spec=preprocessing, work_dir=Path(work)
        )
        feats = backbone_features(predictor, rows, cache_dir=cache_dir, on_done=on_done)
        extra = [
            backbone_features(predictor, feats.rows, cache_dir=cache_dir, view=v, on_done=on_done)
            for v in views
        ]
        net = predictor.bundle.build_model()
        spec = trained_spec = predictor.preprocessing
        config = dict(predictor.bundle.meta["architecture"]["config"])
        served_feats = feats
        if serve_crop_fraction is not None:
            spec = served_preprocessing(trained_spec, serve_crop_fraction)
            served = imagenet_predictor(
                classes, arch, backend, spec=spec, work_dir=Path(work) / "served"
            )
            held_out = [r for r in feats.rows if r.split in ("val", "test")]
            served_feats = backbone_features(served, held_out, cache_dir=cache_dir, on_done=on_done)
    x_train, y_train, _ = _split_arrays(feats, class_index, "train")
    x_val, y_val, _ = _split_arrays(served_feats, class_index, "val")
    x_test, y_test, test_rows = _split_arrays(served_feats, class_index, "test")
    if not len(y_train) or not len(y_val):
        raise ValueError("a probe needs train and val photos; split the data first")
    for view_feats in extra:
        x_view, y_view, _ = _split_arrays(view_feats, class_index, "train")
        x_train, y_train = np.concatenate([x_train, x_view]), np.concatenate([y_train, y_view])
    head, val_by_c = select_linear_head((x_train, y_train), (x_val, y_val), len(classes), seed=seed)
    log.info("linear probe: val accuracy by C %s; chose C=%g", val_by_c, head.c)

    with torch.no_grad():
        net.head.weight.copy_(torch.from_numpy(head.weight.astype(np.float32)))
        net.head.bias.copy_(torch.from_numpy(head.bias.astype(np.float32)))
    val_probs = head.probabilities(x_val)
    metrics = {
        "val_acc": round(float((val_probs.argmax(1) == y_val).mean()), 6),
        "val_macro_f1": round(macro_f1(y_val, val_probs.argmax(1), len(classes)), 6),
    }
    bundle_dir = save_bundle(
        Path(out_dir),
        net,
        classes=classes,
        preprocessing=spec,
        architecture=arch,
        architecture_config=config,
        metrics=metrics,
        data={
            "root": str(root),
            "counts": {s: sum(r.split == s for r in feats.rows) for s in ("train", "val", "test")},
        },
        name=name,
        extra={
            "training": {
                "recipe": "linear_probe",
                "command": command,
                "backbone": f"{arch} ImageNet weights, frozen",
                "train_crop_fraction": trained_spec.crop_fraction,
                "head": "multinomial logistic regression on standardised pooled features",
                "augment_views": list(augment_views),
                "augment_corruptions": augment_corruptions,
                "corruption_families": sorted(corruptions.FAMILIES) if augment_corruptions else [],
                "augment_composites": augment_composites,
                "composite_backgrounds": sorted(composites.BACKGROUNDS)
                if augment_composites
                else [],
                "c": head.c,
                "val_acc_by_c": {str(k): round(v, 6) for k, v in val_by_c.items()},
                "unreadable": [str(p) for p, _ in feats.unreadable],
            }
        },
    )
    record_training_photos(bundle_dir, feats.rows, root)
    meta = read_meta(bundle_dir)
    update_meta(bundle_dir, data={**meta["data"], "manifest_hash": manifest_hash(feats.rows)})
    test = None
    if len(y_test):
        groups = [r.group or str(r.path) for r in test_rows]
        test = (head.probabilities(x_test), y_test, groups)
    metrics.update(record_calibration(bundle_dir, (val_probs, y_val), test))
    return metrics
