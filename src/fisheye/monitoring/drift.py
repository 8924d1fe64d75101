"""Batch drift test: a kernel MMD two-sample test on penultimate features, in NumPy.

The statistic is TorchDrift's `kernel_mmd` (Gretton et al. 2012, the biased-diagonal
estimator TorchDrift uses) with a Gaussian kernel whose bandwidth is fixed when the
reference is fitted (median heuristic). The p-value comes from a permutation test that
evaluates a block of permutations with one matrix product. The tests check both against
TorchDrift where it is installed; TorchDrift itself (last released in 2021) is not needed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.01
DEFAULT_PERMUTATIONS = 1000
# With a Gaussian kernel (values in [0, 1]) the MMD^2 estimate cannot exceed 2; a
# non-finite score can only come from broken inputs and is reported as this bound.
MAX_SCORE = 2.0
MIN_SAMPLES = 2
PERMUTATION_BLOCK = 256


@dataclass
class DriftResult:
    """One drift test: the MMD score, its permutation p-value and the verdict."""

    n: int
    score: float
    p_value: float
    drift: bool
    p_value_is_bound: bool = False  # no permutation beat the score: the true p is below p_value
    ood_fraction: float | None = None
    n_permutations: int = DEFAULT_PERMUTATIONS
    alpha: float = DEFAULT_ALPHA
    n_invalid: int = 0  # rows with non-finite features, left out of the test
    # The chi-square test of the predicted-class mix against the training prior (label
    # shift); None when the reference has no prior or no labels were given.
    class_mix_statistic: float | None = None
    class_mix_p_value: float | None = None
    class_mix_drift: bool = False
    computed_at: float = field(default_factory=time.time)
    seconds: float = 0.0

    @property
    def alarm(self) -> bool:
        """Whether either test (features or class mix) rejected "same as the reference"."""
        return self.drift or self.class_mix_drift

    def p_text(self) -> str:
        """Human-readable p-value: `p < 0.000999` when it is only a bound."""
        return f"p < {self.p_value:.3g}" if self.p_value_is_bound else f"p = {self.p_value:.3g}"

    def to_json(self) -> dict[str, Any]:
        """The CLI's `--json` form: only n, score, p_value, drift, ood_fraction."""
        return {
            "n": self.n,
            "score": self.score,
            "p_value": self.p_value,
            "drift": self.drift,
            "ood_fraction": self.ood_fraction,
        }

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return asdict(self)


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances between the rows of x and y, in float64."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return np.maximum(d, 0.0)


def gaussian_kernel(squared: np.ndarray, bandwidth: float) -> np.ndarray:
    """exp(-d^2 / (2 l^2)): TorchDrift's GaussianKernel with lengthscale l."""
    return np.exp(squared * (-0.5 / bandwidth**2))


def median_pairwise_distance(features: np.ndarray, max_rows: int = 2000) -> float:
    """The median heuristic for the Gaussian kernel's bandwidth (Gretton et al. 2012)."""
    x = np.asarray(features, dtype=np.float64)[:max_rows]
    d = np.sqrt(squared_distances(x, x)[np.triu_indices(len(x), k=1)])
    d = d[np.isfinite(d) & (d > 0)]
    return float(np.median(d)) if d.size else 1.0


def mmd_squared(kernel: np.ndarray, n: int) -> float:
    """MMD^2 of the first n rows against the rest, from their joint kernel matrix."""
    m = len(kernel) - n
    k_x, k_y, k_xy = kernel[:n, :n].sum(), kernel[n:, n:].sum(), kernel[:n, n:].sum()
    return float(k_x / (n * (n - 1)) + k_y / (m * (m - 1)) - 2 * k_xy / (n * m))


def permutation_statistics(kernel: np.ndarray, n: int, orders: np.ndarray) -> np.ndarray:
    """MMD^2 of each relabelling: row i of `orders` permutes the pooled rows, the first n
    of it forming the x-set. Each block is one matrix product instead of a loop.

    The product runs in float32 (half the time of float64; the server repeats this test in
    the background) and the sums in float64: each statistic is within about 1e-7 of its
    exact value, far below the spread of the permutation distribution.
    """
    total = kernel.sum()
    m = len(kernel) - n
    kernel32 = kernel.astype(np.float32)
    out = np.empty(len(orders))
    for start in range(0, len(orders), PERMUTATION_BLOCK):
        block = orders[start : start + PERMUTATION_BLOCK]
        a = np.zeros((len(block), len(kernel)), dtype=np.float32)
        np.put_along_axis(a, block[:, :n], 1.0, axis=1)
        ak = a @ kernel32  # (p, N): row sums of K restricted to each permutation's x-set
        sx = (ak * a).sum(axis=1, dtype=np.float64)
        sxy = ak.sum(axis=1, dtype=np.float64) - sx
        sy = total - 2 * sxy - sx
        out[start : start + len(block)] = (
            sx / (n * (n - 1)) + sy / (m * (m - 1)) - 2 * sxy / (n * m)
        )
    return out


def permutation_p_value(
    kernel: np.ndarray, n: int, n_perm: int, rng: np.random.Generator
) -> tuple[float, int]:
    """(p-value, exceedances): (permutations at least as extreme + 1) / (n_perm + 1).

    Counting the observed statistic as one of the permutations keeps the test exact (its
    false-alarm rate is at most alpha) and the p-value never 0. The observed statistic is
    computed the same way as the permutations', so they compare like for like.
    """
    observed = permutation_statistics(kernel, n, np.arange(len(kernel))[None])[0]
    orders = rng.random((n_perm, len(kernel))).argsort(axis=1)
    null = permutation_statistics(kernel, n, orders)
    exceed = int((null >= observed).sum())
    return (exceed + 1) / (n_perm + 1), exceed


def chi_square(counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Pearson's chi-square statistic of count rows against expected counts (last axis)."""
    return (((counts - expected) ** 2) / expected).sum(axis=-1)


def class_mix_p_value(
    counts: np.ndarray, prior: np.ndarray, n_sims: int, rng: np.random.Generator
) -> tuple[float, float]:
    """(chi-square statistic, p-value) of class counts against a prior, by simulation.

    The null distribution is drawn from the multinomial of the prior itself, so the
    p-value, (exceedances + 1) / (n_sims + 1), is valid for small windows and rare classes
    where the chi-square approximation is not; no SciPy needed at serve time.
    """
    counts = np.asarray(counts, dtype=np.float64)
    # Half a photo added to each class, so a class the training sample happened to miss
    # does not make one photo of it an infinitely strong alarm.
    p = np.asarray(prior, dtype=np.float64) + 0.5
    p = p / p.sum()
    n = int(counts.sum())
    expected = n * p
    observed = chi_square(counts, expected)
    null = chi_square(rng.multinomial(n, p, size=n_sims).astype(np.float64), expected)
    return float(observed), float(((null >= observed).sum() + 1) / (n_sims + 1))


class DriftDetector:
    """A kernel-MMD drift test against stored reference features, with a fixed bandwidth."""

    def __init__(
        self,
        reference: np.ndarray,
        bandwidth: float | None = None,
        *,
        n_permutations: int = DEFAULT_PERMUTATIONS,
        alpha: float = DEFAULT_ALPHA,
        class_prior: np.ndarray | None = None,
    ) -> None:
        ref = np.asarray(reference, dtype=np.float32)
        ref = ref[np.isfinite(ref).all(axis=1)]
        if len(ref) < MIN_SAMPLES:
            raise ValueError("the drift reference needs at least two finite feature rows")
        self.bandwidth = float(bandwidth) if bandwidth else median_pairwise_distance(ref)
        if not math.isfinite(self.bandwidth) or self.bandwidth <= 0:
            raise ValueError(f"invalid kernel bandwidth {self.bandwidth}")
        self.n_permutations = n_permutations
        self.alpha = alpha
        self.reference = ref
        # Training photos per class (the bundle's class order): the class-mix test's prior.
        self.class_prior = None if class_prior is None else np.asarray(class_prior, np.float64)
        # The reference block of the kernel matrix never changes: computed once, by
        # `prepare` or the first test (a server prepares it after it is ready to answer).
        self._ref_kernel: np.ndarray | None = None
        self._prepare_lock = threading.Lock()

    @property
    def prepared(self) -> bool:
        """Whether the reference block of the kernel matrix is computed."""
        return self._ref_kernel is not None

    def prepare(self) -> None:
        """Compute the reference block of the kernel matrix (once; later calls return)."""
        with self._prepare_lock:
            if self._ref_kernel is None:
                ref = self.reference
                self._ref_kernel = gaussian_kernel(squared_distances(ref, ref), self.bandwidth)

    def kernel(self, x: np.ndarray) -> np.ndarray:
        """The joint kernel matrix of x (first) and the reference (after)."""
        self.prepare()
        assert self._ref_kernel is not None
        k_xx = gaussian_kernel(squared_distances(x, x), self.bandwidth)
        k_xr = gaussian_kernel(squared_distances(x, self.reference), self.bandwidth)
        return np.block([[k_xx, k_xr], [k_xr.T, self._ref_kernel]])

    def score(self, x: np.ndarray) -> float:
        """MMD^2 between x and the reference."""
        return mmd_squared(self.kernel(x), len(x))

    def test(
        self,
        features: np.ndarray,
        *,
        seed: int | None = 0,
        ood_fraction: float | None = None,
        alpha: float | None = None,
        labels: np.ndarray | None = None,
    ) -> DriftResult:
        """Test a batch of features against the reference (p-value from permutations).

        `alpha` overrides the detector's level for this test. With `labels` (predicted
        class indices) and a class prior, the class mix is tested too, and `alpha` is split
        evenly between the two tests (Bonferroni), so the chance of any false alarm stays
        at most `alpha`.
        """
        start = time.perf_counter()
        alpha = self.alpha if alpha is None else alpha
        mix = labels is not None and self.class_prior is not None and len(labels) > 0
        level = alpha / 2 if mix else alpha
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.reference.shape[1]:
            raise ValueError(
                f"expected features of shape (n, {self.reference.shape[1]}), got {tuple(x.shape)}"
            )
        finite = np.isfinite(x).all(axis=1)
        n_invalid = int((~finite).sum())
        x = x[finite]
        if len(x) < MIN_SAMPLES:
            if n_invalid == 0:
                raise ValueError(f"the drift test needs at least {MIN_SAMPLES} photos")
            # Only broken features: certainly unlike the reference.
            score, p_value, exceed = MAX_SCORE, 1.0 / (self.n_permutations + 1), 0
        else:
            kernel = self.kernel(x)
            score = mmd_squared(kernel, len(x))
            if math.isfinite(score):
                p_value, exceed = permutation_p_value(
                    kernel, len(x), self.n_permutations, np.random.default_rng(seed)
                )
            else:
                log.warning("drift score was %s; reporting it as the bound %s", score, MAX_SCORE)
                score, p_value, exceed = MAX_SCORE, 1.0 / (self.n_permutations + 1), 0
        statistic = mix_p = None
        if mix:
            assert labels is not None and self.class_prior is not None
            counts = np.bincount(np.asarray(labels, np.int64), minlength=len(self.class_prior))
            statistic, mix_p = class_mix_p_value(
                counts[: len(self.class_prior)],
                self.class_prior,
                self.n_permutations,
                np.random.default_rng(None if seed is None else seed + 1),
            )
        return DriftResult(
            n=int(len(x)) + n_invalid,
            score=score,
            p_value=p_value,
            drift=p_value <= level,
            p_value_is_bound=exceed == 0,
            ood_fraction=ood_fraction,
            n_permutations=self.n_permutations,
            alpha=alpha,
            n_invalid=n_invalid,
            seconds=time.perf_counter() - start,
            class_mix_statistic=statistic,
            class_mix_p_value=mix_p,
            class_mix_drift=mix_p is not None and mix_p <= level,
        )
