"""The Predictor: the only place photos become model inputs at inference time.

`run_files` is the one decode -> batch -> infer loop: `fisheye predict`, evaluation, the
drift reference fit and the accuracy measurements of export and bench all go through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from fisheye.bundle import Bundle, BundleError, load_bundle
from fisheye.data.images import ImageDecodeError, decode_image
from fisheye.data.preprocess import Preprocessing, preprocess
from fisheye.data.storage import PhotoRef, as_ref
from fisheye.inference.backend import Backend, InferenceOutput
from fisheye.inference.backends import AUTO
from fisheye.inference.calibration import ShiftTemperature
from fisheye.inference.options import PredictionOptions, RuntimeOptions
from fisheye.inference.selection import BackendSelection, open_backend

__all__ = [
    "FileOutput",
    "FileResult",
    "FeatureScorer",
    "PhotoPreparer",
    "Prediction",
    "Predictor",
]

Source = bytes | str | Path


class FeatureScorer(Protocol):
    """Scores penultimate features for being unlike the training photos (monitoring fits one)."""

    def score(self, features: np.ndarray) -> np.ndarray:
        """One score per row; higher = less like the training photos."""
        ...

    def is_in_distribution(self, scores: np.ndarray) -> np.ndarray:
        """True where a score is within the calibrated threshold."""
        ...


@dataclass(frozen=True)
class Prediction:
    """One photo's result: the top label, its probability and the top-k list.

    `unsure` when the probability is under the bundle's abstention threshold: the answer is
    then "not sure", and `top_k` holds the candidates; `label` stays the most likely class
    for monitoring and the log.
    """

    label: str
    confidence: float
    top_k: list[tuple[str, float]]
    probabilities: np.ndarray = field(repr=False)
    # Set when the Predictor has an OOD scorer: higher = less familiar.
    ood_score: float | None = None
    in_distribution: bool | None = None
    unsure: bool = False

    @property
    def status(self) -> str:
        """ "unsure" when the model abstains, else "ok"."""
        return "unsure" if self.unsure else "ok"

    def to_dict(self) -> dict:
        """JSON-ready form shared by the CLI and the API (label null when unsure)."""
        out = {
            "label": None if self.unsure else self.label,
            "status": self.status,
            "confidence": round(self.confidence, 6),
            "top_k": [{"label": k, "probability": round(p, 6)} for k, p in self.top_k],
        }
        if self.ood_score is not None:
            out["ood_score"] = round(min(self.ood_score, np.finfo(np.float64).max), 4)
            out["in_distribution"] = self.in_distribution
        return out


@dataclass(frozen=True)
class FileOutput:
    """The model's raw output for one file, or the reason the file could not be read."""

    path: PhotoRef
    probabilities: np.ndarray | None = None
    features: np.ndarray | None = None
    ood_score: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the file was read and run through the model."""
        return self.error is None


@dataclass(frozen=True)
class FileResult:
    """A prediction for one file, or the reason it could not be read."""

    path: PhotoRef
    prediction: Prediction | None = None
    error: str | None = None


@dataclass(frozen=True)
class PhotoPreparer:
    """Decode within limits + the bundle's preprocessing: a photo becomes a model input."""

    preprocessing: Preprocessing
    options: PredictionOptions = PredictionOptions()

    def decode(self, source: Source) -> Image.Image:
        """Decode a photo (bytes, path or URL) within the limits (ImageDecodeError)."""
        return decode_image(
            source,
            max_pixels=self.options.max_pixels,
            max_decode_bytes=self.options.max_decode_bytes,
        )

    def __call__(self, source: Source | Image.Image) -> np.ndarray:
        """The (3, H, W) float32 model input for one photo (raises ImageDecodeError)."""
        img = source if isinstance(source, Image.Image) else self.decode(source)
        return preprocess(img, self.preprocessing)


class Predictor:
    """Runs a bundle's model on photos with the bundle's own preprocessing.

    `backend` is a registry name ("torch", "onnx", "onnx-int8"), "auto" (the fastest
    exported backend whose recorded accuracy is within 0.5 points of fp32 and that holds on
    this CPU: `selection.open_backend`), a BackendSelection, or a built Backend. `ood` (from
    `fisheye.monitoring`) adds an OOD score and verdict to every output, and
    `shift_temperature` then softens each photo's probabilities by its distance from the
    training photos (calibrated confidence on degraded photos too). `runtime` is used only
    when the Predictor builds its backend from a name.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        backend: str | Backend | BackendSelection = AUTO,
        options: PredictionOptions = PredictionOptions(),
        runtime: RuntimeOptions = RuntimeOptions(),
        ood: FeatureScorer | None = None,
        shift_temperature: ShiftTemperature | None = None,
    ):
        self.bundle = bundle
        self.classes = bundle.classes
        self.preprocessing = bundle.preprocessing
        self.options = options
        self.top_k = min(options.top_k, len(self.classes))
        # Below this served confidence the answer is "not sure" (None: always answer).
        self.abstain_below = (
            options.abstain_below
            if options.abstain_below is not None
            else (bundle.meta.get("abstention") or {}).get("threshold")
        )
        if self.abstain_below is not None and self.abstain_below <= 0:
            self.abstain_below = None
        self.ood = ood
        self.shift_temperature = shift_temperature if ood is not None else None
        if isinstance(backend, str):
            backend = open_backend(bundle, backend, runtime)
        elif not isinstance(backend, BackendSelection):
            backend = BackendSelection(backend.name, backend)
        self.backend_selection = backend
        self.backend: Backend = backend.backend

    def verify(self) -> None:
        """Run the model once and check it fits its bundle (BundleError if not).

        The class list must match the model's outputs, and the OOD scorer (if any) the
        model's features: a bundle that mixes files of two models is refused here rather
        than answering with the wrong labels.
        """
        size = self.preprocessing.input_size
        try:
            out = self.infer(np.zeros((1, 3, size, size), np.float32))
        except BundleError:
            raise
        except Exception as exc:  # a runtime's own error types: the files do not fit
            raise BundleError(
                f"the bundle's files do not fit together: running the model on a {size}x{size} "
                f"input failed ({type(exc).__name__}: {exc})"
            ) from exc
        if out.probabilities.shape != (1, len(self.classes)):
            raise BundleError(
                f"the model gives {out.probabilities.shape[-1]} class scores but bundle.json "
                f"lists {len(self.classes)} classes"
            )

    @classmethod
    def from_dir(cls, bundle_dir: Path | None = None, **kwargs) -> Predictor:
        """Load and verify a bundle, then build its Predictor."""
        return cls(load_bundle(bundle_dir), **kwargs)

    @property
    def backend_name(self) -> str:
        """Which backend runs the model, e.g. torch, onnx or onnx-int8."""
        return self.backend.name

    @property
    def preparer(self) -> PhotoPreparer:
        """This Predictor's decode + preprocess step alone (picklable, for parallel workers)."""
        return PhotoPreparer(self.preprocessing, self.options)

    def decode(self, source: Source) -> Image.Image:
        """Decode a photo within this Predictor's pixel and memory limits (ImageDecodeError)."""
        return self.preparer.decode(source)

    def prepare(self, source: Source | Image.Image) -> np.ndarray:
        """The (3, H, W) float32 model input for one photo (raises ImageDecodeError)."""
        return self.preparer(source)

    def infer(self, batch: np.ndarray) -> InferenceOutput:
        """One model call on a preprocessed (N, 3, H, W) batch, with OOD scores if scored."""
        out = self.backend.run(batch)
        if self.ood is not None:
            scores = self.ood.score(out.features)
            out = out.with_ood_scores(scores)
            if self.shift_temperature is not None:
                out = replace(
                    out, probabilities=self.shift_temperature.apply(out.probabilities, scores)
                )
        return out

    def prediction(
        self, probs: np.ndarray, ood_score: float | None = None, top_k: int | None = None
    ) -> Prediction:
        """The Prediction (label, confidence, top-k, OOD verdict) for one row of probabilities."""
        k = min(top_k or self.top_k, len(self.classes))
        order = np.argsort(-probs)[:k]
        top = [(self.classes[i], float(probs[i])) for i in order]
        in_dist = None
        if ood_score is not None and self.ood is not None:
            in_dist = bool(self.ood.is_in_distribution(np.asarray([ood_score]))[0])
        unsure = self.abstain_below is not None and top[0][1] < self.abstain_below
        return Prediction(top[0][0], top[0][1], top, probs, ood_score, in_dist, unsure)

    def predictions(self, out: InferenceOutput, top_k: int | None = None) -> list[Prediction]:
        """One Prediction per row of a model output, in order."""
        scores = [None] * len(out) if out.ood_scores is None else [float(s) for s in out.ood_scores]
        return [
            self.prediction(p, s, top_k) for p, s in zip(out.probabilities, scores, strict=True)
        ]

    def predict_images(
        self, images: Sequence[Image.Image], top_k: int | None = None
    ) -> list[Prediction]:
        """Predict decoded RGB photos, one Prediction each, in order."""
        if not images:
            return []
        return self.predictions(self.infer(np.stack([self.prepare(im) for im in images])), top_k)

    def prepare_files(
        self, paths: Iterable[PhotoRef]
    ) -> Iterator[tuple[PhotoRef, np.ndarray | None, str | None]]:
        """(path, model input, None) per readable file, (path, None, error) per unreadable one."""
        for path in paths:
            ref = as_ref(path)
            try:
                yield ref, self.prepare(ref), None
            except ImageDecodeError as exc:
                yield ref, None, str(exc)

    def run_files(
        self,
        paths: Iterable[PhotoRef],
        *,
        batch_size: int = 16,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        on_done: Callable[[int], None] | None = None,
    ) -> Iterator[FileOutput]:
        """Decode, batch and run files; unreadable files come back as errors, in input order.

        `transform` (e.g. a corruption in a benchmark) maps each preprocessed batch before
        the model call; `on_done(n)` is called after each batch of n files.
        """
        pending: list[tuple[PhotoRef, np.ndarray | None, str | None]] = []

        def flush() -> Iterator[FileOutput]:
            good = [x for _, x, _ in pending if x is not None]
            out: InferenceOutput | None = None
            if good:
                batch = np.stack(good)
                out = self.infer(transform(batch) if transform is not None else batch)
            row = 0
            for path, x, err in pending:
                if x is None or out is None:
                    yield FileOutput(path, error=err)
                    continue
                score = None if out.ood_scores is None else float(out.ood_scores[row])
                yield FileOutput(path, out.probabilities[row], out.features[row], score)
                row += 1
            if on_done:
                on_done(len(pending))
            pending.clear()

        for item in self.prepare_files(paths):
            pending.append(item)
            if len(pending) >= batch_size:
                yield from flush()
        if pending:
            yield from flush()

    def predict_files(
        self,
        paths: Iterable[PhotoRef],
        *,
        batch_size: int = 16,
        top_k: int | None = None,
        on_done: Callable[[int], None] | None = None,
    ) -> Iterator[FileResult]:
        """Predict files in batches; unreadable files come back as errors, in input order."""
        for out in self.run_files(paths, batch_size=batch_size, on_done=on_done):
            if out.probabilities is None:
                yield FileResult(out.path, None, out.error)
            else:
                yield FileResult(out.path, self.prediction(out.probabilities, out.ood_score, top_k))
