"""The Predictor: the only place photos become model inputs at inference time."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from fisheye.bundle import Bundle, load_bundle
from fisheye.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from fisheye.data.transforms import preprocess
from fisheye.inference.backends import AUTO, Backend, InferenceOutput, TorchBackend, create_backend

if TYPE_CHECKING:
    from fisheye.monitoring.reference import Monitor

__all__ = ["FileResult", "InferenceOutput", "Prediction", "Predictor", "TorchBackend"]


@dataclass(frozen=True)
class Prediction:
    """One photo's result: the top label, its probability and the top-k list."""

    label: str
    confidence: float
    top_k: list[tuple[str, float]]
    probabilities: np.ndarray = field(repr=False)
    # Set when the bundle has a drift reference (fisheye.monitoring): higher = less familiar.
    ood_score: float | None = None
    in_distribution: bool | None = None

    def to_dict(self) -> dict:
        """JSON-ready form shared by the CLI and the API."""
        out = {
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "top_k": [{"label": k, "probability": round(p, 6)} for k, p in self.top_k],
        }
        if self.ood_score is not None:
            out["ood_score"] = round(min(self.ood_score, np.finfo(np.float64).max), 4)
            out["in_distribution"] = self.in_distribution
        return out


@dataclass(frozen=True)
class FileResult:
    """A prediction for one file, or the reason it could not be read."""

    path: Path
    prediction: Prediction | None = None
    error: str | None = None


class Predictor:
    """Runs a bundle's model on photos with the bundle's own preprocessing.

    `backend` is "torch", "onnx", "onnx-int8" or "auto" (the fastest exported backend whose
    recorded accuracy is within 0.5 points of fp32; torch when nothing is exported).
    `threads` sets the backend's intra-op threads (default: torch's setting).
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        top_k: int = 5,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        backend: str = AUTO,
        threads: int | None = None,
        spinning: bool = True,
    ):
        self.bundle = bundle
        self.classes = bundle.classes
        self.preprocessing = bundle.preprocessing
        self.top_k = min(top_k, len(self.classes))
        self.max_pixels = max_pixels
        self._model: torch.nn.Module | None = None
        self.backend: Backend = create_backend(bundle, backend, threads=threads, spinning=spinning)
        if isinstance(self.backend, TorchBackend):
            self._model = self.backend.model

    @property
    def model(self) -> torch.nn.Module:
        """The eager PyTorch model (built on first use when another backend runs)."""
        if self._model is None:
            self._model = self.bundle.build_model()
        return self._model

    @classmethod
    def from_dir(cls, bundle_dir: Path | None = None, **kwargs) -> Predictor:
        """Load and verify a bundle, then build its Predictor."""
        return cls(load_bundle(bundle_dir), **kwargs)

    def decode(self, source: bytes | str | Path) -> Image.Image:
        """Decode a photo under this Predictor's pixel limit (raises ImageDecodeError)."""
        return decode_image(source, max_pixels=self.max_pixels)

    def to_tensor(self, img: Image.Image) -> torch.Tensor:
        """The model input for one decoded photo."""
        return preprocess(img, self.preprocessing)

    @property
    def backend_name(self) -> str:
        """Which backend runs the model: torch, onnx or onnx-int8."""
        return self.backend.name

    def infer(self, batch: torch.Tensor) -> InferenceOutput:
        """Probabilities and features for a preprocessed batch (one model call)."""
        return self.backend.run(batch)

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Softmax probabilities for a preprocessed batch, shape (N, classes)."""
        return self.infer(batch).probabilities

    @functools.cached_property
    def monitor(self) -> Monitor | None:
        """The bundle's drift reference and OOD scorer for this backend, or None without one."""
        from fisheye.monitoring.reference import load_monitor

        return load_monitor(self.bundle, backend=self.backend_name)

    def prediction_from_probabilities(
        self, probs: np.ndarray, top_k: int | None = None, ood_score: float | None = None
    ):
        """The Prediction (label, confidence, top-k, OOD verdict) for one row of probabilities."""
        top_k = min(top_k or self.top_k, len(self.classes))
        order = np.argsort(-probs)[:top_k]
        top = [(self.classes[i], float(probs[i])) for i in order]
        in_dist = None
        if ood_score is not None and self.monitor is not None:
            in_dist = bool(self.monitor.ood.is_in_distribution(ood_score))
        return Prediction(top[0][0], top[0][1], top, probs, ood_score, in_dist)

    def predict_images(self, images: Sequence[Image.Image], top_k: int | None = None):
        """Predict decoded RGB photos, one Prediction each, in order."""
        if not images:
            return []
        k = min(top_k or self.top_k, len(self.classes))
        out = self.infer(torch.stack([self.to_tensor(im) for im in images]))
        scores = [None] * len(images)
        if self.monitor is not None:
            scores = [float(s) for s in self.monitor.ood.score(out.features)]
        return [
            self.prediction_from_probabilities(p, k, s)
            for p, s in zip(out.probabilities, scores, strict=True)
        ]

    def predict_files(
        self,
        paths: Iterable[Path],
        *,
        batch_size: int = 16,
        top_k: int | None = None,
        on_done: Callable[[int], None] | None = None,
    ) -> Iterator[FileResult]:
        """Predict files in batches; unreadable files come back as errors, in input order."""
        pending: list[tuple[Path, Image.Image | None, str | None]] = []

        def flush() -> Iterator[FileResult]:
            good = [(p, im) for p, im, _ in pending if im is not None]
            preds = iter(self.predict_images([im for _, im in good], top_k=top_k))
            for path, img, err in pending:
                yield (
                    FileResult(path, next(preds))
                    if img is not None
                    else FileResult(path, None, err)
                )
            if on_done:
                on_done(len(pending))
            pending.clear()

        for path in paths:
            try:
                pending.append((path, self.decode(path), None))
            except ImageDecodeError as exc:
                pending.append((path, None, str(exc)))
            if len(pending) >= batch_size:
                yield from flush()
        if pending:
            yield from flush()
