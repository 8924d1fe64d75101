"""The evaluation transform, in NumPy: a decoded RGB photo becomes a normalised model input.

Training (its eval loaders), `fisheye predict`, the server and the benchmarks all call
`preprocess`, so what the model sees cannot differ between training and serving. It needs
no PyTorch, so the serving runtime does not either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("squash", "center_crop")


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded RGB photo becomes a model input; stored in every bundle."""

    input_size: int = 224
    resize: str = "squash"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # For resize="center_crop": the shorter side is resized to input_size / crop_fraction.
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.input_size < 16:
            raise ValueError(f"input_size must be at least 16, got {self.input_size}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form for bundle.json."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Read the form written by `to_dict`."""
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)

    def scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std in 0..255 units, float32, shaped (3, 1, 1) to broadcast over CHW."""
        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1) * np.float32(255.0)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1) * np.float32(255.0)
        return mean, std


_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def resize_image(img: Image.Image, spec: Preprocessing) -> Image.Image:
    """Resize (and crop) an RGB photo to input_size x input_size as the spec says."""
    size = spec.input_size
    resample = _PIL_FILTERS[spec.interpolation]
    if spec.resize == "squash":
        if img.size == (size, size):
            return img
        # reducing_gap makes large downscales much faster at no visible cost.
        return img.resize((size, size), resample, reducing_gap=3.0)
    short = round(size / spec.crop_fraction)
    w, h = img.size
    scale = short / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), resample, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_chw_uint8(img: Image.Image) -> np.ndarray:
    """An RGB PIL image as a (3, H, W) uint8 array."""
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def normalize(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """uint8 (N)CHW pixels to normalised float32: (x - 255 mean) / (255 std).

    One output array and two passes; the float32 arithmetic (and so every value) is that of
    `(pixels.astype(np.float32) - mean) / std`.
    """
    mean, std = spec.scale()
    out = np.empty(pixels.shape, dtype=np.float32)
    np.subtract(pixels, mean, out=out)
    return np.divide(out, std, out=out)


def preprocess(img: Image.Image, spec: Preprocessing) -> np.ndarray:
    """The evaluation transform: decoded RGB photo to a normalised (3, H, W) float32 array."""
    hwc = np.asarray(resize_image(img, spec), dtype=np.uint8)
    # Normalising the CHW view of the HWC pixels writes the CHW array in one pass.
    return normalize(hwc.transpose(2, 0, 1), spec)
