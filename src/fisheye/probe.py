"""Linear probes on frozen backbone features: a quick model, and out-of-fold probabilities.

A probe keeps a backbone's ImageNet weights and fits only the linear head (multinomial
logistic regression on the pooled penultimate features, the regularisation chosen on val).
It trains in minutes on a CPU where fine-tuning takes hours, which makes it the recipe of
the default model on a shared CPU, the baseline of every fine-tune, and the source of the
out-of-fold probabilities that `fisheye data check` gives cleanlab.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cleanlab import Datalab
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from fisheye.bundle import read_meta, save_bundle, update_meta
from fisheye.data import corruptions
from fisheye.data.grouping import DEFAULT_COSINE_THRESHOLD, group_by_embedding
from fisheye.data.manifest import ManifestRow, manifest_hash
from fisheye.data.pipelines import Grouper
from fisheye.data.preprocess import Preprocessing
from fisheye.data.progress import NO_PROGRESS, Progress
from fisheye.inference.export import export_onnx
from fisheye.inference.predictor import Predictor
from fisheye.inference.scoring import macro_f1
from fisheye.models.backbones import build_model
from fisheye.records import record_calibration, record_training_photos

log = logging.getLogger(__name__)

DEFAULT_ARCH = "efficientnet_lite0"
C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass
class PhotoFeatures:
    """Pooled penultimate features of photos (rows in input order; unreadable ones dropped)."""

    rows: list[ManifestRow]
    features: np.ndarray  # (N, D) float32
    unreadable: list[tuple[Path, str]]


# Flips of the preprocessed (N, 3, H, W) batch: the copies in the fish set are flips and
# rotations, so these views are what test-time or feature-space augmentation can use.
VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda b: b,
    "hflip": lambda b: np.ascontiguousarray(b[..., ::-1]),
    "vflip": lambda b: np.ascontiguousarray(b[..., ::-1, :]),
    "rot180": lambda b: np.ascontiguousarray(b[..., ::-1, ::-1]),
}
# "corrupted-K": the K-th randomly corrupted view (fisheye.data.corruptions, seeded by K).
CORRUPTED = "corrupted-"


def view_transform(view: str, spec: Preprocessing) -> Callable[[np.ndarray], np.ndarray]:
    """The batch transform of a view: one of VIEWS or a corrupted view."""
    if view in VIEWS:
        return VIEWS[view]
    if view.startswith(CORRUPTED) and view[len(CORRUPTED) :].isdigit():
        return corruptions.RandomCorruption(spec, seed=int(view[len(CORRUPTED) :]))
    choices = sorted(set(VIEWS) - {"identity"})
    raise ValueError(f"unknown view {view!r}; choose from {choices} or {CORRUPTED}<n>")


def _cache_key(arch: str, backend: str, rows: Sequence[ManifestRow], view: str = "identity") -> str:
    if view.startswith(CORRUPTED):
        view = f"{view}|{corruptions.VERSION}"
    prefix = f"{arch}|{backend}|" if view == "identity" else f"{arch}|{backend}|{view}|"
    digest = hashlib.sha256(prefix.encode())
    for r in rows:
        digest.update(r.sha256.encode())
    return digest.hexdigest()[:20]


def imagenet_predictor(
    classes: Sequence[str],
    arch: str = DEFAULT_ARCH,
    backend: str = "onnx",
    spec: Preprocessing | None = None,
    work_dir: Path | None = None,
) -> Predictor:
    """A Predictor over the backbone's ImageNet weights (random head) for feature extraction.

    `backend="onnx"` exports the network first (ONNX Runtime extracts features about three
    times faster than eager PyTorch on a CPU).
    """
    spec = spec or Preprocessing()
    n_classes = len(classes)
    net = build_model(arch, n_classes, pretrained=True, input_size=spec.input_size).eval()
    work = Path(work_dir or tempfile.mkdtemp(prefix="fisheye-probe-"))
    bundle_dir = save_bundle(
        work / "imagenet",
        net,
        classes=list(classes),
        preprocessing=spec,
        architecture=arch,
        architecture_config={"num_classes": n_classes, "input_size": spec.input_size},
        name=f"{arch}-imagenet",
    )
    if backend == "onnx":
        # Its accuracy would mean nothing: the head is not trained.
        export_onnx(bundle_dir, repeats=1, measure_accuracy=False)
    return Predictor.from_dir(bundle_dir, backend=backend)


def extract_features(
    predictor: Predictor,
    rows: Sequence[ManifestRow],
    *,
    cache_dir: Path | None = None,
    batch_size: int = 32,
    view: str = "identity",
    on_done: Callable[[int], None] | None = None,
) -> PhotoFeatures:
    """Features of `rows` (seen through a view), cached under cache_dir by content hashes."""
    rows = list(rows)
    transform = view_transform(view, predictor.preprocessing)
    cache = None
    if cache_dir is not None:
        key = _cache_key(predictor.bundle.architecture, predictor.backend_name, rows, view)
        cache = Path(cache_dir) / f"features_{key}.npz"
        if cache.is_file():
            data = np.load(cache)
            keep = data["keep"]
            kept = [r for r, k in zip(rows, keep, strict=True) if k]
            bad = [(r.path, "unreadable") for r, k in zip(rows, keep, strict=True) if not k]
            log.info("features of %d photos read from %s", len(kept), cache)
            if on_done is not None:
                on_done(len(rows))
            return PhotoFeatures(kept, data["features"], bad)
    feats: list[np.ndarray] = []
    keep = np.zeros(len(rows), dtype=bool)
    unreadable: list[tuple[Path, str]] = []
    outputs = predictor.run_files(
        [r.path for r in rows], batch_size=batch_size, transform=transform, on_done=on_done
    )
    for i, out in enumerate(outputs):
        if out.features is None:
            log.warning("skipping %s: %s", out.path, out.error)
            unreadable.append((out.path, out.error or "unreadable"))
            continue
        keep[i] = True
        feats.append(out.features)
    features = np.stack(feats).astype(np.float32) if feats else np.zeros((0, 0), np.float32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, features=features, keep=keep)
    return PhotoFeatures([r for r, k in zip(rows, keep, strict=True) if k], features, unreadable)


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
    on_done: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Fit a linear head on frozen ImageNet features of the train rows and write a bundle.

    `augment_views` (names of VIEWS, e.g. "hflip") add the features of those views of the
    train photos as further training samples, and `augment_corruptions` that many randomly
    corrupted views of each (fisheye.data.corruptions); val and test are scored as served
    (one plain view). C is chosen on val; the bundle records its training photos, its temperature
    (fitted on val) and the grouped test figures (when there are test rows). Returns its
    metrics.
    """
    unknown = sorted(set(augment_views) - (set(VIEWS) - {"identity"}))
    if unknown:
        raise ValueError(
            f"unknown view(s) {unknown}; choose from {sorted(set(VIEWS) - {'identity'})}"
        )
    if augment_corruptions < 0:
        raise ValueError(f"augment_corruptions must be 0 or more, got {augment_corruptions}")
    views = [*augment_views, *(f"{CORRUPTED}{k}" for k in range(1, augment_corruptions + 1))]
    rows = list(rows)
    classes = sorted({r.label for r in rows})
    class_index = {c: i for i, c in enumerate(classes)}
    with tempfile.TemporaryDirectory(prefix="fisheye-probe-") as work:
        predictor = imagenet_predictor(classes, arch, backend, work_dir=Path(work))
        feats = extract_features(predictor, rows, cache_dir=cache_dir, on_done=on_done)
        extra = [
            extract_features(predictor, feats.rows, cache_dir=cache_dir, view=v) for v in views
        ]
        net = predictor.bundle.build_model()
        spec = predictor.preprocessing
        config = dict(predictor.bundle.meta["architecture"]["config"])
    x_train, y_train, _ = _split_arrays(feats, class_index, "train")
    x_val, y_val, _ = _split_arrays(feats, class_index, "val")
    x_test, y_test, test_rows = _split_arrays(feats, class_index, "test")
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
                "head": "multinomial logistic regression on standardised pooled features",
                "augment_views": list(augment_views),
                "augment_corruptions": augment_corruptions,
                "corruption_families": sorted(corruptions.FAMILIES) if augment_corruptions else [],
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


def embedding_grouper(
    distance_threshold: float = DEFAULT_COSINE_THRESHOLD,
    *,
    arch: str = DEFAULT_ARCH,
    backend: str = "onnx",
    cache_dir: Path | None = None,
) -> Grouper:
    """A grouper for `import_dataset`: clusters the backbone's ImageNet features (cosine)."""

    def group(rows: list[ManifestRow], progress: Progress = NO_PROGRESS) -> list[ManifestRow]:
        classes = sorted({r.label for r in rows})
        with tempfile.TemporaryDirectory(prefix="fisheye-embed-") as work:
            predictor = imagenet_predictor(classes, arch, backend, work_dir=Path(work))
            with progress.task("Embedding photos for grouping", len(rows)) as advance:
                feats = extract_features(predictor, rows, cache_dir=cache_dir, on_done=advance)
        grouped = group_by_embedding(
            feats.rows, feats.features, distance_threshold=distance_threshold
        )
        by_path = {r.path: r.group for r in grouped}
        # Photos the model could not read get a group of their own.
        return [
            replace(r, group=by_path.get(r.path, f"unread-{i:05d}")) for i, r in enumerate(rows)
        ]

    return group


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
        feats = extract_features(predictor, rows, cache_dir=cache_dir, on_done=on_done)
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
