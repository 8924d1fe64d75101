"""Accuracy and macro-F1 with confidence intervals that respect near-duplicate groups.

Photos of one source fish are correlated (rotated copies are mostly right or wrong
together), so a confidence interval that resamples photos is too narrow. `grouped_bootstrap`
resamples whole groups instead; with no error at all, where the bootstrap collapses, the
lower bound is the exact binomial one with the groups as the sample size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of correct predictions."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else 0.0


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in y_true or y_pred."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    tp = np.bincount(y_true[y_true == y_pred], minlength=n_classes).astype(float)
    support = np.bincount(y_true, minlength=n_classes).astype(float)
    predicted = np.bincount(y_pred, minlength=n_classes).astype(float)
    present = (support + predicted) > 0
    if not present.any():
        return 0.0
    f1 = 2 * tp[present] / (support[present] + predicted[present])
    return float(f1.mean())


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    value: float
    low: float
    high: float

    def to_dict(self, digits: int = 6) -> dict[str, float]:
        """JSON-ready form."""
        return {
            "value": round(self.value, digits),
            "ci95_low": round(self.low, digits),
            "ci95_high": round(self.high, digits),
        }


def grouped_bootstrap(
    statistic: Callable[[np.ndarray], float],
    groups: Sequence[str],
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """`statistic(indices)` with a percentile interval from resampling groups with replacement."""
    groups = list(groups)
    if not groups:
        raise ValueError("a bootstrap needs at least one photo")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    blocks = [np.asarray(v) for v in members.values()]
    rng = np.random.default_rng(seed)
    values = np.empty(samples)
    for s in range(samples):
        pick = rng.integers(0, len(blocks), len(blocks))
        values[s] = statistic(np.concatenate([blocks[i] for i in pick]))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return Interval(statistic(np.arange(len(groups))), float(low), float(high))


def grouped_scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: Sequence[str],
    n_classes: int,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict[str, Interval]:
    """Accuracy and macro-F1, each with a 95% interval from a bootstrap over groups."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    scores = {
        "acc": grouped_bootstrap(
            lambda i: accuracy(y_true[i], y_pred[i]), groups, samples=samples, seed=seed
        ),
        "macro_f1": grouped_bootstrap(
            lambda i: macro_f1(y_true[i], y_pred[i], n_classes),
            groups,
            samples=samples,
            seed=seed,
        ),
    }
    if (y_true == y_pred).all():
        # Without a single error every resample scores 1 and the bootstrap interval
        # collapses; the exact (Clopper-Pearson) bound for n of n right, with the groups as
        # the sample size, says how low the score could plausibly be.
        low = exact_lower_bound(len(set(groups)))
        scores = {k: Interval(v.value, min(v.low, low), v.high) for k, v in scores.items()}
    return scores


def exact_lower_bound(n: int, level: float = 0.95) -> float:
    """Clopper-Pearson lower bound of a success rate after n successes in n trials."""
    return float(((1.0 - level) / 2.0) ** (1.0 / n)) if n else 0.0
