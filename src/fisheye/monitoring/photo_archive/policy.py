"""Which photos the server keeps, and within what bounds (`KeepOptions`, built once from the
server's settings)."""

from __future__ import annotations

import random
from dataclasses import dataclass

GB = 1024**3
MB = 1024**2
# Why a photo is kept: the metric's label values, in the order a photo is counted under.
OOD, UNSURE, SAMPLE, FEEDBACK = "ood", "unsure", "sample", "feedback"
REASONS = (OOD, UNSURE, SAMPLE, FEEDBACK)


@dataclass(frozen=True)
class KeepOptions:
    """Where photos are kept, which ones, and for how long."""

    location: str  # a folder, or s3://bucket/prefix, gs://bucket/prefix
    sample_rate: float = 0.01  # the share of the other photos kept at random
    max_bytes: int = 10 * GB  # the archive's size; the oldest photos beyond it are deleted
    max_age_days: float = 30.0  # photos older than this are deleted
    recent_bytes: int = 64 * MB  # photos held in memory for feedback that comes later
    feedback_window_s: float = 600.0  # ...for at most this long after their answer

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be within [0, 1], not {self.sample_rate}")


class KeepPolicy:
    """Why a photo is kept when it is answered: out of distribution, unsure, or in the random
    sample; None when it is not (then only feedback keeps it)."""

    def __init__(self, sample_rate: float, rng: random.Random | None = None) -> None:
        self.sample_rate = sample_rate
        self._rng = rng or random.Random()

    def reason(self, in_distribution: bool | None, unsure: bool) -> str | None:
        """The reason to keep an answered photo now, or None."""
        if in_distribution is False:
            return OOD
        if unsure:
            return UNSURE
        if self.sample_rate > 0 and self._rng.random() < self.sample_rate:
            return SAMPLE
        return None
