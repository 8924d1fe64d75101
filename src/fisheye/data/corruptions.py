"""Random photo corruptions for training views: a camera, a light or an upload gone wrong.

A model trained only on clean photos is confidently wrong on degraded ones, and then its
calibrated confidence overstates its accuracy exactly where a label-free estimate matters.
`RandomCorruption` degrades each photo of a preprocessed batch with one family drawn at
random, at a random severity, and mirrors half of them; `fisheye probe
--augment-corruptions N` adds N such views of every training photo. `fisheye train` applies
the same families to a share of its augmented photos (`data.augment.corruption`).

The families (speckle and impulse noise, pixelation, low contrast, motion blur, colour
saturation) are deliberately not the ones `benchmarks/label_free_estimate.py` measures
(Gaussian noise, Gaussian blur, JPEG, brightness), so its figures are about shifts the
model never trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from fisheye.data.preprocess import Preprocessing

# Changes whenever a family or a severity range changes (cached training features use it).
VERSION = "1"

Family = Callable[[np.ndarray, np.random.Generator], np.ndarray]
# Each family's severity is drawn uniformly from its range.
SEVERITY: dict[str, tuple[float, float]] = {
    "speckle": (0.05, 0.35),  # noise sigma, relative to the pixel value
    "impulse": (0.005, 0.06),  # share of pixels stuck black or white
    "pixelate": (0.25, 0.7),  # resolution kept, per side
    "low_contrast": (0.2, 0.7),  # contrast kept
    "motion_blur": (3, 15),  # blur length in pixels (of the model's input)
    "saturation": (0.0, 0.5),  # colour kept when washed out (exaggerated: 1.5 to 3)
}
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)[:, None, None]


def speckle(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative Gaussian noise (sensor noise that grows with brightness)."""
    sigma = rng.uniform(*SEVERITY["speckle"])
    return x + x * rng.normal(scale=sigma, size=x.shape).astype(np.float32)


def impulse(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper noise: a share of pixels stuck black or white."""
    share = rng.uniform(*SEVERITY["impulse"])
    u = rng.random(x.shape[1:])
    out = x.copy()
    out[:, u < share / 2] = 0.0
    out[:, u > 1.0 - share / 2] = 1.0
    return out


def pixelate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Down-sampled then blown up again (a low-resolution camera or a thumbnail)."""
    factor = rng.uniform(*SEVERITY["pixelate"])
    _, h, w = x.shape
    img = Image.fromarray((np.clip(x, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8))
    small = img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.BOX)
    back = np.asarray(small.resize((w, h), Image.NEAREST), np.float32) / 255.0
    return back.transpose(2, 0, 1)


def low_contrast(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrast pulled towards the photo's mean grey (haze, a flat light)."""
    c = rng.uniform(*SEVERITY["low_contrast"])
    mean = float((x * _LUMA).sum(axis=0).mean())
    return mean + c * (x - mean)


def motion_blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal motion blur (a moving fish or hand)."""
    low, high = SEVERITY["motion_blur"]
    size = int(rng.integers(low, high + 1))
    # A box filter along the width (edges repeated), from one cumulative sum.
    left = size // 2
    padded = np.pad(x, ((0, 0), (0, 0), (left, size - 1 - left)), mode="edge")
    cum = np.cumsum(padded, axis=2, dtype=np.float64)
    cum = np.concatenate([np.zeros_like(cum[..., :1]), cum], axis=2)
    return ((cum[..., size:] - cum[..., :-size]) / size).astype(np.float32)


def saturation(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colours washed out or exaggerated (another camera's or a display counter's colour)."""
    s = rng.uniform(*SEVERITY["saturation"]) if rng.random() < 0.5 else rng.uniform(1.5, 3.0)
    grey = (x * _LUMA).sum(axis=0, keepdims=True)
    return grey + s * (x - grey)


FAMILIES: dict[str, Family] = {
    "speckle": speckle,
    "impulse": impulse,
    "pixelate": pixelate,
    "low_contrast": low_contrast,
    "motion_blur": motion_blur,
    "saturation": saturation,
}


def corrupt(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(3, H, W) pixels in [0, 1] degraded by one family drawn at random, at a random severity."""
    families = list(FAMILIES.values())
    family = families[int(rng.integers(len(families)))]
    return np.clip(family(pixels, rng), 0.0, 1.0)


class RandomCorruption:
    """Maps a preprocessed (N, 3, H, W) batch to a corrupted one, reproducibly from `seed`.

    Each photo gets one family at random, at a random severity, on its pixels in [0, 1]
    (the bundle's normalisation undone and redone), and half the photos are mirrored.
    Batches must come in the same order to give the same views (they do in feature
    extraction, which is sequential).
    """

    def __init__(self, preprocessing: Preprocessing, seed: int = 0):
        self.mean = np.asarray(preprocessing.mean, np.float32)[:, None, None]
        self.std = np.asarray(preprocessing.std, np.float32)[:, None, None]
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = np.empty_like(batch)
        for i, x in enumerate(batch):
            pixels = x * self.std + self.mean
            pixels = corrupt(pixels, self.rng)
            if self.rng.random() < 0.5:
                pixels = pixels[..., ::-1]
            out[i] = (pixels - self.mean) / self.std
        return out
