"""Image preprocessing: the one evaluation transform shared by training and inference."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("squash", "center_crop")


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded RGB photo becomes a model input tensor; stored in every bundle."""

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


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """HWC RGB PIL image to a CHW uint8 tensor."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def normalize(batch_uint8: torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """uint8 (N)CHW to normalised float32."""
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
    std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1) * 255.0
    return (batch_uint8.to(torch.float32) - mean) / std


def preprocess(img: Image.Image, spec: Preprocessing) -> torch.Tensor:
    """The evaluation transform: decoded RGB photo to a normalised CHW float tensor."""
    return normalize(to_uint8_tensor(resize_image(img, spec)), spec)


class Normalize(torch.nn.Module):
    """`normalize` as a transform step, so training and eval share the arithmetic."""

    def __init__(self, spec: Preprocessing) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        return normalize(batch_uint8, self.spec)


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation strengths (Hydra: data.augment)."""

    scale_min: float = 0.6
    hflip: float = 0.5
    vflip: float = 0.5
    rotation_degrees: float = 180.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02


def train_transform(spec: Preprocessing, aug: Augmentation) -> v2.Compose:
    """Random crop, flips, rotation and colour jitter, then the same normalisation as eval."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(spec.input_size, scale=(aug.scale_min, 1.0), antialias=True),
            v2.RandomHorizontalFlip(aug.hflip),
            v2.RandomVerticalFlip(aug.vflip),
            v2.RandomRotation(aug.rotation_degrees),
            v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue),
            Normalize(spec),
        ]
    )
