"""What replicas of a fleet share for the fleet's drift test: sampled feature rows, and the
window of them the leader tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURE_DTYPE = np.dtype("<f2")  # float16, little-endian: 2 bytes a feature


def encode_features(features: np.ndarray) -> bytes:
    """One photo's features as stored: float16 bytes (values beyond +-65504 become inf)."""
    return np.asarray(features, dtype=FEATURE_DTYPE).tobytes()


def decode_features(rows: list[bytes]) -> np.ndarray:
    """Stored feature rows as an (n, D) float32 array."""
    if not rows:
        return np.zeros((0, 0), np.float32)
    return np.stack([np.frombuffer(r, dtype=FEATURE_DTYPE) for r in rows]).astype(np.float32)


@dataclass(frozen=True)
class FeatureRow:
    """One sampled photo: its features (float16 bytes), predicted class index (-1: not one of
    the bundle's), OOD flag, confidence, and how many photos it stands for (itself and the
    ones its replica's sample skipped since the previous row)."""

    ts: float
    model_version: str
    feature_space: str
    photos: int
    label: int
    ood: bool
    confidence: float | None
    features: bytes


@dataclass(frozen=True)
class FleetWindow:
    """The fleet's most recent sampled photos of one feature space, oldest first."""

    features: np.ndarray  # (n, D) float32
    labels: np.ndarray  # (n,) int, -1 where unknown
    ood: np.ndarray  # (n,) bool
    confidence: np.ndarray  # (n,) float, NaN where unknown
    replicas: dict[str, int]  # rows per replica
    first_ts: float | None
    last_ts: float | None

    def __len__(self) -> int:
        return len(self.labels)
