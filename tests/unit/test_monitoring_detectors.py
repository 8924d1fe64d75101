"""Drift and OOD detectors on synthetic feature sets (no model, no photos)."""

from __future__ import annotations

import numpy as np
import pytest

from fisheye.monitoring.drift import (
    MAX_SCORE,
    DriftDetector,
    DriftResult,
    gaussian_kernel,
    mmd_squared,
    permutation_statistics,
    squared_distances,
)
from fisheye.monitoring.ood import OODScorer, auroc, ledoit_wolf

DIM = 16


def _clusters(n: int, shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian clusters in DIM dimensions, optionally shifted."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(0, 3, size=(3, DIM))
    labels = rng.integers(0, 3, size=n)
    x = centres[labels] + rng.normal(0, 1, size=(n, DIM)) + shift
    return x.astype(np.float32), labels


@pytest.fixture(scope="module")
def detector() -> DriftDetector:
    ref, _ = _clusters(200, seed=1)
    return DriftDetector(ref, n_permutations=200)


def test_same_distribution_is_not_drift(detector: DriftDetector) -> None:
    p_values = [detector.test(_clusters(50, seed=10 + i)[0], seed=i).p_value for i in range(10)]
    assert sum(p >= 0.05 for p in p_values) >= 8
    assert all(0 < p <= 1 for p in p_values)


def test_shifted_distribution_is_drift_with_bounded_p_value(detector: DriftDetector) -> None:
    result = detector.test(_clusters(50, shift=1.5, seed=5)[0], seed=0)
    assert result.drift
    # No permutation reaches the observed score: p = (0 + 1) / (n_perm + 1), never 0.
    assert result.p_value_is_bound
    assert result.p_value == pytest.approx(1 / 201)
    assert result.p_text().startswith("p < ")
    assert result.to_json() == {
        "n": 50,
        "score": result.score,
        "p_value": result.p_value,
        "drift": True,
        "ood_fraction": None,
    }


def test_test_is_reproducible_with_a_seed(detector: DriftDetector) -> None:
    x = _clusters(40, shift=0.2, seed=7)[0]
    assert detector.test(x, seed=3).p_value == detector.test(x, seed=3).p_value


def test_matches_torchdrift_score_and_p_value(detector: DriftDetector) -> None:
    torch = pytest.importorskip("torch", reason="comparing with TorchDrift needs PyTorch")
    mmd = pytest.importorskip("torchdrift.detectors.mmd", reason="TorchDrift is not installed")
    from torchdrift.detectors import KernelMMDDriftDetector

    x = _clusters(40, shift=0.25, seed=8)[0]
    ours = detector.test(x, seed=0)
    td = KernelMMDDriftDetector(
        return_p_value=True, n_perm=400, kernel=mmd.GaussianKernel(lengthscale=detector.bandwidth)
    )
    td.fit(torch.from_numpy(detector.reference))
    torch.manual_seed(0)
    score, p = td.predict_shift_from_features(td.base_outputs, torch.from_numpy(x), True, True)
    assert ours.score == pytest.approx(float(score), rel=1e-4)
    assert abs(ours.p_value - float(p)) < 0.12  # two Monte Carlo estimates of one p-value


def test_each_permutation_statistic_is_torchdrifts_mmd_of_the_relabelled_sets(
    detector: DriftDetector,
) -> None:
    torch = pytest.importorskip("torch", reason="comparing with TorchDrift needs PyTorch")
    mmd = pytest.importorskip("torchdrift.detectors.mmd", reason="TorchDrift is not installed")
    x = _clusters(30, shift=0.5, seed=12)[0]
    pooled = np.concatenate([x, detector.reference])
    kernel = gaussian_kernel(squared_distances(pooled, pooled), detector.bandwidth)
    orders = np.random.default_rng(1).random((5, len(pooled))).argsort(axis=1)
    ours = permutation_statistics(kernel, len(x), orders)
    gk = mmd.GaussianKernel(lengthscale=detector.bandwidth)
    for order, stat in zip(orders, ours, strict=True):
        a = torch.from_numpy(pooled[order[: len(x)]]).double()
        b = torch.from_numpy(pooled[order[len(x) :]]).double()
        expected = float(mmd.kernel_mmd(a, b, n_perm=None, kernel=gk))
        assert stat == pytest.approx(expected, abs=1e-7)
    # And the identity permutation gives the observed statistic.
    identity = np.arange(len(pooled))[None]
    assert permutation_statistics(kernel, len(x), identity)[0] == pytest.approx(
        mmd_squared(kernel, len(x)), abs=1e-7
    )


def test_non_finite_features_are_left_out_and_counted(detector: DriftDetector) -> None:
    x = _clusters(30, seed=11)[0]
    x[0, 0] = np.inf
    x[1, 3] = np.nan
    result = detector.test(x)
    assert result.n == 30 and result.n_invalid == 2
    assert np.isfinite(result.score)
    broken = np.full((5, DIM), np.inf, dtype=np.float32)
    result = detector.test(broken)
    assert result.drift and result.score == MAX_SCORE and result.p_value_is_bound


def test_infinite_score_is_reported_as_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    det = DriftDetector(_clusters(50)[0], n_permutations=200)
    monkeypatch.setattr("fisheye.monitoring.drift.mmd_squared", lambda kernel, n: float("inf"))
    result = det.test(_clusters(10)[0])
    assert result.score == MAX_SCORE and result.drift and result.p_value == pytest.approx(1 / 201)


def test_drift_needs_two_photos(detector: DriftDetector) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        detector.test(_clusters(1)[0])
    with pytest.raises(ValueError, match="shape"):
        detector.test(np.zeros((5, DIM + 1), np.float32))


def test_drift_result_dict_is_json_ready() -> None:
    r = DriftResult(n=3, score=0.1, p_value=0.5, drift=False)
    assert r.p_text() == "p = 0.5" and r.to_dict()["n"] == 3


def test_ood_scorer_calibration_and_auroc() -> None:
    train, labels = _clusters(600, seed=2)
    scorer = OODScorer.fit(train, labels, n_components=8)
    val = scorer.score(_clusters(400, seed=3)[0])
    far = scorer.score(_clusters(200, shift=4.0, seed=4)[0])
    threshold = scorer.calibrate(val, 0.05)
    assert np.mean(val > threshold) == pytest.approx(0.05, abs=0.01)
    held_out = scorer.score(_clusters(1000, seed=9)[0])
    assert abs(np.mean(held_out > threshold) - 0.05) < 0.03
    assert auroc(val, far) > 0.99
    assert scorer.is_in_distribution(np.array([threshold, threshold + 1])).tolist() == [True, False]
    bad = _clusters(2)[0]
    bad[0, 0] = np.nan
    assert np.isinf(scorer.score(bad)[0]) and np.isfinite(scorer.score(bad)[1])
    with pytest.raises(ValueError, match="false-alarm"):
        scorer.calibrate(val, 1.5)


def test_drift_window_rate_limits_its_background_test() -> None:
    """However many photos arrive, the background test runs at most once per min_interval_s."""
    import os
    import threading
    import time

    from fisheye.serving.drift_window import DriftWindow

    rng = np.random.default_rng(0)
    detector = DriftDetector(rng.normal(size=(40, 8)), n_permutations=100)
    niceness: list[int] = []
    results = []

    def on_result(result: DriftResult) -> None:
        niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        results.append(result)

    window = DriftWindow(
        detector, size=20, every_requests=5, min_samples=5, min_interval_s=0.5, on_result=on_result
    )
    window.start()
    try:
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            window.observe(rng.normal(size=(5, 8)))
            time.sleep(0.01)
        time.sleep(0.1)
    finally:
        window.stop()
    assert 1 <= len(results) <= 2  # ~80 due tests requested, at most 2 run in 0.9 s
    assert all(n >= min(19, os.getpriority(os.PRIO_PROCESS, 0) + 1) for n in niceness)


@pytest.mark.parametrize(("n", "dim"), [(50, 8), (300, 40), (30, 64)])
def test_ledoit_wolf_equals_scikit_learns(n: int, dim: int) -> None:
    covariance = pytest.importorskip("sklearn.covariance", reason="needs scikit-learn")
    x = np.random.default_rng(n).normal(size=(n, dim)) * np.linspace(0.5, 3, dim)
    x -= x.mean(axis=0)
    ours, shrink = ledoit_wolf(x)
    theirs, their_shrink = covariance.ledoit_wolf(x, assume_centered=True)
    assert shrink == pytest.approx(their_shrink, rel=1e-9)
    assert np.allclose(ours, theirs, rtol=1e-9, atol=1e-12)
