"""The drift reference stored in a bundle: reference features, kernel bandwidth, OOD statistics.

`fit_bundle` runs a sample of training photos through the Predictor (one model call gives
probabilities and penultimate features), fits the OOD scorer on them, calibrates its
threshold on validation photos, fits the shift temperature on validation photos clean and
randomly corrupted, and `save_reference` writes everything to one safetensors file
recorded (with its sha256) in bundle.json. `load_predictor` builds a Predictor that scores
every photo for OOD with the reference of its own backend and calibrates its confidence
for that distance.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load

from fisheye.bundle import Bundle, add_arrays, load_bundle
from fisheye.data.corruptions import RandomCorruption
from fisheye.data.images import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_PIXELS
from fisheye.inference import registry
from fisheye.inference.calibration import ShiftTemperature, fit_shift_temperature
from fisheye.inference.predictor import Predictor
from fisheye.inference.selection import open_backend
from fisheye.monitoring.drift import DEFAULT_ALPHA, DEFAULT_PERMUTATIONS, DriftDetector
from fisheye.monitoring.ood import DEFAULT_COMPONENTS, DEFAULT_FALSE_ALARM_RATE, OODScorer

log = logging.getLogger(__name__)

DRIFT_FILE = "drift_reference.safetensors"
DRIFT_KIND = "drift_reference"


@dataclass(frozen=True)
class FitOptions:
    """How a drift reference is fitted (`fisheye drift fit`, and `drift.*` in training)."""

    sample: int = 1500  # training photos whose features fit the OOD scorer
    # Of those, photos kept as the MMD reference: all of them by default. A smaller reference
    # makes every repeated test lean on one draw of it (docs/monitoring.md: 500 photos gave
    # 0.85 false alarms per 10,000 photos on a healthy stream, 1,500 gave 0.1).
    reference_size: int = 1500
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE  # OOD threshold, on val photos
    shifted_views: int = 3  # randomly corrupted views of each val photo (shift temperature)
    seed: int = 0


@dataclass
class Features:
    """Features (and predictions) for the photos that could be read."""

    paths: list[Path]
    features: np.ndarray  # (N, D)
    probabilities: np.ndarray  # (N, C)
    labels: list[str | None]  # the folder's class when known
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


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
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> Features:
    """Penultimate features and probabilities for photos; unreadable ones are reported."""
    label_of = {Path(p): label for p, label in items}
    paths: list[Path] = []
    labels: list[str | None] = []
    feats: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    unreadable: list[tuple[Path, str]] = []
    outputs = predictor.run_files(
        [p for p, _ in items], batch_size=batch_size, transform=transform, on_done=on_done
    )
    for out in outputs:
        if out.probabilities is None or out.features is None:
            log.warning("skipping %s: %s", out.path, out.error)
            unreadable.append((out.path, out.error or "unreadable"))
            continue
        paths.append(out.path)
        labels.append(label_of[out.path])
        feats.append(out.features)
        probs.append(out.probabilities)
    return Features(
        paths,
        np.stack(feats) if feats else np.zeros((0, 0), np.float32),
        np.stack(probs) if probs else np.zeros((0, len(predictor.classes)), np.float32),
        labels,
        unreadable,
    )


@dataclass
class Monitor:
    """A bundle's fitted monitoring: the batch drift detector and the per-photo OOD scorer."""

    drift: DriftDetector
    ood: OODScorer
    info: dict[str, Any] = field(default_factory=dict)
    backend: str = "torch"  # the feature family the reference was fitted on
    serving_backend: str | None = None  # the backend it is used with (None: not known)
    shift_temperature: ShiftTemperature | None = None  # None: fitted without labelled val

    @property
    def matches_backend(self) -> bool:
        """Whether the reference was fitted on features of the backend that uses it."""
        return self.serving_backend is None or registry.family(self.serving_backend) == (
            self.backend
        )

    def summary(self) -> str:
        """One line on how the monitor was fitted."""
        info = self.info
        return (
            f"{info['n_reference']} reference photos, OOD scorer fitted on {info['n_fit']}, "
            f"threshold {self.ood.threshold:.1f} ({info['calibration_false_alarm_rate']:.1%} "
            f"false alarms on {info['n_calibration']} {info['calibration']} photos)"
            + (
                ""
                if self.shift_temperature is None
                else f", shift temperature fitted on {info['shift_temperature_photos']} photos"
            )
        )

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """OOD scores and in-distribution flags for a batch of features."""
        scores = self.ood.score(features)
        return scores, self.ood.is_in_distribution(scores)


def fit_monitor(
    train: Features,
    val: Features | None,
    classes: Sequence[str],
    *,
    reference_size: int = FitOptions.reference_size,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    n_components: int = DEFAULT_COMPONENTS,
    seed: int = 0,
    backend: str = "torch",
    shifted: Sequence[Features] = (),
) -> Monitor:
    """Fit the drift reference and the OOD scorer; calibrate on val (or held-out train).

    `backend` is the backend whose features these are; the monitor records its family.
    With labelled val photos, the shift temperature is fitted on them and on `shifted`
    (corrupted views of the same photos).
    """
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
    # The class mix of the training sample: the prior of the class-mix (label shift) test.
    index = {c: i for i, c in enumerate(classes)}
    prior = np.bincount([index[c] for c in labels if c in index], minlength=len(classes))
    drift = DriftDetector(ref, class_prior=prior)
    info = {
        "n_reference": int(len(ref)),
        "n_fit": int(len(fit_x)),
        "n_calibration": int(len(calib)),
        "calibration": calib_source,
        "calibration_false_alarm_rate": float(np.mean(calib_scores > ood.threshold)),
    }
    shift = None
    if val is not None and calib_source == "val" and shifted:
        shift = _fit_shift(ood, [val, *shifted], index, info)
    return Monitor(drift, ood, info, registry.family(backend), backend, shift)


def _fit_shift(
    ood: OODScorer, views: list[Features], index: dict[str, int], info: dict[str, Any]
) -> ShiftTemperature | None:
    """The shift temperature from labelled val photos (views[0] clean, the rest corrupted)."""
    if any(lab not in index for v in views for lab in v.labels):
        log.warning("val photos without a known class: no shift temperature fitted")
        return None
    scores = ood.score(np.concatenate([v.features for v in views]))
    clean = scores[: len(views[0].features)]
    reference = float(np.median(np.log(np.maximum(clean, 1e-30))))
    shift = fit_shift_temperature(
        np.concatenate([v.probabilities for v in views]),
        np.array([index[lab] for v in views for lab in v.labels]),
        scores,
        reference,
    )
    info["shift_temperature_photos"] = int(len(scores))
    info["shift_temperature_views"] = len(views) - 1
    log.info(
        "shift temperature: factor exp(%.3f + %.3f * excess log OOD score), fitted on %d photos",
        shift.offset,
        shift.slope,
        len(scores),
    )
    return shift


def reference_file(backend: str) -> str:
    """The drift reference's file name for a backend (the fp32 one keeps the plain name)."""
    family = registry.family(backend)
    return DRIFT_FILE if family == "torch" else f"drift_reference.{family}.safetensors"


def reference_entries(meta: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Backend family -> (file name, bundle.json entry) for each drift reference in a bundle.

    An entry without `features_backend` predates per-backend references; it was fitted on torch.
    """
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, entry in meta.get("files", {}).items():
        if entry.get("kind") == DRIFT_KIND:
            found[registry.family(entry.get("features_backend", "torch"))] = (name, entry)
    return found


def save_reference(
    bundle_dir: Path, monitor: Monitor, *, data: str | None = None, backend: str | None = None
) -> Path:
    """Write the monitor's arrays into the bundle and record the file in bundle.json."""
    bundle_dir = Path(bundle_dir)
    backend = registry.family(backend or monitor.backend)
    file_name = reference_file(backend)
    ood = monitor.ood
    arrays = {
        # float16 halves the file; the MMD test is insensitive at this precision.
        "reference": np.ascontiguousarray(monitor.drift.reference, dtype=np.float16),
        "class_means": np.ascontiguousarray(ood.class_means, dtype=np.float32),
        "components": np.ascontiguousarray(ood.components, dtype=np.float32),
        "eigenvalues": np.ascontiguousarray(ood.eigenvalues, dtype=np.float32),
        "calibration_scores": np.ascontiguousarray(ood.calibration_scores, dtype=np.float32),
    }
    path = bundle_dir / file_name
    add_arrays(
        bundle_dir,
        file_name,
        arrays,
        {"format": "np"},
        kind=DRIFT_KIND,
        # Not `backend`: that key marks an exported model form (fisheye.inference.registry).
        features_backend=backend,
        bandwidth=monitor.drift.bandwidth,
        n_permutations=monitor.drift.n_permutations,
        alpha=monitor.drift.alpha,
        class_prior=None
        if monitor.drift.class_prior is None
        else [int(c) for c in monitor.drift.class_prior],
        ood={
            "method": "mahalanobis_shared_cov_ledoit_wolf_ppca",
            "threshold": ood.threshold,
            "false_alarm_rate": ood.false_alarm_rate,
            "residual_variance": ood.residual_variance,
        },
        shift_temperature=None
        if monitor.shift_temperature is None
        else monitor.shift_temperature.to_json(),
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
    wanted = registry.family(backend) if backend else "torch"
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
    t = load(bundle.read_file(file_name))
    o = entry["ood"]
    ood = OODScorer(
        class_means=t["class_means"],
        components=t["components"],
        eigenvalues=t["eigenvalues"],
        residual_variance=float(o["residual_variance"]),
        threshold=float(o["threshold"]),
        false_alarm_rate=float(o["false_alarm_rate"]),
        calibration_scores=t["calibration_scores"],
    )
    if false_alarm_rate is not None and false_alarm_rate != ood.false_alarm_rate:
        ood.calibrate(ood.calibration_scores, false_alarm_rate)
    drift = DriftDetector(
        t["reference"].astype(np.float32),
        entry["bandwidth"],
        n_permutations=n_permutations or int(entry.get("n_permutations", DEFAULT_PERMUTATIONS)),
        alpha=alpha or float(entry.get("alpha", DEFAULT_ALPHA)),
        class_prior=entry.get("class_prior"),
    )
    shift = entry.get("shift_temperature")
    return Monitor(
        drift,
        ood,
        dict(entry.get("fitted", {})),
        family,
        backend,
        None if shift is None else ShiftTemperature.from_json(shift),
    )


def fit_bundle(
    predictor: Predictor,
    train_items: Sequence[tuple[Path, str | None]],
    val_items: Sequence[tuple[Path, str | None]] | None,
    options: FitOptions = FitOptions(),
    *,
    data: str | None = None,
    on_done: Callable[[int], None] | None = None,
) -> Monitor:
    """Extract features, fit, and save the drift reference into the predictor's bundle.

    The reference is fitted on the predictor's backend and stored for its feature family.
    """
    picked = sample(train_items, options.sample, options.seed)
    train = extract_features(predictor, picked, on_done=on_done)
    val = extract_features(predictor, list(val_items), on_done=on_done) if val_items else None
    shifted = []
    if val is not None and all(lab is not None for lab in val.labels):
        readable = list(zip(val.paths, val.labels, strict=True))
        for view in range(1, options.shifted_views + 1):
            corrupt = RandomCorruption(predictor.preprocessing, seed=options.seed + view)
            shifted.append(
                extract_features(predictor, readable, transform=corrupt, on_done=on_done)
            )
    dim = train.features.shape[1] if train.features.size else 0
    monitor = fit_monitor(
        train,
        val,
        predictor.classes,
        reference_size=options.reference_size,
        false_alarm_rate=options.false_alarm_rate,
        n_components=min(DEFAULT_COMPONENTS, max(1, dim - 1)),
        seed=options.seed,
        backend=predictor.backend_name,
        shifted=shifted,
    )
    save_reference(predictor.bundle.path, monitor, data=data)
    return monitor


def load_predictor(
    bundle_dir: Path | None = None,
    *,
    backend: str = registry.AUTO,
    monitored: bool = True,
    false_alarm_rate: float | None = None,
    n_permutations: int | None = None,
    top_k: int = 5,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    threads: int | None = None,
    spinning: bool = True,
    batch_threads: int | None = None,
    expected_sha256: str | None = None,
) -> tuple[Predictor, Monitor | None]:
    """A verified bundle's Predictor and, when `monitored` and it has one, its Monitor.

    The Predictor scores every photo for OOD with the monitor of its own backend's features.
    Every file's hash is checked (and bundle.json's against `expected_sha256` when given),
    and the model is run once to check its outputs fit the class list and the monitor.
    """
    bundle = load_bundle(bundle_dir, expected_sha256)
    choice = open_backend(
        bundle, backend, threads=threads, spinning=spinning, batch_threads=batch_threads
    )
    monitor = None
    if monitored:
        # The monitor of the backend that serves: after a host-check fallback, fp32's.
        monitor = load_monitor(
            bundle,
            backend=choice.backend.name,
            false_alarm_rate=false_alarm_rate,
            n_permutations=n_permutations,
        )
    predictor = Predictor(
        bundle,
        backend=choice,
        top_k=top_k,
        max_pixels=max_pixels,
        max_decode_bytes=max_decode_bytes,
        ood=monitor.ood if monitor is not None else None,
        shift_temperature=monitor.shift_temperature if monitor is not None else None,
    )
    predictor.verify()
    return predictor, monitor
