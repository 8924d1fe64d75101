"""Calibrated confidence: temperature scaling, calibration error, label-free accuracy estimates.

A model's probabilities are softmax(logits / T); T is fitted on validation photos by
minimising their negative log-likelihood and stored in bundle.json, and every backend
applies it. Because log(softmax(z)) = z - const, probabilities already computed at one
temperature can be rescaled to another exactly, so fitting needs no access to the logits.

One temperature fits the photos it was fitted on; on degraded photos (noise, blur, a dark
camera) a model stays confident while its accuracy falls. `ShiftTemperature` raises the
temperature of each photo with its distance from the training photos (its OOD score), by
an amount fitted on validation photos both clean and corrupted (density-aware calibration,
in the spirit of Tomani et al., ICML 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15
# The search interval of the temperature (log scale) and its tolerance.
T_MIN, T_MAX = 0.02, 50.0
_TINY = 1e-30


def _log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), _TINY))


def rescale(probs: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """Probabilities softmax(z / T) from probabilities softmax(z) (same argmax).

    `temperature` is one number, or one per row.
    """
    z = _log_probs(probs) / np.reshape(temperature, (-1, 1))
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def _nll(log_p: np.ndarray, labels: np.ndarray, temperature: float | np.ndarray) -> float:
    """Mean NLL at one temperature, or at one per row."""
    z = log_p / np.reshape(temperature, (-1, 1))
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of `labels` (golden section).

    `probs` are (N, classes) probabilities at temperature 1 (or at any temperature T0: the
    result is then relative to T0), `labels` class indices.
    """
    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        raise ValueError("fitting a temperature needs at least one labelled photo")
    log_p = _log_probs(probs)
    log_t = _golden_min(lambda t: _nll(log_p, labels, np.exp(t)), np.log(T_MIN), np.log(T_MAX))
    return float(np.exp(log_t))


def _golden_min(f, low: float, high: float, tol: float = 1e-5) -> float:
    """The minimiser of a unimodal f on [low, high] (golden-section search)."""
    lo, hi = low, high
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return float((lo + hi) / 2.0)


# The slopes tried when fitting a ShiftTemperature (per unit of log OOD score).
SHIFT_SLOPES = np.linspace(0.0, 3.0, 61)
# No photo is softened beyond this factor (a photo with non-finite features: uniform anyway).
MAX_SHIFT_FACTOR = 100.0


@dataclass(frozen=True)
class ShiftTemperature:
    """A per-photo temperature factor exp(offset + slope * max(0, log score - reference)).

    `score` is the photo's OOD score (squared Mahalanobis distance to the nearest class
    mean), `reference` the median log score of clean validation photos: photos as typical
    as the training photos keep factor exp(offset), and the factor grows with distance.
    """

    slope: float
    offset: float
    reference: float

    def factors(self, ood_scores: np.ndarray) -> np.ndarray:
        """The temperature factor of each photo (>= exp(offset); capped)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            excess = np.maximum(np.log(np.asarray(ood_scores, np.float64)) - self.reference, 0.0)
        excess = np.nan_to_num(excess, nan=0.0, posinf=np.inf)
        with np.errstate(over="ignore"):
            return np.minimum(np.exp(self.offset + self.slope * excess), MAX_SHIFT_FACTOR)

    def apply(self, probs: np.ndarray, ood_scores: np.ndarray) -> np.ndarray:
        """Probabilities with each photo's temperature multiplied by its factor."""
        return rescale(probs, self.factors(ood_scores))

    def to_json(self) -> dict[str, float]:
        return {"slope": self.slope, "offset": self.offset, "reference": self.reference}

    @classmethod
    def from_json(cls, d: dict[str, float]) -> ShiftTemperature:
        return cls(float(d["slope"]), float(d["offset"]), float(d["reference"]))


def fit_shift_temperature(
    probs: np.ndarray, labels: np.ndarray, ood_scores: np.ndarray, reference: float
) -> ShiftTemperature:
    """The slope and offset that minimise the NLL of `labels` (photos clean and shifted).

    `probs` are the calibrated probabilities, `ood_scores` the photos' OOD scores and
    `reference` the median log score of clean validation photos. For each slope on a grid
    the offset is found by golden-section search.
    """
    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        raise ValueError("fitting a shift temperature needs labelled photos")
    log_p = _log_probs(probs)
    with np.errstate(divide="ignore"):
        excess = np.maximum(np.log(np.asarray(ood_scores, np.float64)) - reference, 0.0)
    keep = np.isfinite(excess)
    log_p, labels, excess = log_p[keep], labels[keep], excess[keep]
    best: tuple[float, float, float] | None = None
    for slope in SHIFT_SLOPES:

        def nll(offset: float, slope: float = float(slope)) -> float:
            return _nll(log_p, labels, np.exp(offset + slope * excess))

        offset = _golden_min(nll, -2.0, 2.0)
        value = nll(offset)
        if best is None or value < best[0]:
            best = (value, float(slope), offset)
    assert best is not None
    return ShiftTemperature(slope=best[1], offset=best[2], reference=float(reference))


@dataclass(frozen=True)
class Abstention:
    """Answer only above `threshold`: chosen so answered photos reach a target accuracy."""

    threshold: float
    target_accuracy: float
    photos: int  # the labelled photos it was chosen on
    coverage: float  # the share of them answered
    accuracy: float  # the accuracy of those answered (nan when none is)

    def to_json(self) -> dict[str, float | int]:
        return {
            "threshold": round(self.threshold, 6),
            "target_accuracy": self.target_accuracy,
            "photos": self.photos,
            "coverage": round(self.coverage, 6),
            "accuracy": round(self.accuracy, 6) if np.isfinite(self.accuracy) else None,
        }


def fit_abstention(probs: np.ndarray, labels: np.ndarray, target_accuracy: float) -> Abstention:
    """The lowest confidence threshold at which the photos answered reach `target_accuracy`.

    Photos are answered when their top probability is at least the threshold. When no
    threshold reaches the target, the threshold is the highest confidence seen plus a hair:
    nothing like these photos is answered.
    """
    probs, labels = np.asarray(probs), np.asarray(labels, dtype=int)
    if len(labels) == 0:
        raise ValueError("choosing an abstention threshold needs labelled photos")
    conf = probs.max(axis=1)
    order = np.argsort(-conf, kind="stable")
    correct = (probs.argmax(axis=1) == labels)[order]
    answered_accuracy = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    # Thresholds sit at distinct confidences: answering the k most confident photos.
    distinct = np.r_[conf[order][1:] < conf[order][:-1], True]
    ok = np.flatnonzero((answered_accuracy >= target_accuracy) & distinct)
    if len(ok):
        k = int(ok[-1]) + 1
        threshold = float(conf[order][k - 1])
        return Abstention(
            threshold,
            target_accuracy,
            len(labels),
            k / len(labels),
            float(answered_accuracy[k - 1]),
        )
    threshold = float(min(1.0, conf.max() + 1e-6))
    return Abstention(threshold, target_accuracy, len(labels), 0.0, float("nan"))


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels."""
    labels = np.asarray(labels, dtype=int)
    return float(-np.mean(_log_probs(probs)[np.arange(len(labels)), labels]))


@dataclass(frozen=True)
class ReliabilityBin:
    """Photos whose top confidence falls in [lower, upper): their mean confidence and accuracy."""

    lower: float
    upper: float
    count: int
    confidence: float
    accuracy: float


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> list[ReliabilityBin]:
    """Equal-width confidence bins of the top-1 predictions (the reliability diagram)."""
    probs = np.asarray(probs)
    labels = np.asarray(labels, dtype=int)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are (lower, upper] as in Guo et al. (2017); confidence is never 0.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        mask = which == b
        n = int(mask.sum())
        out.append(
            ReliabilityBin(
                float(edges[b]),
                float(edges[b + 1]),
                n,
                float(conf[mask].mean()) if n else 0.0,
                float(correct[mask].mean()) if n else 0.0,
            )
        )
    return out


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE: the photo-weighted mean |accuracy - confidence| over equal-width bins."""
    bins = reliability_bins(probs, labels, n_bins)
    total = sum(b.count for b in bins)
    if total == 0:
        return 0.0
    return float(sum(b.count * abs(b.accuracy - b.confidence) for b in bins) / total)


def estimated_accuracy(probs: np.ndarray) -> float | None:
    """Label-free accuracy estimate: the mean calibrated top-1 confidence (None if no photos)."""
    probs = np.asarray(probs)
    if probs.size == 0:
        return None
    return float(probs.max(axis=1).mean())
