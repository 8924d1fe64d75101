"""Training-time transforms in PyTorch: augmentation, then the same normalisation as eval."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import v2

from fisheye.data.corruptions import corrupt
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


class RandomCorrupt(torch.nn.Module):
    """With probability `p`, one `fisheye.data.corruptions` family on a uint8 (3, H, W) photo.

    Its randomness comes from torch's generator, so Lightning's seeding of each data-loader
    worker makes it reproducible.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, photo: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or torch.rand(()).item() >= self.p:
            return photo
        rng = np.random.default_rng(int(torch.randint(2**62, ()).item()))
        pixels = corrupt(photo.numpy().astype(np.float32) / 255.0, rng)
        return torch.from_numpy(np.rint(pixels * 255.0).astype(np.uint8))


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
    corruption: float = 0.0  # share of photos degraded by one `fisheye.data.corruptions` family


def train_transform(spec: Preprocessing, aug: Augmentation) -> v2.Compose:
    """Random crop, flips, rotation, colour jitter and corruption, then eval's normalisation."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(spec.input_size, scale=(aug.scale_min, 1.0), antialias=True),
            v2.RandomHorizontalFlip(aug.hflip),
            v2.RandomVerticalFlip(aug.vflip),
            v2.RandomRotation(aug.rotation_degrees),
            v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue),
            RandomCorrupt(aug.corruption),
            Normalize(spec),
        ]
    )
