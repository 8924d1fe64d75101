"""Fitting a drift reference: features of training photos, the OOD scorer, the shift temperature.

`fit_bundle` runs a sample of training photos through the Predictor (one model call gives
probabilities and penultimate features), fits the OOD scorer on them, calibrates its
threshold on validation photos, fits the shift temperature on validation photos clean and
randomly corrupted, and stores the result in the bundle (`storage.save_reference`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fisheye.bundle import update_meta
from fisheye.data.corruptions import RandomCorruption
from fisheye.inference import backends
from fisheye.inference.calibration import (
    Abstention,
    ShiftTemperature,
    fit_abstention,
    fit_shift_temperature,
)
from fisheye.inference.predictor import Predictor
from fisheye.monitoring.drift import DriftDetector
from fisheye.monitoring.monitor import Monitor
from fisheye.monitoring.ood import DEFAULT_COMPONENTS, DEFAULT_FALSE_ALARM_RATE, OODScorer
from fisheye.monitoring.storage import save_reference

log = logging.getLogger(__name__)


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
    # With real-world val photos: the accuracy that the photos answered must reach there.
    abstain_target: float = 0.97


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
    return Monitor(drift, ood, info, backends.family(backend), backend, shift)


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


def fit_bundle(
    predictor: Predictor,
    train_items: Sequence[tuple[Path, str | None]],
    val_items: Sequence[tuple[Path, str | None]] | None,
    options: FitOptions = FitOptions(),
    *,
    data: str | None = None,
    real_world_items: Sequence[tuple[Path, str]] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> Monitor:
    """Extract features, fit, and save the drift reference into the predictor's bundle.

    The reference is fitted on the predictor's backend and stored for its feature family.
    The abstention threshold is chosen on labelled `real_world_items` (photos from outside
    the training photos' setting), at the confidences served: the lowest confidence at
    which the answered ones reach `options.abstain_target` (bundle.json `abstention`).
    They stay out of the shift temperature: fitted on them as well, it left the real-world
    test no better calibrated and made noisy studio photos underconfident
    (docs/real-world.md).
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
    real_world = None
    if real_world_items:
        real_world = extract_features(predictor, list(real_world_items), on_done=on_done)
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
    if real_world is not None and len(real_world.labels):
        abstention = fit_real_world_abstention(monitor, real_world, predictor.classes, options)
        update_meta(
            predictor.bundle.path,
            abstention={**abstention.to_json(), "backend": predictor.backend_name},
        )
    return monitor


def fit_real_world_abstention(
    monitor: Monitor, photos: Features, classes: Sequence[str], options: FitOptions
) -> Abstention:
    """The abstention threshold on labelled photos, at the confidences the server shows."""
    probs = photos.probabilities
    if monitor.shift_temperature is not None:
        probs = monitor.shift_temperature.apply(probs, monitor.ood.score(photos.features))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[lab] for lab in photos.labels])
    abstention = fit_abstention(probs, labels, options.abstain_target)
    log.info(
        "abstention below %.3f: %.0f%% of %d real-world photos answered, %.3f accurate",
        abstention.threshold,
        100 * abstention.coverage,
        abstention.photos,
        abstention.accuracy,
    )
    return abstention
