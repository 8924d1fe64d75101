"""A bundle's fitted monitoring (`Monitor`) and the options it is loaded with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fisheye.inference import backends
from fisheye.inference.calibration import ShiftTemperature
from fisheye.monitoring.drift import DriftDetector
from fisheye.monitoring.ood import OODScorer


@dataclass(frozen=True)
class MonitorOptions:
    """How a stored drift reference is used (None: as it was fitted)."""

    # Re-calibrate the OOD threshold to this false-alarm rate on the stored val scores.
    false_alarm_rate: float | None = None
    # Permutations of the MMD test.
    n_permutations: int | None = None


@dataclass
class Monitor:
    """A bundle's fitted monitoring: the batch drift detector and the per-photo OOD scorer."""

    drift: DriftDetector
    ood: OODScorer
    info: dict[str, Any] = field(default_factory=dict)
    backend: str = "torch"  # the feature family the reference was fitted on
    serving_backend: str | None = None  # the backend it is used with (None: not known)
    shift_temperature: ShiftTemperature | None = None  # None: fitted without labelled val

    @property
    def matches_backend(self) -> bool:
        """Whether the reference was fitted on features of the backend that uses it."""
        return self.serving_backend is None or backends.family(self.serving_backend) == (
            self.backend
        )

    def summary(self) -> str:
        """One line on how the monitor was fitted."""
        info = self.info
        return (
            f"{info['n_reference']} reference photos, OOD scorer fitted on {info['n_fit']}, "
            f"threshold {self.ood.threshold:.1f} ({info['calibration_false_alarm_rate']:.1%} "
            f"false alarms on {info['n_calibration']} {info['calibration']} photos)"
            + (
                ""
                if self.shift_temperature is None
                else f", shift temperature fitted on {info['shift_temperature_photos']} photos"
            )
        )

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """OOD scores and in-distribution flags for a batch of features."""
        scores = self.ood.score(features)
        return scores, self.ood.is_in_distribution(scores)
