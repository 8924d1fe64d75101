"""Repeated drift tests that hold their false-alarm budget, and the class-mix test."""

from __future__ import annotations

import numpy as np
import pytest

from fisheye.monitoring.drift import DriftDetector, class_mix_p_value, permutation_p_value
from fisheye.serving.drift_window import DriftWindow

DIM = 8


def _normal(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, DIM)) + shift).astype(np.float32)


def test_the_permutation_p_value_counts_the_observed_statistic() -> None:
    rng = np.random.default_rng(0)
    detector = DriftDetector(_normal(60, 1), n_permutations=99)
    kernel = detector.kernel(_normal(20, 2, shift=5.0))
    p, exceed = permutation_p_value(kernel, 20, 99, rng)
    assert exceed == 0 and p == pytest.approx(1 / 100)  # never 0: the observed one counts
    p, exceed = permutation_p_value(detector.kernel(_normal(20, 3)), 20, 99, rng)
    assert p == pytest.approx((exceed + 1) / 100)


def test_the_class_mix_test_holds_its_level_and_sees_label_shift() -> None:
    prior = np.array([500, 300, 150, 50])
    rng = np.random.default_rng(0)
    p_null = [
        class_mix_p_value(rng.multinomial(200, prior / prior.sum()), prior, 199, rng)[1]
        for _ in range(300)
    ]
    # Valid p-values: at most about 5% of healthy windows below 0.05 (binomial slack).
    assert np.mean(np.array(p_null) <= 0.05) <= 0.09
    assert min(p_null) >= 1 / 200
    shifted = np.array([20, 30, 50, 100])  # the rarest class is now the most common
    statistic, p = class_mix_p_value(shifted, prior, 199, rng)
    assert p == pytest.approx(1 / 200) and statistic > 100


def test_labels_add_the_class_mix_test_at_half_the_level_each() -> None:
    ref = _normal(100, 1)
    detector = DriftDetector(ref, n_permutations=199, alpha=0.02, class_prior=[50, 50])
    healthy = detector.test(_normal(40, 2), labels=np.array([0, 1] * 20), alpha=0.02)
    assert healthy.class_mix_p_value is not None and not healthy.class_mix_drift
    assert healthy.alpha == 0.02
    skewed = detector.test(_normal(40, 3), labels=np.zeros(40, int), alpha=0.02)
    assert skewed.class_mix_drift and skewed.alarm and not skewed.drift
    assert detector.test(_normal(40, 4)).class_mix_p_value is None  # no labels: no mix test


def test_each_window_test_spends_the_photos_it_adds() -> None:
    detector = DriftDetector(_normal(100, 1), n_permutations=999)  # p-values down to 0.001
    window = DriftWindow(detector, size=50, min_samples=10, false_alarms_per_photo=1e-4)
    window.observe(_normal(40, 2))
    assert window.run_test().alpha == pytest.approx(40e-4)
    window.observe(_normal(5, 3))
    below = window.run_test()  # 0.0005: under the p-value's resolution, it cannot alarm...
    assert below.alpha == pytest.approx(5e-4) and not below.drift
    window.observe(_normal(5, 4))
    assert window.run_test().alpha == pytest.approx(10e-4)  # ...so its photos carry over
    assert window.run_test().alpha == pytest.approx(1e-4)  # nothing new: the least


def test_a_healthy_stream_raises_at_most_its_budget_of_false_alarms() -> None:
    """Many overlapping tests on a stream from the reference's own distribution.

    At 1 false alarm per 100 photos and a test every 10 photos (alpha 0.1 each), 300 tests
    over 3,000 photos expect at most 30 false alarms; with a fixed alpha they would expect
    30 too, but at a test every photo, 300. The bound holds whatever the schedule.
    """
    detector = DriftDetector(_normal(300, 0), n_permutations=99)
    window = DriftWindow(detector, size=40, min_samples=40, false_alarms_per_photo=0.01)
    window.observe(_normal(40, 1))
    alarms = 0
    for i in range(300):
        window.observe(_normal(10, 100 + i))
        alarms += window.run_test().drift
    assert alarms <= 45  # expected <= 30; P(more than 45) < 0.2% even at the bound
    shifted = 0
    for i in range(10):
        window.observe(_normal(10, 1000 + i, shift=1.5))
        shifted += window.run_test().drift
    assert shifted >= 5
