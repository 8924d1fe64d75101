"""Studio fish on other backgrounds: training views that break the studio shortcut.

Every photo of the fish dataset shows a fish on the same blue tray (with black corners where
the dataset's augmentation rotated it). A model trained on them alone learns the tray as
much as the fish, and calls a sea bass on a measuring board a red mullet. `RandomComposite`
cuts the fish out of each studio photo (`fish_mask`: what is neither tray blue nor the black
corners, its largest part, holes filled) and lays it on a generated background (a measuring
board, planks, crushed ice, a deck, cloth, a gradient), turned, scaled and moved at random,
under a random light and colour cast, sometimes partly covered by a thumb and degraded by
one of the corruption families. `fisheye probe --augment-composites N` adds N such views
of every training photo. No photo from elsewhere is needed: the backgrounds are drawn.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from fisheye.data import corruptions
from fisheye.data.preprocess import Preprocessing

# Changes whenever the mask, a background or a range changes (cached training features use it).
VERSION = "1"

# A photo whose mask covers less or more of the frame than this is left as it is.
MASK_SHARE = (0.03, 0.75)
# Pixels bluer than this (blue minus red, in [0, 1]) are tray.
TRAY_BLUENESS = 0.0
DARK = 0.10  # pixels darker than this (the rotation's black corners) are not fish
GLARE, WARMTH = 0.35, 0.06  # brighter than GLARE and less red than blue by WARMTH: glare
SCALE = (0.45, 1.0)  # the fish's longest side, as a share of the frame's side
CORRUPTED_SHARE = 0.35  # composites also degraded by one corruption family
THUMB_SHARE = 0.25  # composites with a thumb or finger over part of the fish

Background = Callable[[int, int, np.random.Generator], np.ndarray]


def fish_mask(pixels: np.ndarray) -> np.ndarray | None:
    """(H, W) bool mask of the fish in an (H, W, 3) studio photo in [0, 1]; None if unsure."""
    smooth = ndimage.uniform_filter(pixels, size=(3, 3, 1))
    r, b = smooth[..., 0], smooth[..., 2]
    bright = smooth.max(axis=2)
    # Tray: blue, the rotation's black corners, or the lamp's glare on wet plastic (bright
    # and neutral, where studio-lit fish are warm).
    tray = (b - r > TRAY_BLUENESS) | (bright < DARK) | ((bright > GLARE) & (r - b < WARMTH))
    candidate = ndimage.binary_opening(~tray, iterations=2)
    labels, n = ndimage.label(candidate)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(candidate, labels, index=np.arange(1, n + 1))
    mask = labels == (int(np.argmax(sizes)) + 1)
    mask = ndimage.binary_closing(mask, iterations=3)
    mask = ndimage.binary_fill_holes(mask)
    share = float(mask.mean())
    if not MASK_SHARE[0] <= share <= MASK_SHARE[1]:
        return None
    return mask


def _noise(h: int, w: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Smooth noise in [0, 1]: random values blown up from a coarse grid."""
    gh, gw = max(2, round(h / scale)), max(2, round(w / scale))
    coarse = Image.fromarray((rng.random((gh, gw)) * 255).astype(np.uint8))
    return np.asarray(coarse.resize((w, h), Image.BICUBIC), np.float32) / 255.0


def _colour(rng: np.random.Generator, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    return rng.uniform(low, high, size=3).astype(np.float32)


def measuring_board(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A light plastic board with a ruler's tick marks along one edge."""
    base = _colour(rng, 0.65, 1.0)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    img *= 0.9 + 0.1 * _noise(h, w, rng, 40)[..., None]
    step = int(rng.integers(6, 14))
    edge = int(rng.integers(0, h // 4))
    for i, x in enumerate(range(int(rng.integers(0, step)), w, step)):
        length = 14 if i % 10 == 0 else 9 if i % 5 == 0 else 5
        img[edge : edge + length, x : x + 1] = 0.1
    img[edge + 14 : edge + 15, :] = 0.15
    return img


def planks(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Wooden planks: a brown grain along one axis, dark seams between planks."""
    base = np.array([0.55, 0.38, 0.22], np.float32) * rng.uniform(0.6, 1.4)
    grain = _noise(h, 4, rng, 1.5)[:, :1] * 0.5 + _noise(h, w, rng, 25) * 0.5
    img = base * (0.7 + 0.5 * grain[..., None])
    width = int(rng.integers(h // 6, h // 2))
    img[:: max(2, width)] *= 0.35
    return img if rng.random() < 0.5 else img.transpose(1, 0, 2)[:h, :w]


def crushed_ice(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Crushed ice: bright, slightly blue-grey blobs with darker gaps."""
    blobs = np.maximum(_noise(h, w, rng, 6), _noise(h, w, rng, 11))
    tint = np.array([0.85, 0.9, 0.95], np.float32) * rng.uniform(0.8, 1.05)
    return tint * (0.55 + 0.5 * blobs[..., None])


def deck(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A boat deck or a worktop: a dull colour, grit and a few scratches."""
    img = _colour(rng, 0.15, 0.6) * (0.8 + 0.3 * _noise(h, w, rng, 3)[..., None])
    for _ in range(int(rng.integers(0, 6))):
        y = int(rng.integers(0, h))
        img[y : y + 1] *= 1.4
    return img


def cloth(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A checked cloth or tiles: two colours in squares, with a little shading."""
    a, b = _colour(rng), _colour(rng)
    size = int(rng.integers(8, 40))
    yy, xx = np.mgrid[0:h, 0:w]
    checks = ((yy // size + xx // size) % 2).astype(bool)
    img = np.where(checks[..., None], a, b)
    return img * (0.85 + 0.2 * _noise(h, w, rng, 50)[..., None])


def gradient(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth gradient between two colours with fine grain (a counter, a sheet, a wall)."""
    a, b = _colour(rng), _colour(rng)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = a * (1 - t) + b * t
    img = np.broadcast_to(img, (h, w, 3)).copy()
    return img + rng.normal(0, 0.03, size=(h, w, 1)).astype(np.float32)


BACKGROUNDS: dict[str, Background] = {
    "measuring_board": measuring_board,
    "planks": planks,
    "crushed_ice": crushed_ice,
    "deck": deck,
    "cloth": cloth,
    "gradient": gradient,
}


def _cut_out(pixels: np.ndarray, mask: np.ndarray, rng: np.random.Generator, side: int):
    """The fish as an RGBA image, turned and scaled so its longest side is a share of `side`."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    rgba = np.dstack([pixels[y0:y1, x0:x1], mask[y0:y1, x0:x1].astype(np.float32)])
    fish = Image.fromarray((np.clip(rgba, 0, 1) * 255).astype(np.uint8), "RGBA")
    fish = fish.rotate(float(rng.uniform(0, 360)), resample=Image.BILINEAR, expand=True)
    longest = max(fish.size)
    target = max(8, round(side * rng.uniform(*SCALE)))
    size = (
        max(1, round(fish.width * target / longest)),
        max(1, round(fish.height * target / longest)),
    )
    fish = fish.resize(size, Image.BILINEAR)
    alpha = fish.getchannel("A").filter(ImageFilter.GaussianBlur(1.0))
    fish.putalpha(alpha)
    return fish


def _add_thumb(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A skin-coloured ellipse from one edge of the frame: a hand holding the fish."""
    h, w, _ = img.shape
    skin = np.array([0.86, 0.65, 0.52], np.float32) * rng.uniform(0.45, 1.1)
    cy, cx = rng.uniform(0.2, 0.8) * h, (0 if rng.random() < 0.5 else 1) * w
    ry, rx = rng.uniform(0.06, 0.14) * h, rng.uniform(0.15, 0.35) * w
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    out = img.copy()
    out[inside] = skin
    return out


def composite(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """An (H, W, 3) studio photo in [0, 1] with its fish on a drawn background; None if no mask."""
    mask = fish_mask(pixels)
    if mask is None:
        return None
    h, w, _ = pixels.shape
    names = list(BACKGROUNDS)
    background = BACKGROUNDS[names[int(rng.integers(len(names)))]](h, w, rng)
    fish = _cut_out(pixels, mask, rng, min(h, w))
    canvas = Image.fromarray((np.clip(background, 0, 1) * 255).astype(np.uint8), "RGB")
    x = int(rng.integers(-fish.width // 6, max(1, w - fish.width * 5 // 6)))
    y = int(rng.integers(-fish.height // 6, max(1, h - fish.height * 5 // 6)))
    shadow = Image.new("RGBA", fish.size, (0, 0, 0, 0))
    shadow.putalpha(fish.getchannel("A").point(lambda a: a // 3))
    canvas.paste(shadow, (x + 3, y + 4), shadow)
    canvas.paste(fish, (x, y), fish)
    img = np.asarray(canvas, np.float32) / 255.0
    # One light over the whole scene: a brightness ramp and a colour cast.
    ramp = np.linspace(rng.uniform(0.6, 1.1), rng.uniform(0.9, 1.3), w, dtype=np.float32)
    img = img * ramp[None, :, None] * rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    if rng.random() < THUMB_SHARE:
        img = _add_thumb(img, rng)
    return np.clip(img, 0.0, 1.0)


class RandomComposite:
    """Maps a preprocessed (N, 3, H, W) batch to composites, reproducibly from `seed`.

    Each photo's fish goes on a random background (`composite`); a photo whose fish cannot
    be cut out is kept as it is. A share of the composites is also corrupted
    (fisheye.data.corruptions) and half are mirrored. Batches must come in the same order
    to give the same views (they do in feature extraction, which is sequential).
    """

    def __init__(self, preprocessing: Preprocessing, seed: int = 0):
        self.mean = np.asarray(preprocessing.mean, np.float32)[:, None, None]
        self.std = np.asarray(preprocessing.std, np.float32)[:, None, None]
        self.rng = np.random.default_rng(10_000 + seed)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = np.empty_like(batch)
        for i, x in enumerate(batch):
            pixels = (x * self.std + self.mean).transpose(1, 2, 0)
            made = composite(pixels, self.rng)
            if made is not None:
                pixels = made
            pixels = pixels.transpose(2, 0, 1)
            if made is not None and self.rng.random() < CORRUPTED_SHARE:
                pixels = corruptions.corrupt(pixels, self.rng)
            if self.rng.random() < 0.5:
                pixels = pixels[..., ::-1]
            out[i] = (pixels - self.mean) / self.std
        return out
