"""`fisheye drift`: test a folder of photos against a bundle's drift reference."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fisheye.inference.calibration import estimated_accuracy
from fisheye.inference.predictor import Predictor
from fisheye.monitoring.drift import DriftResult
from fisheye.monitoring.fitting import extract_features, sample
from fisheye.monitoring.monitor import Monitor


class DriftCheckError(ValueError):
    """The photos cannot be tested (too few readable ones)."""


@dataclass(frozen=True)
class DriftCheck:
    """A drift test of a set of photos, with what was read to make it."""

    result: DriftResult
    n_found: int  # photos found in the folder
    n_unreadable: int  # of the sample, photos that could not be read
    # Mean calibrated top-1 confidence of the sample: its expected accuracy, without labels.
    estimated_accuracy: float | None = None

    def to_json(self) -> dict[str, float | int | bool | None]:
        """The CLI's `--json` form: the drift test and the label-free accuracy estimate."""
        return {**self.result.to_json(), "estimated_accuracy": self.estimated_accuracy}


def check_photos(
    predictor: Predictor,
    monitor: Monitor,
    paths: Sequence[Path],
    *,
    sample_size: int = 200,
    seed: int = 0,
    on_done: Callable[[int], None] | None = None,
) -> DriftCheck:
    """MMD drift test and OOD fraction of a seeded sample of `paths` against the reference."""
    chosen = sample([(p, None) for p in paths], sample_size, seed)
    feats = extract_features(predictor, chosen, on_done=on_done)
    if len(feats.paths) < 2:
        raise DriftCheckError(f"fewer than 2 readable photos among the {len(chosen)} sampled")
    _, in_dist = monitor.score(feats.features)
    result = monitor.drift.test(feats.features, seed=seed, ood_fraction=float((~in_dist).mean()))
    return DriftCheck(
        result, len(paths), len(feats.unreadable), estimated_accuracy(feats.probabilities)
    )
