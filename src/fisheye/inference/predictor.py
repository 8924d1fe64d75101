"""The Predictor: the only place photos become model inputs at inference time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fisheye.bundle import Bundle, load_bundle
from fisheye.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from fisheye.data.transforms import preprocess


@dataclass(frozen=True)
class Prediction:
    """One photo's result: the top label, its probability and the top-k list."""

    label: str
    confidence: float
    top_k: list[tuple[str, float]]
    probabilities: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-ready form shared by the CLI and the API."""
        return {
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "top_k": [{"label": k, "probability": round(p, 6)} for k, p in self.top_k],
        }


@dataclass(frozen=True)
class InferenceOutput:
    """What one model call gives for a batch: class probabilities and penultimate features."""

    probabilities: np.ndarray  # (N, classes) float32
    features: np.ndarray  # (N, num_features) float32, used by drift and OOD monitoring


class TorchBackend:
    """Eager fp32 PyTorch: the reference backend every other backend is checked against."""

    name = "torch"

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    @torch.inference_mode()
    def run(self, batch: torch.Tensor) -> InferenceOutput:
        """Probabilities and features for a preprocessed (N, 3, H, W) batch."""
        features = self.model.forward_features(batch)
        logits = self.model.head(features)
        return InferenceOutput(
            torch.softmax(logits.float(), dim=1).numpy(), features.float().numpy()
        )


@dataclass(frozen=True)
class FileResult:
    """A prediction for one file, or the reason it could not be read."""

    path: Path
    prediction: Prediction | None = None
    error: str | None = None


class Predictor:
    """Runs a bundle's model on photos with the bundle's own preprocessing."""

    def __init__(self, bundle: Bundle, *, top_k: int = 5, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.bundle = bundle
        self.classes = bundle.classes
        self.preprocessing = bundle.preprocessing
        self.top_k = min(top_k, len(self.classes))
        self.max_pixels = max_pixels
        self.model = bundle.build_model()
        self.backend = TorchBackend(self.model)

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
        return self.backend.name

    def infer(self, batch: torch.Tensor) -> InferenceOutput:
        """Probabilities and features for a preprocessed batch (one model call)."""
        return self.backend.run(batch)

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Softmax probabilities for a preprocessed batch, shape (N, classes)."""
        return self.infer(batch).probabilities

    def prediction_from_probabilities(self, probs: np.ndarray, top_k: int | None = None):
        """The Prediction (label, confidence, top-k) for one row of probabilities."""
        top_k = min(top_k or self.top_k, len(self.classes))
        order = np.argsort(-probs)[:top_k]
        top = [(self.classes[i], float(probs[i])) for i in order]
        return Prediction(top[0][0], top[0][1], top, probs)

    def predict_images(self, images: Sequence[Image.Image], top_k: int | None = None):
        """Predict decoded RGB photos, one Prediction each, in order."""
        if not images:
            return []
        k = min(top_k or self.top_k, len(self.classes))
        probs = self.probabilities(torch.stack([self.to_tensor(im) for im in images]))
        return [self.prediction_from_probabilities(p, k) for p in probs]

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
