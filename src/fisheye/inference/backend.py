"""What every inference backend is: preprocessed photos in, probabilities and features out."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class InferenceOutput:
    """One model call's result for a batch of N photos.

    `features` are the penultimate-layer features that drift and OOD monitoring use;
    `ood_scores` is set when the Predictor has an OOD scorer.
    """

    probabilities: np.ndarray  # (N, classes) float32
    features: np.ndarray  # (N, num_features) float32
    ood_scores: np.ndarray | None = None  # (N,) float64, higher = less like the training photos

    def __len__(self) -> int:
        return len(self.probabilities)

    def rows(self, start: int, stop: int) -> InferenceOutput:
        """The output for photos start..stop-1 of the batch."""
        scores = None if self.ood_scores is None else self.ood_scores[start:stop]
        return InferenceOutput(self.probabilities[start:stop], self.features[start:stop], scores)

    def with_ood_scores(self, scores: np.ndarray) -> InferenceOutput:
        """The same output with OOD scores attached."""
        return replace(self, ood_scores=scores)


class Backend(Protocol):
    """A way to run the model: `run` maps a preprocessed batch to probabilities and features."""

    name: str

    def run(self, batch: np.ndarray) -> InferenceOutput:
        """Probabilities and features for a preprocessed (N, 3, H, W) float32 batch."""
        ...


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature in float32, numerically stable."""
    z = logits.astype(np.float32, copy=False)
    if temperature != 1.0:
        z = z / np.float32(temperature)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def default_threads() -> int:
    """Intra-op threads when none are given: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
