"""Per-photo out-of-distribution score: Mahalanobis distance to the nearest class mean.

The class means and one shared covariance (Ledoit-Wolf shrinkage) are fitted on training
features (Lee et al., NeurIPS 2018). To keep the bundle small the covariance is stored as
its top principal directions plus one residual variance (probabilistic PCA): the distance
is exact in the kept subspace and isotropic in the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_FALSE_ALARM_RATE = 0.05
DEFAULT_COMPONENTS = 128


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of centred rows, and the shrinkage (scikit-learn's formula).

    Shrinks the empirical covariance towards mu * I, mu the mean variance, by the amount
    that minimises the expected squared error (Ledoit & Wolf, 2004).
    """
    x = np.asarray(x, dtype=np.float64)
    n, p = x.shape
    x2 = x * x
    emp_cov_trace = x2.sum(axis=0) / n
    mu = emp_cov_trace.sum() / p
    delta_ = float(((x.T @ x) ** 2).sum()) / n**2
    beta_ = float((x2.T @ x2).sum())
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * emp_cov_trace.sum() + p * mu**2) / p
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    cov = (1.0 - shrinkage) * (x.T @ x) / n
    cov.flat[:: p + 1] += shrinkage * mu
    return cov, shrinkage


@dataclass
class OODScorer:
    """Scores features by their distance to the training classes; above threshold = OOD."""

    class_means: np.ndarray  # (C, D)
    components: np.ndarray  # (D, K) orthonormal principal directions of the shared covariance
    eigenvalues: np.ndarray  # (K,)
    residual_variance: float
    threshold: float = float("inf")
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE
    calibration_scores: np.ndarray | None = None  # OOD scores of in-distribution val photos

    @classmethod
    def fit(
        cls, features: np.ndarray, labels: np.ndarray, n_components: int = DEFAULT_COMPONENTS
    ) -> OODScorer:
        """Fit class means and a shrunk shared covariance on training features."""
        x = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels)
        classes = np.unique(labels)
        if len(x) < 2 or len(classes) < 1:
            raise ValueError("need at least two feature rows to fit the OOD scorer")
        means = np.stack([x[labels == c].mean(axis=0) for c in classes])
        centred = x - means[np.searchsorted(classes, labels)]
        cov, shrinkage = ledoit_wolf(centred)
        eigvals, eigvecs = np.linalg.eigh(cov)
        order = np.argsort(eigvals)[::-1]
        eigvals, eigvecs = eigvals[order], eigvecs[:, order]
        k = max(1, min(n_components, x.shape[1] - 1))
        rest = eigvals[k:]
        residual = float(rest.mean()) if rest.size else float(eigvals[-1])
        floor = max(float(eigvals[0]) * 1e-6, 1e-12)
        log.debug(
            "OOD scorer: %d classes, %d components, shrinkage %.3f", len(classes), k, shrinkage
        )
        return cls(
            class_means=means.astype(np.float32),
            components=eigvecs[:, :k].astype(np.float32),
            eigenvalues=np.maximum(eigvals[:k], floor).astype(np.float32),
            residual_variance=max(residual, floor),
        )

    def score(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean, per row (higher = more OOD).

        Rows with non-finite features score +inf (certainly out of distribution).
        """
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.class_means.shape[1]:
            raise ValueError(
                f"expected features of shape (n, {self.class_means.shape[1]}), got {x.shape}"
            )
        finite = np.isfinite(x).all(axis=1)
        x = np.where(finite[:, None], x, 0.0)
        # Per class c: d = x - mu_c; project once and subtract the projected means.
        proj_x = x @ self.components  # (N, K)
        proj_mu = self.class_means @ self.components  # (C, K)
        sq_x = (x * x).sum(axis=1)  # (N,)
        sq_mu = (self.class_means * self.class_means).sum(axis=1)  # (C,)
        cross = x @ self.class_means.T  # (N, C)
        total_sq = sq_x[:, None] - 2 * cross + sq_mu[None, :]  # |x - mu_c|^2
        diff_proj = proj_x[:, None, :] - proj_mu[None, :, :]  # (N, C, K)
        in_sub = (diff_proj**2 / self.eigenvalues).sum(axis=2)
        resid = np.maximum(total_sq - (diff_proj**2).sum(axis=2), 0.0)
        dist = in_sub + resid / self.residual_variance
        out = dist.min(axis=1).astype(np.float64)
        out[~finite] = np.inf
        return out

    def calibrate(
        self, in_distribution_scores: np.ndarray, false_alarm_rate: float | None = None
    ) -> float:
        """Set the threshold so `false_alarm_rate` of the given in-distribution photos exceed it."""
        rate = self.false_alarm_rate if false_alarm_rate is None else false_alarm_rate
        if not 0.0 < rate < 1.0:
            raise ValueError(f"the false-alarm rate must be between 0 and 1, got {rate}")
        scores = np.asarray(in_distribution_scores, dtype=np.float64)
        scores = scores[np.isfinite(scores)]
        if scores.size == 0:
            raise ValueError("no finite calibration scores to set the OOD threshold from")
        self.calibration_scores = scores.astype(np.float32)
        self.false_alarm_rate = rate
        self.threshold = float(np.quantile(scores, 1.0 - rate, method="higher"))
        return self.threshold

    def is_in_distribution(self, scores: np.ndarray) -> np.ndarray:
        """True where the score is at or under the calibrated threshold."""
        return np.asarray(scores) <= self.threshold


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve for telling OOD (positive) from in-distribution by score."""
    from sklearn.metrics import roc_auc_score

    a = np.nan_to_num(np.asarray(in_scores, dtype=np.float64), posinf=np.finfo(np.float64).max)
    b = np.nan_to_num(np.asarray(out_scores, dtype=np.float64), posinf=np.finfo(np.float64).max)
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    return float(roc_auc_score(y, np.r_[a, b]))
