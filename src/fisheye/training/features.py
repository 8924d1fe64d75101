"""Pooled features of a pretrained backbone for manifest rows, seen through views, cached.

The probe, the data check, the embedding grouping and the probe benchmarks all read
features here: one Predictor over the backbone's ImageNet weights (`imagenet_predictor`),
one cache keyed by the photos' content hashes, the architecture, the backend and the view.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fisheye.bundle import save_bundle
from fisheye.data import composites, corruptions
from fisheye.data.manifest import ManifestRow
from fisheye.data.preprocess import Preprocessing
from fisheye.inference.export import export_onnx
from fisheye.inference.predictor import Predictor
from fisheye.models.backbones import BACKBONES, build_model

log = logging.getLogger(__name__)

DEFAULT_ARCH = "efficientnet_lite0"


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
# "composite-K": the K-th view with each fish on a drawn background (fisheye.data.composites).
COMPOSITE = "composite-"
_SEEDED_VIEWS = {
    CORRUPTED: (corruptions.RandomCorruption, corruptions.VERSION),
    COMPOSITE: (composites.RandomComposite, composites.VERSION),
}


def view_transform(view: str, spec: Preprocessing) -> Callable[[np.ndarray], np.ndarray]:
    """The batch transform of a view: one of VIEWS, a corrupted or a composite view."""
    if view in VIEWS:
        return VIEWS[view]
    for prefix, (transform, _) in _SEEDED_VIEWS.items():
        if view.startswith(prefix) and view[len(prefix) :].isdigit():
            return transform(spec, seed=int(view[len(prefix) :]))
    choices = sorted(set(VIEWS) - {"identity"})
    raise ValueError(
        f"unknown view {view!r}; choose from {choices}, {CORRUPTED}<n> or {COMPOSITE}<n>"
    )


def _cache_key(
    arch: str,
    backend: str,
    rows: Sequence[ManifestRow],
    view: str = "identity",
    spec: Preprocessing | None = None,
) -> str:
    for prefix, (_, version) in _SEEDED_VIEWS.items():
        if view.startswith(prefix):
            view = f"{view}|{version}"
    prefix = f"{arch}|{backend}|" if view == "identity" else f"{arch}|{backend}|{view}|"
    if spec is not None and spec != Preprocessing():
        # Keys of the default preprocessing stay as they were, so existing caches stay valid.
        prefix += json.dumps(spec.to_dict(), sort_keys=True) + "|"
    digest = hashlib.sha256(prefix.encode())
    for r in rows:
        digest.update(r.sha256.encode())
    return digest.hexdigest()[:20]


def default_preprocessing(arch: str, resize: str = "squash") -> Preprocessing:
    """The preprocessing a backbone's ImageNet weights expect: its own input size."""
    if arch not in BACKBONES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(BACKBONES)}")
    return Preprocessing(input_size=BACKBONES[arch].input_size, resize=resize)


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
    spec = spec or default_preprocessing(arch)
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


def backbone_features(
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
        key = _cache_key(
            predictor.bundle.architecture,
            predictor.backend_name,
            rows,
            view,
            predictor.preprocessing,
        )
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
