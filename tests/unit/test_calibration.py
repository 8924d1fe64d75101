"""Temperature scaling, calibration error, label-free estimates and grouped intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from fisheye.bundle import load_bundle, update_meta
from fisheye.inference.backend import softmax
from fisheye.inference.calibration import (
    estimated_accuracy,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
    rescale,
)
from fisheye.inference.predictor import Predictor
from fisheye.inference.scoring import grouped_bootstrap, grouped_scores, macro_f1


def _sample(n: int, true_t: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities at temperature 1 of logits whose labels follow softmax(z / true_t)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=3.0, size=(n, 5))
    p_true = softmax(z, true_t).astype(np.float64)
    cumulative = p_true.cumsum(axis=1)
    labels = np.minimum((rng.random((n, 1)) > cumulative).sum(axis=1), 4)
    return softmax(z), labels


def test_fit_temperature_recovers_the_generating_temperature():
    probs, labels = _sample(6000, true_t=2.0)
    t = fit_temperature(probs, labels)
    assert t == pytest.approx(2.0, rel=0.1)
    calibrated = rescale(probs, t)
    assert negative_log_likelihood(calibrated, labels) < negative_log_likelihood(probs, labels)
    assert expected_calibration_error(calibrated, labels) < expected_calibration_error(
        probs, labels
    )
    assert expected_calibration_error(calibrated, labels) < 0.03


def test_rescale_matches_softmax_of_scaled_logits_and_keeps_the_argmax():
    z = np.random.default_rng(1).normal(size=(50, 9)).astype(np.float32)
    np.testing.assert_allclose(rescale(softmax(z), 0.5), softmax(z, 0.5), atol=1e-5)
    assert (rescale(softmax(z), 3.0).argmax(1) == z.argmax(1)).all()


def test_ece_and_reliability_bins_by_hand():
    # Two photos at 0.9 (one right) and one at 0.6 (right): |0.5-0.9|*2/3 + |1-0.6|/3.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    labels = np.array([0, 1, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.8 / 3 + 0.4 / 3)
    bins = [b for b in reliability_bins(probs, labels) if b.count]
    assert [(b.count, round(b.accuracy, 3)) for b in bins] == [(1, 1.0), (2, 0.5)]
    assert estimated_accuracy(probs) == pytest.approx(0.8)
    assert estimated_accuracy(np.zeros((0, 2))) is None


def test_fit_temperature_refuses_no_photos():
    with pytest.raises(ValueError, match="at least one"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))


def test_macro_f1_matches_scikit_learn():
    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    assert macro_f1(y, p, 4) == pytest.approx(f1_score(y, p, average="macro"))


def test_grouped_interval_is_wider_when_photos_of_a_group_agree():
    # 40 groups of 10 copies; whole groups right or wrong, as rotated copies of one fish are.
    rng = np.random.default_rng(3)
    group_right = rng.random(40) < 0.8
    correct = np.repeat(group_right, 10).astype(float)
    groups = [f"g{i}" for i in range(40) for _ in range(10)]
    alone = [f"p{i}" for i in range(400)]
    grouped = grouped_bootstrap(lambda i: correct[i].mean(), groups, samples=500)
    per_photo = grouped_bootstrap(lambda i: correct[i].mean(), alone, samples=500)
    assert grouped.low <= grouped.value <= grouped.high
    assert (grouped.high - grouped.low) > 2 * (per_photo.high - per_photo.low)


def test_grouped_scores_give_accuracy_and_macro_f1_intervals():
    y = np.array([0, 0, 1, 1, 2, 2])
    scores = grouped_scores(y, np.array([0, 0, 1, 2, 2, 2]), list("aabbcc"), 3, samples=200)
    assert scores["acc"].value == pytest.approx(5 / 6)
    assert scores["macro_f1"].low <= scores["macro_f1"].value <= scores["macro_f1"].high


@pytest.mark.parametrize("backend", ["torch", "onnx", "onnx-int8"])
def test_every_backend_applies_the_bundle_temperature(writable_exported_bundle, backend):
    x = np.random.default_rng(4).normal(size=(3, 3, 32, 32)).astype(np.float32)
    plain = Predictor(load_bundle(writable_exported_bundle), backend=backend).infer(x)
    update_meta(writable_exported_bundle, calibration={"temperature": 0.25})
    bundle = load_bundle(writable_exported_bundle)
    assert bundle.temperature == 0.25
    sharp = Predictor(bundle, backend=backend).infer(x)
    np.testing.assert_allclose(sharp.probabilities, rescale(plain.probabilities, 0.25), atol=1e-4)
    assert sharp.probabilities.max(1).mean() > plain.probabilities.max(1).mean()


def test_an_error_free_score_still_gets_an_interval():
    y = np.array([0, 0, 1, 1, 2, 2])
    scores = grouped_scores(y, y, list("aabbcc"), 3, samples=100)
    # 3 groups, all right: the exact 95% lower bound is 0.025 ** (1 / 3).
    assert scores["acc"].value == 1.0 and scores["acc"].high == 1.0
    assert scores["acc"].low == pytest.approx(0.025 ** (1 / 3))
    assert scores["macro_f1"].low == pytest.approx(0.025 ** (1 / 3))
