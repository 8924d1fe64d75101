"""The drift reference stored in a bundle: reference features, kernel bandwidth, OOD statistics.

`fit_reference` runs a sample of training photos through the Predictor (one model call gives
probabilities and penultimate features), fits the OOD scorer on them, calibrates its
threshold on validation photos, and `save_reference` writes everything to one safetensors
file recorded (with its sha256) in bundle.json.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fisheye.bundle import Bundle, add_file
from fisheye.data.images import ImageDecodeError
from fisheye.inference.files import collect_image_paths
from fisheye.monitoring.drift import DEFAULT_ALPHA, DEFAULT_PERMUTATIONS, DriftDetector
from fisheye.monitoring.ood import DEFAULT_COMPONENTS, DEFAULT_FALSE_ALARM_RATE, OODScorer

if TYPE_CHECKING:
    from fisheye.inference.predictor import Predictor

log = logging.getLogger(__name__)

DRIFT_FILE = "drift_reference.safetensors"
DRIFT_KIND = "drift_reference"
# Backends whose features are the fp32 model's own (the ONNX fp32 export matches torch to
# ~1e-5): they share one reference. Quantised backends (int8) get their own: their features
# differ by ~19% (relative L2), enough to flag in-distribution photos as drift.
FP32_BACKENDS = ("torch", "onnx")
DEFAULT_REFERENCE_SIZE = 500
DEFAULT_FIT_SIZE = 1500


@dataclass
class Features:
    """Features (and predictions) for the photos that could be read."""

    paths: list[Path]
    features: np.ndarray  # (N, D)
    probabilities: np.ndarray  # (N, C)
    labels: list[str | None]  # the folder's class when known
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def labelled_paths(root: Path, classes: Sequence[str]) -> list[tuple[Path, str | None]]:
    """Photos under `root`, labelled by their first folder when it is one of `classes`."""
    known = set(classes)
    out: list[tuple[Path, str | None]] = []
    for p in collect_image_paths([root]):
        parts = p.relative_to(root).parts
        out.append((p, parts[0] if len(parts) > 1 and parts[0] in known else None))
    return out


def sample(items: Sequence[Any], n: int | None, seed: int) -> list[Any]:
    """A seeded random sample of at most n items (all of them, shuffled, when n is None)."""
    items = list(items)
    random.Random(seed).shuffle(items)
    return items if n is None else items[:n]


def extract_features(
    predictor: Predictor,
    items: Sequence[tuple[Path, str | None]],
    *,
    batch_size: int = 32,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> Features:
    """Penultimate features and probabilities for photos; unreadable ones are reported."""
    paths: list[Path] = []
    labels: list[str | None] = []
    feats: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    unreadable: list[tuple[Path, str]] = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        tensors = []
        for path, label in chunk:
            try:
                tensors.append(predictor.to_tensor(predictor.decode(path)))
            except ImageDecodeError as exc:
                log.warning("skipping %s: %s", path, exc)
                unreadable.append((path, str(exc)))
                continue
            paths.append(path)
            labels.append(label)
        if tensors:
            batch = torch.stack(tensors)
            if transform is not None:
                batch = transform(batch)
            out = predictor.infer(batch)
            feats.append(out.features)
            probs.append(out.probabilities)
        if on_done:
            on_done(len(chunk))
    dim = 0
    return Features(
        paths,
        np.concatenate(feats) if feats else np.zeros((0, dim), np.float32),
        np.concatenate(probs) if probs else np.zeros((0, len(predictor.classes)), np.float32),
        labels,
        unreadable,
    )


@dataclass
class Monitor:
    """A bundle's fitted monitoring: the batch drift detector and the per-photo OOD scorer."""

    drift: DriftDetector
    ood: OODScorer
    info: dict[str, Any] = field(default_factory=dict)
    backend: str = "torch"  # the backend whose features the reference was fitted on
    serving_backend: str | None = None  # the backend it is used with (None: not known)

    @property
    def matches_backend(self) -> bool:
        """Whether the reference was fitted on features of the backend that uses it."""
        return self.serving_backend is None or reference_family(
            self.serving_backend
        ) == reference_family(self.backend)

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """OOD scores and in-distribution flags for a batch of features."""
        scores = self.ood.score(features)
        return scores, self.ood.is_in_distribution(scores)


def fit_monitor(
    train: Features,
    val: Features | None,
    classes: Sequence[str],
    *,
    reference_size: int = DEFAULT_REFERENCE_SIZE,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    n_components: int = DEFAULT_COMPONENTS,
    seed: int = 0,
) -> Monitor:
    """Fit the drift reference and the OOD scorer; calibrate on val (or held-out train)."""
    x = train.features
    finite = np.isfinite(x).all(axis=1)
    x = x[finite]
    if len(x) < 4:
        raise ValueError(f"need at least 4 readable training photos, got {len(x)}")
    pred = np.asarray(classes)[train.probabilities[finite].argmax(axis=1)]
    labels = np.array(
        [
            lab if lab is not None else p
            for lab, p in zip([train.labels[i] for i in np.flatnonzero(finite)], pred, strict=True)
        ]
    )
    if val is not None and len(val.features) >= 2:
        fit_x, fit_y, calib = x, labels, val.features
        calib_source = "val"
    else:
        # No validation photos: hold out a fifth of the training sample for calibration.
        order = np.random.default_rng(seed).permutation(len(x))
        cut = max(2, len(x) // 5)
        calib, fit_x, fit_y = x[order[:cut]], x[order[cut:]], labels[order[cut:]]
        calib_source = "held-out train"
        log.warning("no validation photos: calibrating the OOD threshold on %d train photos", cut)
    ood = OODScorer.fit(fit_x, fit_y, n_components=n_components)
    calib_scores = ood.score(calib)
    ood.calibrate(calib_scores, false_alarm_rate)
    ref = x[: min(reference_size, len(x))]
    drift = DriftDetector(ref)
    info = {
        "n_reference": int(len(ref)),
        "n_fit": int(len(fit_x)),
        "n_calibration": int(len(calib)),
        "calibration": calib_source,
        "calibration_false_alarm_rate": float(np.mean(calib_scores > ood.threshold)),
    }
    return Monitor(drift, ood, info)


def reference_family(backend: str) -> str:
    """Backends with the same features share a reference: torch and onnx are both fp32."""
    return "torch" if backend in FP32_BACKENDS else backend


def reference_file(backend: str) -> str:
    """The drift reference's file name for a backend (the fp32 one keeps the plain name)."""
    family = reference_family(backend)
    return DRIFT_FILE if family == "torch" else f"drift_reference.{family}.safetensors"


def reference_entries(meta: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Backend family -> (file name, bundle.json entry) for each drift reference in a bundle.

    An entry without `features_backend` predates per-backend references; it was fitted on torch.
    """
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, entry in meta.get("files", {}).items():
        if entry.get("kind") == DRIFT_KIND:
            found[reference_family(entry.get("features_backend", "torch"))] = (name, entry)
    return found


def save_reference(
    bundle_dir: Path, monitor: Monitor, *, data: str | None = None, backend: str | None = None
) -> Path:
    """Write the monitor's arrays into the bundle and record the file in bundle.json."""
    bundle_dir = Path(bundle_dir)
    backend = reference_family(backend or monitor.backend)
    file_name = reference_file(backend)
    ood = monitor.ood
    tensors = {
        # float16 halves the file; the MMD test is insensitive at this precision.
        "reference": monitor.drift.reference.to(torch.float16).contiguous(),
        "class_means": torch.from_numpy(ood.class_means).contiguous(),
        "components": torch.from_numpy(ood.components).contiguous(),
        "eigenvalues": torch.from_numpy(ood.eigenvalues).contiguous(),
        "calibration_scores": torch.from_numpy(
            np.asarray(ood.calibration_scores, dtype=np.float32)
        ).contiguous(),
    }
    path = bundle_dir / file_name
    tmp = bundle_dir / f".{file_name}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # safetensors writes owner-only files; bundles are shared
    tmp.replace(path)
    add_file(
        bundle_dir,
        file_name,
        kind=DRIFT_KIND,
        # Not `backend`: that key marks an exported model form (inference.backends).
        features_backend=backend,
        bandwidth=monitor.drift.bandwidth,
        n_permutations=monitor.drift.n_permutations,
        alpha=monitor.drift.alpha,
        ood={
            "method": "mahalanobis_shared_cov_ledoit_wolf_ppca",
            "threshold": ood.threshold,
            "false_alarm_rate": ood.false_alarm_rate,
            "residual_variance": ood.residual_variance,
        },
        fitted={**monitor.info, "data": data, "created": datetime.now(UTC).isoformat()},
    )
    log.info("drift reference written to %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def load_monitor(
    bundle: Bundle,
    *,
    backend: str | None = None,
    false_alarm_rate: float | None = None,
    n_permutations: int | None = None,
    alpha: float | None = None,
) -> Monitor | None:
    """The bundle's monitor for `backend`'s features, or None when it has no drift reference.

    Picks the reference fitted on the same backend (torch and onnx share the fp32 one). When
    there is none for `backend`, it falls back to another one with a warning and the monitor
    says so (`matches_backend` is False): expect false drift and OOD alarms then.
    """
    entries = reference_entries(bundle.meta)
    if not entries:
        return None
    wanted = reference_family(backend) if backend else "torch"
    if wanted in entries:
        family = wanted
    else:
        family = "torch" if "torch" in entries else sorted(entries)[0]
        log.warning(
            "the bundle %s has no drift reference for the %s backend (it has: %s); using the "
            "%s one, whose features differ: drift and OOD verdicts will be unreliable. Fit one "
            "with `fisheye drift fit --model %s --backend %s --data <training photos>`",
            bundle.path,
            backend,
            ", ".join(sorted(entries)),
            family,
            bundle.path,
            backend,
        )
    file_name, entry = entries[family]
    t = load_file(str(bundle.path / file_name))
    o = entry["ood"]
    ood = OODScorer(
        class_means=t["class_means"].numpy(),
        components=t["components"].numpy(),
        eigenvalues=t["eigenvalues"].numpy(),
        residual_variance=float(o["residual_variance"]),
        threshold=float(o["threshold"]),
        false_alarm_rate=float(o["false_alarm_rate"]),
        calibration_scores=t["calibration_scores"].numpy(),
    )
    if false_alarm_rate is not None and false_alarm_rate != ood.false_alarm_rate:
        ood.calibrate(ood.calibration_scores, false_alarm_rate)
    drift = DriftDetector(
        t["reference"].float(),
        entry["bandwidth"],
        n_permutations=n_permutations or int(entry.get("n_permutations", DEFAULT_PERMUTATIONS)),
        alpha=alpha or float(entry.get("alpha", DEFAULT_ALPHA)),
    )
    return Monitor(drift, ood, dict(entry.get("fitted", {})), family, backend)


def resolve_val_dir(data: Path, val: Path | None) -> tuple[Path, Path | None]:
    """(train, val) folders: data/train + data/val, or data + its sibling val/, or --val."""
    if val is not None:
        return data, val
    if (data / "train").is_dir():
        return data / "train", (data / "val") if (data / "val").is_dir() else None
    sibling = data.parent / "val"
    if data.name == "train" and sibling.is_dir():
        return data, sibling
    return data, None


def fit_bundle(
    predictor: Predictor,
    train_items: Sequence[tuple[Path, str | None]],
    val_items: Sequence[tuple[Path, str | None]] | None,
    *,
    fit_size: int = DEFAULT_FIT_SIZE,
    reference_size: int = DEFAULT_REFERENCE_SIZE,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    seed: int = 0,
    data: str | None = None,
    on_done: Callable[[int], None] | None = None,
) -> Monitor:
    """Extract features, fit, and save the drift reference into the predictor's bundle.

    The reference is fitted on the predictor's backend and stored for it (`reference_file`).
    """
    train = extract_features(predictor, sample(train_items, fit_size, seed), on_done=on_done)
    val = extract_features(predictor, list(val_items), on_done=on_done) if val_items else None
    dim = train.features.shape[1] if train.features.size else 0
    n_components = min(DEFAULT_COMPONENTS, max(1, dim - 1))
    monitor = fit_monitor(
        train,
        val,
        predictor.classes,
        reference_size=reference_size,
        false_alarm_rate=false_alarm_rate,
        n_components=n_components,
        seed=seed,
    )
    monitor.backend = reference_family(predictor.backend_name)
    monitor.serving_backend = predictor.backend_name
    save_reference(predictor.bundle.path, monitor, data=data)
    return monitor
