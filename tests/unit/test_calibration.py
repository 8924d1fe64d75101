"""Temperature scaling, calibration error, label-free estimates and grouped intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from fisheye.bundle import load_bundle, update_meta
from fisheye.inference.backend import softmax
from fisheye.inference.calibration import (
    MAX_SHIFT_FACTOR,
    ShiftTemperature,
    estimated_accuracy,
    expected_calibration_error,
    fit_abstention,
    fit_shift_temperature,
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


def _shifted_sample(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photos whose true temperature grows with their distance: exp(0.8 * excess log score).

    Returns probabilities at temperature 1, labels drawn from the true probabilities, and
    OOD scores (reference log score 0: half the photos typical, half up to e^3 further).
    """
    rng = np.random.default_rng(seed)
    excess = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.0, 3.0, n))
    scores = np.exp(excess - rng.uniform(0.0, 1.0, n) * (excess == 0))
    z = rng.normal(scale=4.0, size=(n, 5))
    p_true = softmax(z / np.exp(0.8 * excess)[:, None]).astype(np.float64)
    labels = np.minimum((rng.random((n, 1)) > p_true.cumsum(axis=1)).sum(axis=1), 4)
    return softmax(z), labels, scores


def test_shift_temperature_recovers_how_confidence_should_fall_with_distance():
    probs, labels, scores = _shifted_sample(6000)
    shift = fit_shift_temperature(probs, labels, scores, reference=0.0)
    assert shift.slope == pytest.approx(0.8, abs=0.15)
    assert abs(shift.offset) < 0.15
    # Far photos: one temperature overstates their accuracy; the shift temperature does not.
    far = np.log(scores) > 1.5
    correct = probs.argmax(1) == labels
    plain = rescale(probs, fit_temperature(probs, labels))[far].max(1).mean()
    shifted = shift.apply(probs, scores)[far].max(1).mean()
    truth = correct[far].mean()
    assert plain - truth > 0.03
    assert abs(shifted - truth) < 0.02


def test_shift_temperature_stays_flat_when_distance_says_nothing():
    probs, labels = _sample(4000, true_t=2.0)
    scores = np.exp(np.random.default_rng(5).uniform(-1.0, 3.0, len(labels)))
    shift = fit_shift_temperature(probs, labels, scores, reference=0.0)
    assert shift.slope <= 0.1
    assert np.exp(shift.offset) == pytest.approx(fit_temperature(probs, labels), rel=0.1)


def test_shift_temperature_factors_keep_the_ranking_and_soften_far_photos():
    shift = ShiftTemperature(slope=1.0, offset=0.0, reference=np.log(10.0))
    scores = np.array([1.0, 10.0, 100.0, np.inf])
    factors = shift.factors(scores)
    np.testing.assert_allclose(factors[:3], [1.0, 1.0, 10.0], rtol=1e-6)
    assert factors[3] == MAX_SHIFT_FACTOR
    probs = softmax(np.array([[4.0, 1.0, 0.0]] * 4))
    out = shift.apply(probs, scores)
    assert (out.argmax(1) == 0).all()
    np.testing.assert_allclose(out[:2], probs[:2], rtol=1e-5)
    assert out[2, 0] < probs[2, 0] and out[3, 0] < out[2, 0]
    assert ShiftTemperature.from_json(shift.to_json()) == shift
    with pytest.raises(ValueError, match="labelled photos"):
        fit_shift_temperature(probs[:0], labels=np.zeros(0), ood_scores=scores[:0], reference=0.0)


def test_abstention_threshold_is_the_lowest_that_reaches_the_target():
    # Confidence-sorted: right, right, wrong, right, wrong.
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 0, 1, 0, 1])
    strict = fit_abstention(probs, labels, 0.97)
    assert (strict.threshold, strict.coverage, strict.accuracy) == (0.8, 0.4, 1.0)
    loose = fit_abstention(probs, labels, 0.7)
    assert (loose.threshold, loose.coverage, loose.accuracy) == (0.6, 0.8, 0.75)
    # Ties are answered together: a threshold never splits photos of equal confidence.
    tied = fit_abstention(np.array([[0.8, 0.2], [0.8, 0.2], [0.6, 0.4]]), np.array([0, 1, 0]), 0.9)
    assert tied.coverage == 0.0 and tied.threshold > 0.8
    none = fit_abstention(probs, np.ones(5, dtype=int), 0.9)
    assert none.coverage == 0.0 and none.threshold > 0.9 and np.isnan(none.accuracy)
    with pytest.raises(ValueError, match="labelled photos"):
        fit_abstention(np.zeros((0, 2)), np.zeros(0, dtype=int), 0.9)
