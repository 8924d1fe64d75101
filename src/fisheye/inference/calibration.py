"""Calibrated confidence: temperature scaling, calibration error, label-free accuracy estimates.

A model's probabilities are softmax(logits / T); T is fitted on validation photos by
minimising their negative log-likelihood and stored in bundle.json, and every backend
applies it. Because log(softmax(z)) = z - const, probabilities already computed at one
temperature can be rescaled to another exactly, so fitting needs no access to the logits.
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


def rescale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities softmax(z / T) from probabilities softmax(z) (same argmax)."""
    z = _log_probs(probs) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def _nll(log_p: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = log_p / temperature
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
    lo, hi = np.log(T_MIN), np.log(T_MAX)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(log_p, labels, np.exp(a)), _nll(log_p, labels, np.exp(b))
    while hi - lo > 1e-5:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(log_p, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(log_p, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2.0))


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
