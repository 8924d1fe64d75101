"""Training-time transforms in PyTorch: augmentation, then the same normalisation as eval."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from fisheye.data.preprocess import Preprocessing


class Normalize(torch.nn.Module):
    """`preprocess.normalize` as a transform step: the same float32 arithmetic in torch."""

    def __init__(self, spec: Preprocessing) -> None:
        super().__init__()
        mean, std = spec.scale()
        self.register_buffer("mean", torch.from_numpy(mean), persistent=False)
        self.register_buffer("std", torch.from_numpy(std), persistent=False)

    def forward(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        return (batch_uint8.to(torch.float32) - self.mean) / self.std


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
